"""Estimated cost and the spend cap (smscast/pricing.py): the price list and its errors, each row's price,
the estimate by country, the refusal to start over the cap (end to end, against the sandbox), the running
guard in the send engine (shared by concurrent shards), and a later attempt's budget."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from support import flow_sandbox, ledger_frame, write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.pricing import OVER_BUDGET, estimate, estimate_for, load_prices, units, with_costs
from smscast.providers.base import Idempotency, RowOutcome
from smscast.providers.sandbox import SandboxProvider
from smscast.results import AttemptPaths, CampaignPaths, conform
from smscast.runtime import Budget, Progress, Runtime
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.journal import Journal
from smscast.tasks.next_steps import next_steps
from smscast.tasks.outcomes import SentBatch
from smscast.tasks.plan import ShardRef, plan_campaign
from smscast.tasks.report import render, report, summarise, summary_markdown
from smscast.tasks.send import resume_budget, start_budget
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import batches_of, send_rows
from smscast.tasks.validate import validate_recipients

KEY = "pricing-test-key"
HEADER = "provider,country,calling_code,price_per_segment,currency\n"
PRICES = HEADER + "sandbox,GB,,0.04,EUR\nsandbox,,1,0.01,EUR\nsandbox,,1876,0.10,EUR\nsandbox,,353,0.05,EUR\n"


def price_list(tmp_path: Path, text: str = PRICES, name: str = "prices.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the price list -------------------------------------------------------------------------------------------


GB = "sandbox,GB,,0.04,EUR\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("provider,country,currency\nsandbox,GB,EUR\n", "missing column(s) price_per_segment"),
        ("provider,price_per_segment,currency\nsandbox,1,EUR\n", "missing column(s) country or calling_code"),
        (HEADER + GB + "sandbox,IE,,cheap,EUR\n", "line 3, column price_per_segment: 'cheap'"),
        (HEADER + "sandbox,GB,,-0.01,EUR\n", "line 2, column price_per_segment: '-0.01'"),
        (HEADER + GB + "sandbox,gb,,0.05,EUR\n", "line 3, column country: sandbox GB is priced twice"),
        (HEADER + "sandbox,,44,0.04,EUR\nsandbox,,+44,0.05,EUR\n", "line 3, column calling_code: sandbox 44"),
        (HEADER + "sandbox,UK,,0.04,EUR\n", "line 2, column country: 'UK' is not an ISO region"),
        (HEADER + "smsco,GB,,0.04,EUR\n", "line 2, column provider: 'smsco' is not a provider"),
        (HEADER + "sandbox,,,0.04,EUR\n", "line 2, column country: empty, and so is calling_code"),
        (HEADER + GB + "sandbox,IE,,0.05,GBP\n", "one currency per provider, but sandbox: EUR, GBP"),
    ],
)
def test_a_bad_price_list_is_refused_naming_file_row_and_column(
    tmp_path: Path, text: str, expected: str
) -> None:
    uri = price_list(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_prices(uri)
    assert expected in str(info.value) and uri in str(info.value)


def test_a_missing_or_other_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_prices(str(tmp_path / "none.csv"))
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        load_prices(price_list(tmp_path, PRICES, "prices.txt"))


def test_parquet_price_lists_read_like_csv(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"Provider": ["sandbox"], "Calling Code": [44], "price_per_segment": [0.04], "currency": ["eur"]}
    )
    frame.write_parquet(tmp_path / "p.parquet")
    table = load_prices(str(tmp_path / "p.parquet"))
    assert table.currencies == {"sandbox": "EUR"} and table.by_code.rows() == [("sandbox", "44", 0.04)]
    bad = frame.with_columns(price_per_segment=pl.lit(-1.0))
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match="row 1, column price_per_segment"):
        load_prices(str(tmp_path / "bad.parquet"))


# -- each row's price, and the estimate -----------------------------------------------------------------------

ROWS = pl.DataFrame(
    [
        (0, "+447400900001", "GB", 1, None, None),
        (1, "+18765550001", "JM", 2, None, None),
        (2, "+12025550001", "US", 1, None, None),
        (3, "+353851234567", None, 1, None, None),
        (4, "+33612345678", "FR", 1, None, None),
        (5, "x", None, None, "invalid", "phone_invalid"),
        (6, "+447400900002", "GB", 3, "held", "quiet_hours"),
    ],
    schema=["row_index", "phone", "country", "segments", "status", "error_code"],
    orient="row",
)


def test_price_by_country_then_longest_calling_code_else_none(tmp_path: Path) -> None:
    table = load_prices(price_list(tmp_path))
    costs = with_costs(ROWS, table, "sandbox").get_column("cost").to_list()
    # GB by country; Jamaica by +1876 rather than +1; the US by +1; a number with no country by +353; France
    # has no price; the invalid row has none either.
    assert costs == [0.04, 0.2, 0.01, 0.05, None, None, 0.12]
    assert with_costs(ROWS, table, "robase").get_column("cost").null_count() == 7  # another provider's prices


def test_the_estimate_by_country_counts_rows_to_send_and_names_those_without_a_price(tmp_path: Path) -> None:
    table = load_prices(price_list(tmp_path))
    est = estimate(ROWS, table, "sandbox", max_cost=1.0)
    assert (est.estimate, est.held, est.currency) == (units(0.30), units(0.12), "EUR")
    assert [(c["country"], c["rows"], c["segments"], c["estimate"]) for c in est.by_country] == [
        ("JM", 1, 2, units(0.2)),
        ("+353", 1, 1, units(0.05)),
        ("GB", 1, 1, units(0.04)),
        ("US", 1, 1, units(0.01)),
    ]
    assert est.unpriced == [{"country": "FR", "rows": 1}]
    assert units(0.1) + units(0.2) == units(0.3)  # amounts add up exactly, as floats do not


def summary_spec(tmp_path: Path, **kw: object) -> CampaignSpec:
    base = {
        "campaign_id": "c",
        "source": "s.csv",
        "results": str(tmp_path / "res"),
        "prices": price_list(tmp_path),
    }
    return CampaignSpec.model_validate(base | kw)


def test_the_dry_run_summary_shows_the_estimate_and_whether_the_run_would_start(tmp_path: Path) -> None:
    spec = summary_spec(tmp_path, max_cost=0.35, dry_run=True)
    summary = report(ROWS, spec, logging.getLogger("t"), results_uri=None)
    assert summary.cost is not None and summary.cost["estimate"] == pytest.approx(0.30)
    text = render(summary)
    assert "cost: EUR 0.30 estimated · cap EUR 0.35" in text
    assert "JM" in text and "EUR 0.20" in text
    assert "1 row with no price in the price list (FR 1)" in text
    assert "the real run would not start: rows without a price" in text
    assert "**Cost**: EUR 0.30 estimated" in summary_markdown(summary, spec.results)
    plain = summarise(ROWS, campaign_id="c", attempt=1, provider="sandbox", results_uri=None)
    assert "cost" not in plain.to_dict() and "cost:" not in render(plain)  # no price list: today's shape


def test_a_summary_of_rows_the_cap_stopped_says_so_and_suggests_a_higher_cap(tmp_path: Path) -> None:
    spec = summary_spec(tmp_path, max_cost=0.1)
    results = ROWS.filter(pl.col("row_index") < 4).with_columns(
        status=pl.Series(["accepted", "accepted", "failed", "failed"]),
        error_code=pl.Series([None, None, OVER_BUDGET, OVER_BUDGET]),
    )
    summary = summarise(
        results,
        campaign_id="c",
        attempt=1,
        provider="sandbox",
        results_uri=None,
        estimate=estimate_for(results, spec),
    )
    assert summary.over_budget_rows == 2 and not summary.needs_retry  # a retry at this cap would be refused
    assert summary.cost is not None and summary.cost["accepted"] == pytest.approx(0.24)
    assert "2 rows not sent: the spend cap (EUR 0.10) was reached" in render(summary)
    steps = next_steps(summary, spec, completed=False)
    assert any("--max-cost" in line and "2 rows not sent" in line for line in steps)
    assert not any("failed transiently" in line for line in steps)


# -- the running guard: concurrent shards share one budget -----------------------------------------------------

SETTINGS = ProviderSettings(base_url="http://sandbox.test", api_key=Secret("k"))
FAST = RetryPolicy(max_attempts=4, max_throttled=10, backoff_base=0.001, backoff_cap=0.01)


def planned(tmp_path: Path, n: int, batch_size: int, shard_batches: int) -> tuple[pl.DataFrame, CampaignSpec]:
    provider = SandboxProvider(SETTINGS)
    spec = summary_spec(tmp_path, body="hello {{name}}", batch_size=batch_size, shard_batches=shard_batches)
    df = pl.DataFrame({"row_index": list(range(n))}).with_columns(
        phone_raw=pl.format("+4474009{}", pl.col("row_index").cast(pl.String).str.zfill(5)),
        name=pl.format("n{}", "row_index"),
    )
    checked = validate_recipients(df, spec, provider.caps, provider).with_columns(country=pl.lit("GB"))
    rows = plan_campaign(checked, spec, provider.caps, provider).rows.filter(pl.col("shard").is_not_null())
    return with_costs(rows, load_prices(spec.prices or ""), "sandbox"), spec


def send_together(
    shards: list[pl.DataFrame], spec: CampaignSpec, runtime: Runtime, provider: SandboxProvider, handler: Any
) -> pl.DataFrame:
    """Each shard in its own thread and event loop, as the flows' thread pool runs them."""
    from smscast import ratelimit

    ratelimit._BUCKETS.clear()
    out: list[pl.DataFrame] = []
    errors: list[BaseException] = []

    def one(rows: pl.DataFrame) -> None:
        try:
            client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            out.append(
                asyncio.run(send_rows(provider, rows, spec, runtime=runtime, policy=FAST, client=client))[0]
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in shards]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    return pl.concat(out).sort("row_index")


def test_concurrent_shards_never_spend_past_the_cap(tmp_path: Path) -> None:
    rows, spec = planned(tmp_path, 120, batch_size=5, shard_batches=6)  # 24 batches of EUR 0.20, 4 shards
    provider = SandboxProvider(SETTINGS)
    ledger: set[str] = set()  # the keys of what the "provider" took
    lock = threading.Lock()
    first_try: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        with lock:
            if request.headers["idempotency-key"] not in first_try:  # every request fails once: kept reserved
                first_try.add(request.headers["idempotency-key"])
                return httpx.Response(503)
            ledger.update(m["ref"] for m in msgs)
        results = [
            {"index": i, "status": "accepted", "message_id": f"m-{m['ref']}"} for i, m in enumerate(msgs)
        ]
        return httpx.Response(200, json={"batch": "B", "results": results})

    budget = Budget(units(2.10), spent=units(0.30))  # EUR 1.80 left: 9 batches of 0.20 fit, not 10
    runtime = Runtime(Progress(rows.height, logging.getLogger("t"), every=3600), budget=budget)
    shards = [part for _, part in sorted(rows.partition_by("shard", as_dict=True).items())]
    out = send_together(shards, spec, runtime, provider, handler)
    accepted = out.filter(pl.col("status") == "accepted")
    assert accepted.height == 45  # exactly 9 batches: each reserved once, through its retry
    refused = out.filter(pl.col("status") != "accepted")
    assert set(refused["status"]) == {"failed"} and set(refused["error_code"]) == {OVER_BUDGET}
    assert refused.height == 75 and out.height == 120
    keys = rows.join(accepted.select("row_index"), on="row_index")["idempotency_key"]
    assert ledger == set(keys.to_list())  # the provider has exactly the accepted rows
    assert budget.spent == units(0.30) + units(1.80) and budget.exhausted


class NoIdempotency(SandboxProvider):
    caps = dataclasses.replace(SandboxProvider.caps, idempotency=Idempotency.NONE)


def test_rows_that_may_have_been_accepted_keep_their_reservation_and_refusals_give_it_back(
    tmp_path: Path,
) -> None:
    rows, spec = planned(tmp_path, 20, batch_size=5, shard_batches=10)  # 4 batches of EUR 0.20
    first, second = (rows.filter(pl.col("batch_seq") == i)["idempotency_key"].to_list() for i in (0, 1))

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        if msgs[0]["ref"] in first:
            raise httpx.ReadTimeout("slow", request=request)  # then accepted, as far as anyone knows
        results = [
            {"index": i, "status": "rejected", "code": "invalid_number"}
            if m["ref"] in second
            else {"index": i, "status": "accepted", "message_id": f"m{i}"}
            for i, m in enumerate(msgs)
        ]
        return httpx.Response(200, json={"batch": "B", "results": results})

    budget = Budget(units(10.0))
    runtime = Runtime(Progress(rows.height, logging.getLogger("t"), every=3600), budget=budget)
    provider = NoIdempotency(SETTINGS)
    out = send_together([rows], spec, runtime, provider, handler)
    counts = dict(out.group_by("status").len().iter_rows())
    assert counts == {"unknown": 5, "rejected": 5, "accepted": 10}
    assert budget.spent == units(0.60)  # unknown and accepted rows stay spent; rejected ones are refunded


# -- a later attempt's budget ---------------------------------------------------------------------------------


def test_a_retry_attempt_counts_what_earlier_attempts_left_accepted_or_unknown(tmp_path: Path) -> None:
    spec = summary_spec(tmp_path, max_cost=0.30, attempt=2)
    earlier = ROWS.filter(pl.col("row_index") < 5).with_columns(
        campaign_id=pl.lit("c"),
        attempt=pl.lit(1),
        provider=pl.lit("sandbox"),
        status=pl.Series(["accepted", "unknown", "failed", "failed", "rejected"]),
    )
    storage.write_parquet(conform(earlier), CampaignPaths(spec.results, "c").attempt(1).part(0))
    retry = ROWS.filter(pl.col("row_index").is_in([2, 3]))  # the failed rows: 0.01 + 0.05
    table = load_prices(spec.prices or "")
    got = start_budget(retry, spec, table)
    assert (got.earlier, got.this_attempt, got.cap) == (units(0.24), 0, units(0.30))  # 0.04 + 0.20
    with pytest.raises(ConfigError) as info:
        start_budget(retry, spec.model_copy(update={"max_cost": 0.29}), table)
    assert "estimated cost EUR 0.30" in str(info.value) and "--max-cost EUR 0.29" in str(info.value)
    assert "committed by earlier attempts EUR 0.24" in str(info.value)
    # The unknown row re-sent now is counted once, as this attempt's, and stays spent whatever comes of it.
    again = ROWS.filter(pl.col("row_index").is_in([1, 2]))
    got = start_budget(again, spec, table)
    assert got.earlier == units(0.04) and got.unknown_before.to_list() == [1]


def test_a_resumed_attempt_counts_what_its_interrupted_run_recorded(tmp_path: Path) -> None:
    """Shard 0 finished (its results part), shard 1 recorded one batch in its journal, shard 2 nothing: the
    resumed run's budget starts with the first two's accepted or unknown rows, and the held ones."""
    rows, spec = planned(tmp_path, 30, batch_size=5, shard_batches=2)  # 6 batches of EUR 0.20, 3 shards
    spec = spec.model_copy(update={"results": str(tmp_path / "res"), "max_cost": 5.0})
    paths = AttemptPaths.of(spec)
    for (shard,), part in rows.partition_by("shard", as_dict=True).items():
        storage.write_parquet(part, paths.plan_shard(int(shard)))
    held = rows.head(2).with_columns(status=pl.lit("held"), row_index=pl.Series([100, 101]), shard=None)
    storage.write_parquet(held, paths.plan_unsent)  # two held rows: EUR 0.08
    done = rows.filter(pl.col("shard") == 0).with_columns(
        status=pl.Series(["accepted"] * 5 + ["unknown"] * 3 + ["rejected"] * 2)
    )
    storage.write_parquet(conform(done), paths.part(0))  # 8 rows spent: EUR 0.32
    batch = batches_of(rows.filter(pl.col("shard") == 1), spec)[0]
    journal = Journal(paths.journal(1), write_ahead=False)
    outcome = [RowOutcome(Status.ACCEPTED)] * len(batch)
    sent = SentBatch(batch.batch_id, batch.rows["row_index"].to_list(), outcome, datetime.now(UTC))
    journal.record(batch, [sent])
    journal.close()  # 5 rows spent: EUR 0.20
    shards = [ShardRef(s, 2, 10) for s in range(3)]
    got = resume_budget(spec, shards, load_prices(spec.prices or ""))
    assert (got.cap, got.earlier, got.this_attempt) == (units(5.0), 0, units(0.08 + 0.32 + 0.20))


# -- end to end: a campaign over its cap never starts ---------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with flow_sandbox(KEY) as server:
        yield server


@pytest.mark.integration
def test_a_campaign_over_its_cap_sends_and_writes_nothing_and_one_within_it_shows_its_cost(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    src = write_recipients(tmp_path / "r.csv", 30)  # +44… numbers, one segment each
    res = tmp_path / "res"
    spec = CampaignSpec(
        campaign_id="capped",
        source=str(src),
        results=str(res),
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        sender="ACME",
        default_country="GB",
        prices=price_list(tmp_path, HEADER + "sandbox,,44,0.05,EUR\n"),
        max_cost=1.45,
    )
    with pytest.raises(ConfigError) as info:
        send_campaign(spec)
    assert "estimated cost EUR 1.50" in str(info.value) and "--max-cost EUR 1.45" in str(info.value)
    assert ledger_frame(sandbox.client, "generic").height == 0
    assert not (res / "campaign=capped").exists()
    assert not CampaignPaths(str(res), "capped").attempt(1).plan_shards()
    assert not Path(CampaignPaths(str(res), "capped").spec).exists()  # a higher cap may start it afresh

    done = send_campaign(spec.model_copy(update={"max_cost": 1.50}))
    assert done["by_status"]["accepted"] == 30 and ledger_frame(sandbox.client, "generic").height == 30
    assert done["cost"]["estimate"] == pytest.approx(1.5) and done["cost"]["accepted"] == pytest.approx(1.5)
    assert done["cost"]["currency"] == "EUR" and done["cost"]["max_cost"] == 1.5
    assert sum(c["rows"] for c in done["cost"]["by_country"]) == 30
