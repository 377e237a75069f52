"""A campaign flow's final state proposed twice (flows/campaign.py `finish`, FINAL_STATE_RESULT).

On a loaded machine, Prefect's engine can propose a flow's final state again after the API already took it
(its first answer lost). The API then refuses the repeat and answers with its own copy of the state, from
which the engine reads the flow's result. The copy holds only a stored result: without one, a campaign
that completed raised MissingResult to whoever ran it. Here the repeat is made on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration.base import BaseClient
from support import prefect_harness, write_recipients

from smscast.campaign import CampaignSpec


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


def test_a_final_state_the_api_already_holds_still_hands_back_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smscast.flows.campaign import send_campaign

    request = BaseClient.request
    repeated: list[str] = []

    def lose_the_first_answer(self: BaseClient, method: str, path: str, **kw: Any) -> httpx.Response:
        response = request(self, method, path, **kw)  # type: ignore[arg-type]
        state = (kw.get("json") or {}).get("state") or {}
        if path == "/flow_runs/{id}/set_state" and state.get("type") == "COMPLETED":
            # Sent again as it was (same transition id), as a retry after a lost answer is: refused.
            response = request(self, method, path, **kw)  # type: ignore[arg-type]
            repeated.append(response.json()["status"])
        return response

    monkeypatch.setattr(BaseClient, "request", lose_the_first_answer)
    spec = CampaignSpec(
        campaign_id="twice",
        source=str(write_recipients(tmp_path / "r.csv", 5)),
        results=str(tmp_path / "res"),
        base_url="http://127.0.0.1:9",  # a dry run sends nothing
        body="Hi {{name}}",
        dry_run=True,
    )
    summary = send_campaign(spec)
    assert repeated == ["REJECT"]
    assert summary["campaign_id"] == "twice" and summary["rows"] == 5 and summary["dry_run"] is True
