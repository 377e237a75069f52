"""The contract suite's harness: recipient rows for a provider, the engine without Prefect (validate -> plan ->
`send_rows`), and the checks against the sandbox's ledger. Each provider's facts (its contract profile among
them) are in tests/provider_facts.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from unittest import mock

import httpx
import polars as pl
from provider_facts import Edit, ProviderFacts

from smscast.campaign import CampaignSpec
from smscast.providers.base import Batch, Provider, Rejection
from smscast.sandbox.framework import DEFAULT_API_KEY
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

FAST = RetryPolicy(backoff_base=0.01, backoff_cap=0.05)
RATE = 1000.0  # requests per second in every spec: the emulators' documented limits are lifted too
N = 12  # rows of the small scenarios: at least textingline's 10 per request, within Postman's test 20
N_PARTIAL = 40  # enough for textingline's bisection to leave sub-batches of 10 on either side
BAD = [3, 37]  # rows refused in the partial-failure scenario
BAD_WHOLE = [5]  # the row that refuses its whole request in the whole-batch scenario
UCS2_CHAR = "中"  # outside GSM 03.38 (basic and extension tables): forces UCS-2, one UTF-16 unit
EMOJI = "\U0001f600"  # outside the BMP: one code point, two UTF-16 units


def phone(i: int) -> str:
    return f"+4474009{i:05d}"


def suffix(i: int) -> str:
    """The digits that single out phone(i) for the emulators' `reject_suffixes` knob."""
    return f"{i:05d}"


def recipients(
    facts: ProviderFacts, n: int, bodies: dict[int, str] | None = None, start: int = 0
) -> pl.DataFrame:
    """Input rows of recipients start .. start+n-1 (row_index from 0), with `bodies` replacing some bodies."""
    records = []
    for i in range(start, start + n):
        rec = {"row_index": i - start, "phone_raw": phone(i), **facts.contract.row(i)}
        if bodies and i in bodies:
            rec["body"] = bodies[i]
        records.append(rec)
    return pl.DataFrame(records)


def edit(df: pl.DataFrame, row_indexes: list[int], change: Edit) -> pl.DataFrame:
    """`change` applied to the rows whose row_index is in `row_indexes`."""
    return df.with_columns(
        pl.when(pl.col("row_index").is_in(row_indexes))
        .then(pl.col(change.column).map_elements(change.value, return_dtype=pl.String))
        .otherwise(pl.col(change.column))
        .alias(change.column)
    )


def make_adapter(facts: ProviderFacts, base_url: str) -> Provider:
    """The adapter against the sandbox, in the vendor's test environment where it has one."""
    with mock.patch.dict(os.environ, facts.test_env_vars):
        settings = ProviderSettings(base_url + facts.test_env_path, Secret(facts.api_key(DEFAULT_API_KEY)))
        return facts.adapter(settings)


@dataclass
class Run:
    facts: ProviderFacts
    provider: Provider
    spec: CampaignSpec
    planned: pl.DataFrame  # every input row, quarantined ones with status and error_code

    @property
    def sendable(self) -> pl.DataFrame:
        return self.planned.filter(pl.col("batch_seq").is_not_null())

    def send(
        self, rows: pl.DataFrame | None = None, read_timeout: float | None = None
    ) -> tuple[pl.DataFrame, dict[str, int]]:
        """Send the planned rows through the engine; outcomes by row_index, with each row's phone."""
        rows = self.sendable if rows is None else rows

        async def go() -> tuple[pl.DataFrame, dict[str, int]]:
            if read_timeout is None:
                return await send_rows(self.provider, rows, self.spec, policy=FAST)
            timeout = httpx.Timeout(read_timeout, connect=5.0)
            async with httpx.AsyncClient(timeout=timeout) as client:
                return await send_rows(self.provider, rows, self.spec, policy=FAST, client=client)

        outcomes, requests = asyncio.run(go())
        out = outcomes.join(rows.select("row_index", "phone"), on="row_index", how="left")
        assert out.height == rows.height and out["row_index"].n_unique() == rows.height
        return out.sort("row_index"), requests

    def by_hand(self, rows: pl.DataFrame, name: str) -> tuple[Batch, httpx.Response]:
        """One request built by the adapter from a hand-made Batch (bypassing the plan), posted as is."""
        batch = Batch(
            self.spec.campaign_id, f"{self.spec.campaign_id}-{name}", f"scb-{name}", rows, self.spec
        )
        with httpx.Client(timeout=60.0) as http:
            return batch, http.send(self.provider.build_request(batch))


def prepare(
    facts: ProviderFacts, sandbox: SandboxServer, df: pl.DataFrame, campaign: str, **overrides: Any
) -> Run:
    """Validate and plan `df` for a fresh campaign of this provider (spec fields may be overridden)."""
    provider = make_adapter(facts, sandbox.base_url)
    # The row's columns other than the body are the template's parameters.
    variables = tuple(c for c in facts.contract.row(0) if c != "body")
    content = {"template_vars": variables} if variables else {}
    spec = CampaignSpec(
        campaign_id=f"ct-{campaign}-{facts.name}",
        provider=facts.name,
        source="contract",
        results="contract",
        base_url=provider.settings.base_url,
        rate=RATE,
        **(facts.spec_fields(**content) | overrides),
    )
    provider.validate_spec(spec)
    checked = validate_recipients(df, spec, provider.caps, provider)
    planned = plan_campaign(checked, spec, provider.caps, provider)
    return Run(facts, provider, spec, planned.rows.sort("row_index"))


def send_mocked(
    run: Run, handler: Callable[[httpx.Request], httpx.Response]
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The planned rows through the real engine, against `handler` instead of a server."""

    async def go() -> tuple[pl.DataFrame, dict[str, int]]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send_rows(run.provider, run.sendable, run.spec, policy=FAST, client=client)

    outcomes, requests = asyncio.run(go())
    out = outcomes.join(run.sendable.select("row_index", "phone"), on="row_index", how="left")
    assert out.height == run.sendable.height
    return out.sort("row_index"), requests


# ---- reading the outcome and the ledger ---------------------------------------------------------------------


def ledger(sandbox: SandboxServer, facts: ProviderFacts) -> list[dict[str, Any]]:
    return [dict(e) for e in sandbox.client.ledger(provider=facts.emulator)]


def requests_seen(sandbox: SandboxServer, facts: ProviderFacts) -> dict[str, int]:
    stats = sandbox.client.stats()["providers"].get(facts.emulator, {})
    return dict(stats.get("requests", {}))


def statuses(out: pl.DataFrame) -> list[str]:
    return out["status"].to_list()


def accepted_phones(out: pl.DataFrame) -> list[str]:
    return sorted(out.filter(pl.col("status") == Status.ACCEPTED.value)["phone"].to_list())


def assert_ledger_is(entries: list[dict[str, Any]], phones: list[str]) -> None:
    """The ledger holds exactly these phones, each once."""
    seen = sorted(e["to"] for e in entries)
    assert seen == sorted(phones), f"ledger {len(seen)} entries vs {len(phones)} phones"
    assert len(set(seen)) == len(seen), "a phone was texted twice"


def codes(run: Run) -> dict[int, str | None]:
    return dict(zip(run.planned["row_index"].to_list(), run.planned["error_code"].to_list(), strict=True))


def assert_isolated(run: Run, out: pl.DataFrame, bad: list[int], code: str) -> None:
    """The bad rows are rejected with the provider's code, the rest accepted; for a whole-batch provider with
    a minimum batch size the refused sub-batch may take its neighbours down, and says so."""
    rejected = out.filter(pl.col("status") == Status.REJECTED.value)
    assert set(rejected["error_code"].to_list()) == {code}, rejected.select("row_index", "error_code")
    assert set(statuses(out)) <= {Status.ACCEPTED.value, Status.REJECTED.value}
    refused = rejected["row_index"].to_list()
    caps = run.provider.caps
    if caps.rejection is Rejection.PER_ROW or caps.min_rows == 1:
        assert refused == bad
    else:
        assert set(bad) <= set(refused)
        assert len(refused) <= len(bad) * (2 * caps.min_rows - 1)
        assert rejected["error_message"].str.contains("could not be isolated").all()
