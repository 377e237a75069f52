"""Contract tests: one set of scenarios, parametrised over the six providers, each driven through the real
engine (validate -> plan -> `send_rows`, without Prefect) against ONE sandbox over loopback and checked
against the sandbox's ledger.

Scenarios: the happy path, a partial failure, a whole-batch rejection, a 429 storm, an idempotent re-send
(the same planned rows sent again, and the engine's own re-send after an answer lost to a read timeout), and
the limits at the boundary (rows per request, body characters, GSM-7 against UCS-2).

Each provider is described by a `Profile` (below): how to build a valid campaign and its recipient rows, the
emulator knobs that lift its documented rate limit (for speed), how to make a row refused one by one and how
to make a whole request refused (or why it cannot be), its documented limits and the codes that come back
when they are exceeded. A scenario that does not apply to a provider is skipped with the document's reason.

Postman runs in its TEST environment (`/test`, SMSCAST_POSTMAN_TEST_ENV=1): 20 rows per file. Production
allows 1,000 rows per file only as the adapter's own budget under the 40 MB file limit; the emulator has no
row limit there to refuse the 1,001st row, so only the test environment has a row maximum to test at its
boundary.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import httpx
import orjson
import polars as pl
import pytest

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.encoding import GSM7_MULTI_PART, GSM7_SINGLE, UCS2_ENCODING, UCS2_MULTI_PART, UCS2_SINGLE
from smscast.errors import BatchRejectedError
from smscast.providers.base import Batch, OutcomeTiming, Provider, Rejection
from smscast.providers.instasent import InstasentProvider
from smscast.providers.postman import PostmanProvider
from smscast.providers.robase import RobaseProvider
from smscast.providers.sandbox import SandboxProvider
from smscast.providers.sent_dm import SentDmProvider
from smscast.providers.textingline import TextinglineProvider
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_engine import RetryPolicy, send_rows
from smscast.tasks.validate import validate_recipients

pytestmark = pytest.mark.integration

FAST = RetryPolicy(backoff_base=0.01, backoff_cap=0.05)
DEFAULT_KEY = "sandbox-key"
TEXTINGLINE_KEY = "contract-kid:contract-secret"  # textingline authenticates with key_id:secret
RATE = 1000.0  # requests per second in every spec: the emulators' documented limits are lifted too
N = 12  # rows of the small scenarios: at least textingline's 10 per request, within Postman's test 20
N_PARTIAL = 40  # enough for textingline's bisection to leave sub-batches of 10 on either side
BAD = [3, 37]  # rows refused in the partial-failure scenario
BAD_WHOLE = [5]  # the row that refuses its whole request in the whole-batch scenario
UCS2_CHAR = "中"  # outside GSM 03.38 (basic and extension tables): forces UCS-2, one UTF-16 unit
EMOJI = "\U0001f600"  # outside the BMP: one code point, two UTF-16 units


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


def suffix(i: int) -> str:
    """The digits that single out phone(i) for the emulators' `reject_suffixes` knob."""
    return f"{i:05d}"


# ---- the profiles --------------------------------------------------------------------------------------

Edit = Callable[[pl.DataFrame, list[int]], pl.DataFrame]


def _set(df: pl.DataFrame, rows: list[int], column: str, value: Callable[[Any], Any]) -> pl.DataFrame:
    """`column` of the rows whose row_index is in `rows` replaced by value(old)."""
    return df.with_columns(
        pl.when(pl.col("row_index").is_in(rows))
        .then(pl.col(column).map_elements(value, return_dtype=pl.String))
        .otherwise(pl.col(column))
        .alias(column)
    )


def compliance_marker(df: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    # textingline refuses the WHOLE batch (33019) for any body with the emulator's compliance marker; the
    # body passes our validation (the marker is content, not a rule we can check).
    return _set(df, rows, "body", lambda b: f"{b} SHAFT-TEST")


def control_character(df: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    # 33016 "invalid characters": validation quarantines it (invalid_characters), so it is put into the
    # planned rows, as if validation had missed it.
    return _set(df, rows, "body", lambda b: f"{b} \x07")


def malformed_to(df: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    # sent.dm refuses the whole request (400 VALIDATION_001, details["to[i]"]) for one malformed `to`; our
    # validation would have quarantined it, so it is put into the planned rows.
    return _set(df, rows, "phone", lambda p: "+0" + p[1:])


def blank_parameter(df: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    # "All template parameters must be filled for every row"; validation quarantines an empty variable
    # (template_var_missing), so it is put into the planned rows.
    return _set(df, rows, "name", lambda _: " ")


@dataclass(frozen=True)
class Refusal:
    """How to make given rows refused, and the code the refused rows then carry."""

    code: str
    by_suffix: bool = False  # the emulator's `reject_suffixes` knob names the rows' phones
    edit_input: Edit | None = None  # applied to the input rows: they still pass our validation
    edit_planned: Edit | None = None  # applied to the planned rows: validation would have stopped them


@dataclass(frozen=True)
class Profile:
    name: str  # smscast's provider name
    emulator: str  # the sandbox's name for it (ledger, stats, knobs): `generic` for smscast's own sandbox
    provider_cls: type[Provider]
    spec: dict[str, Any]  # CampaignSpec fields that make a valid campaign for this provider
    row: Callable[[int], dict[str, Any]]  # the input columns of recipient i, phone aside
    per_row: Refusal  # one or two rows refused (per row, or isolated by bisection)
    whole_batch: Refusal | None  # a row that refuses its whole request, or None ...
    whole_batch_skip: str  # ... and the document's reason
    max_rows: int  # documented rows per request
    over_max: tuple[int, str]  # HTTP status and our error code for one row more than that
    body_chars: int | None = None  # documented body limit in characters
    body_over_code: str | None = None  # the emulator's code for a body one character over
    body_skip: str = ""
    encoding: str | None = None  # "segments", "chars" or "allow_unicode": what GSM-7 vs UCS-2 means here
    encoding_skip: str = ""
    waits_on_429: bool = True  # the vendor's 429 says how long to wait (Retry-After, X-RateLimit-Reset)
    row_keys_in_ledger: bool = True  # the wire carries our per-row key, and the ledger records it
    lift: dict[str, Any] = field(default_factory=dict)  # emulator knobs lifting the documented rate limit
    api_key: str = DEFAULT_KEY
    path: str = ""  # appended to the sandbox's base URL
    env: dict[str, str] = field(default_factory=dict)  # environment while the adapter is constructed

    def rows(self, n: int, bodies: dict[int, str] | None = None, start: int = 0) -> pl.DataFrame:
        records = []
        for i in range(start, start + n):
            rec = {"row_index": i - start, "phone_raw": phone(i), **self.row(i)}
            if bodies and i in bodies:
                rec["body"] = bodies[i]
            records.append(rec)
        return pl.DataFrame(records)

    def provider(self, base_url: str) -> Provider:
        with mock.patch.dict(os.environ, self.env):
            return self.provider_cls(ProviderSettings(base_url + self.path, Secret(self.api_key)))


def body_row(i: int) -> dict[str, Any]:
    return {"body": f"Hi N{i}, your order #{1000 + i} has shipped"}


NO_TEXT = "the provider renders its own template: smscast sends no body, so there is no body limit to reach"

PROFILES = [
    Profile(
        name="sandbox",
        emulator="generic",
        provider_cls=SandboxProvider,
        spec={"sender": "ACME"},
        row=body_row,
        per_row=Refusal("invalid_number", by_suffix=True),
        whole_batch=None,
        whole_batch_skip="smscast's sandbox API refuses rows one by one (`results[]` by index); its 400s "
        "(batch_too_large, invalid_sender, bad JSON) are about the request, never caused by a row",
        max_rows=1000,
        over_max=(400, "batch_too_large"),
        body_chars=1600,
        body_over_code="body_too_long",
        encoding="segments",
    ),
    Profile(
        name="sent-dm",
        emulator="sent-dm",
        provider_cls=SentDmProvider,
        spec={"template": "tmpl_announcement", "template_vars": ("announcement",)},
        row=lambda i: {"announcement": "New feature launched!"},
        per_row=Refusal("recipient_rejected", by_suffix=True),
        whole_batch=Refusal("VALIDATION_001", edit_planned=malformed_to),
        whole_batch_skip="",
        max_rows=1000,
        over_max=(400, "VALIDATION_001"),
        body_skip=f"sent.dm sends templates only: {NO_TEXT}",
        encoding_skip=f"sent.dm sends templates only: {NO_TEXT}",
        row_keys_in_ledger=False,  # one Idempotency-Key header per request, no per-message key
        lift={"rate_limit_rps": 0},  # 200 requests/minute
    ),
    Profile(
        name="robase",
        emulator="robase",
        provider_cls=RobaseProvider,
        spec={"sender": "SHUTTLERS"},
        row=body_row,
        per_row=Refusal("phone_invalid", by_suffix=True),
        whole_batch=None,
        whole_batch_skip="robase's document: 'Batch always returns HTTP 200 - even when some rows fail'; its only "
        "whole-request refusals (over 1000 rows, a bad send_at) are not caused by one row",
        max_rows=1000,
        over_max=(422, "batch_too_large"),
        body_chars=1600,
        body_over_code="body_too_long",
        encoding="chars",
        lift={"rate_limit_rps": 0},  # 4 batches/s
    ),
    Profile(
        name="textingline",
        emulator="textingline",
        provider_cls=TextinglineProvider,
        spec={"sender": "+18005559876"},
        row=body_row,
        # Refused as a whole; bisection stops below 2 x 10 rows, so a sub-batch of 10-19 goes down with it.
        per_row=Refusal("33019", edit_input=compliance_marker),
        whole_batch=Refusal("33016", edit_planned=control_character),
        whole_batch_skip="",
        max_rows=5000,
        over_max=(400, "33005"),
        body_chars=640,
        body_over_code="33005",  # whole batch
        encoding="chars",
        lift={"rate_limit_rps": 0},  # 5 requests/minute
        api_key=TEXTINGLINE_KEY,
    ),
    Profile(
        name="postman",
        emulator="postman",
        provider_cls=PostmanProvider,
        spec={"template": "campaign_contract", "template_vars": ("name",), "language": "english"},
        row=lambda i: {"name": f"Person {i}"},
        # Any row error fails the whole file; the engine bisects down to the single row (no minimum).
        per_row=Refusal("parameter_invalid", by_suffix=True),
        whole_batch=Refusal("parameter_invalid", edit_planned=blank_parameter),
        whole_batch_skip="",
        max_rows=20,  # the test environment's "20 rows maximum"
        over_max=(400, "parameter_invalid"),
        body_skip="Postman fills the campaign's template from CSV parameters; the document gives no body or "
        "segment limit, only the 40 MB file (the adapter's row_too_large budget, tested in test_postman.py)",
        encoding_skip="Postman renders the campaign's template; the document gives no segment or encoding "
        "limit for the CSV parameters",
        waits_on_429=False,  # "Implement exponential backoff": no Retry-After
        row_keys_in_ledger=False,  # no idempotency of any kind
        lift={"rate_limit_rps": 0},  # 10 TPS per campaign
        path="/test",
        env={"SMSCAST_POSTMAN_TEST_ENV": "1"},
    ),
    Profile(
        name="instasent",
        emulator="instasent",
        provider_cls=InstasentProvider,
        spec={"sender": "Instasent"},
        row=body_row,
        per_row=Refusal("to:invalid", by_suffix=True),
        whole_batch=None,
        whole_batch_skip="Instasent's document: 'The invalid item lands in errors; the rest of the batch still goes "
        "through'; 413/422 answer only a request of more than 100 items",
        max_rows=100,
        over_max=(413, "http_413"),
        body_skip="Instasent documents no length limit for `text`",
        encoding="allow_unicode",
        lift={"rate_limit_rps": 0},  # the adapter's ASSUMED 5 requests/s
    ),
]


@pytest.fixture(params=PROFILES, ids=[p.name for p in PROFILES])
def profile(request: pytest.FixtureRequest) -> Profile:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    knobs = {p.emulator: p.lift for p in PROFILES if p.lift}
    with SandboxServer(provider_knobs=knobs, api_keys={"textingline": TEXTINGLINE_KEY}) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> Iterator[None]:
    sandbox.client.reset()  # ledger, idempotency stores, knobs back to the start values (rates lifted)
    ratelimit._BUCKETS.clear()  # the engine's process-wide buckets keep a 429's penalty otherwise
    yield
    ratelimit._BUCKETS.clear()


# ---- the engine, without Prefect -------------------------------------------------------------------------


@dataclass
class Run:
    profile: Profile
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
    profile: Profile, sandbox: SandboxServer, df: pl.DataFrame, campaign: str, **overrides: Any
) -> Run:
    """Validate and plan `df` for a fresh campaign of this provider (spec fields may be overridden)."""
    provider = profile.provider(sandbox.base_url)
    spec = CampaignSpec(
        campaign_id=f"ct-{campaign}-{profile.name}",
        provider=profile.name,  # type: ignore[arg-type]
        source="contract",
        results="contract",
        base_url=provider.settings.base_url,
        rate=RATE,
        **(profile.spec | overrides),
    )
    provider.validate_spec(spec)
    checked = validate_recipients(df, spec, provider.caps, provider)
    planned = plan_campaign(checked, spec, provider.caps, provider)
    return Run(profile, provider, spec, planned.rows.sort("row_index"))


def ledger(sandbox: SandboxServer, profile: Profile) -> list[dict[str, Any]]:
    return [dict(e) for e in sandbox.client.ledger(provider=profile.emulator)]


def requests_seen(sandbox: SandboxServer, profile: Profile) -> dict[str, int]:
    stats = sandbox.client.stats()["providers"].get(profile.emulator, {})
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


# ---- 1. happy path ---------------------------------------------------------------------------------------


def test_happy_path_every_row_accepted_once(profile: Profile, sandbox: SandboxServer) -> None:
    run = prepare(profile, sandbox, profile.rows(N), "happy")
    assert run.sendable.height == N
    out, requests = run.send()
    assert statuses(out) == [Status.ACCEPTED.value] * N
    assert set(requests) <= {"200", "201"}

    entries = ledger(sandbox, profile)
    assert_ledger_is(entries, out["phone"].to_list())
    by_phone = {e["to"]: e for e in entries}
    if profile.row_keys_in_ledger:  # our per-row key reached the provider
        keys = dict(zip(run.sendable["phone"], run.sendable["idempotency_key"], strict=True))
        assert {p: e["key"] for p, e in by_phone.items()} == keys
    if run.provider.caps.outcome is OutcomeTiming.ASYNC:
        # A batch reference now (textingline's job brc_…, Postman's <campaign>/<batchId>), no message ids.
        refs = out["provider_batch_ref"].to_list()
        assert all(refs) and out["provider_message_id"].null_count() == N
        for p, ref in zip(out["phone"], refs, strict=True):
            assert ref.rsplit("/", 1)[-1] == by_phone[p]["batch"]
    else:
        ids = dict(zip(out["phone"], out["provider_message_id"], strict=True))
        assert ids == {p: e["message_id"] for p, e in by_phone.items()}


# ---- 2. partial failure ----------------------------------------------------------------------------------


def test_partial_failure_refused_rows_rejected_rest_accepted(
    profile: Profile, sandbox: SandboxServer
) -> None:
    trigger = profile.per_row
    df = profile.rows(N_PARTIAL)
    if trigger.edit_input is not None:
        df = trigger.edit_input(df, BAD)
    if trigger.by_suffix:
        sandbox.client.set_faults(provider=profile.emulator, reject_suffixes=[suffix(i) for i in BAD])
    run = prepare(profile, sandbox, df, "partial")
    assert run.sendable.height == N_PARTIAL  # the trigger passes our own validation
    out, requests = run.send()

    assert_isolated(run, out, BAD, trigger.code)
    if run.provider.caps.rejection is Rejection.WHOLE_BATCH:
        assert requests.get("batch_rejected", 0) >= 1
    assert_ledger_is(ledger(sandbox, profile), accepted_phones(out))


# ---- 3. whole-batch rejection ----------------------------------------------------------------------------


def test_whole_batch_rejection_isolates_the_bad_rows(profile: Profile, sandbox: SandboxServer) -> None:
    trigger = profile.whole_batch
    if trigger is None:
        pytest.skip(profile.whole_batch_skip)
    run = prepare(profile, sandbox, profile.rows(N_PARTIAL), "whole")
    rows = run.sendable
    if trigger.edit_planned is not None:
        rows = trigger.edit_planned(rows, BAD_WHOLE)
    out, requests = run.send(rows)

    # The sandbox refused whole requests (nothing of them recorded) and the engine bisected them.
    seen = requests_seen(sandbox, profile)
    assert seen.get("400", 0) == requests["batch_rejected"] >= 2  # the full batch, then the part with the row
    assert_isolated(run, out, BAD_WHOLE, trigger.code)
    assert out.filter(pl.col("status") == Status.ACCEPTED.value).height >= N_PARTIAL - 19
    assert_ledger_is(ledger(sandbox, profile), accepted_phones(out))


# ---- 4. a 429 storm --------------------------------------------------------------------------------------


STORM = 3


def test_429_storm_everything_accepted_in_the_end(profile: Profile, sandbox: SandboxServer) -> None:
    sandbox.client.set_faults(provider=profile.emulator, next_429=STORM, retry_after_s=1)
    run = prepare(profile, sandbox, profile.rows(N), "storm")
    started = time.monotonic()
    out, requests = run.send()
    elapsed = time.monotonic() - started  # only ever bounded from below: a slow machine only adds to it

    assert statuses(out) == [Status.ACCEPTED.value] * N
    assert requests.get("429") == STORM and requests_seen(sandbox, profile).get("429") == STORM
    assert_ledger_is(ledger(sandbox, profile), out["phone"].to_list())
    bucket = ratelimit._BUCKETS[(run.provider.caps.name, run.provider.settings.base_url)]
    assert bucket.throttled == STORM
    if profile.waits_on_429:
        # Each 429 said "1 s" (Instasent: X-RateLimit-Reset, a whole second at least 1 s away): the engine
        # paused for it every time, so the three took at least ~3 s.
        assert elapsed >= STORM * 0.9, f"{elapsed:.2f}s: Retry-After was not honoured"
    else:
        # No wait given: the engine backs off by halving its rate, not by inventing a wait.
        assert bucket.rate < bucket.target_rate


# ---- 5. an idempotent re-send ----------------------------------------------------------------------------


def test_resend_creates_nothing_new_unless_the_provider_has_no_idempotency(
    profile: Profile, sandbox: SandboxServer
) -> None:
    run = prepare(profile, sandbox, profile.rows(N), "resend")
    first, _ = run.send()
    second, _ = run.send()  # the same planned rows: same batch keys, same row keys
    assert statuses(first) == statuses(second) == [Status.ACCEPTED.value] * N
    entries = ledger(sandbox, profile)
    stats = sandbox.client.stats()["providers"][profile.emulator]

    if run.provider.caps.resend_safe:
        assert_ledger_is(entries, first["phone"].to_list())
        assert stats["duplicates"] == N
        if run.provider.caps.outcome is OutcomeTiming.SYNC:  # the first messages' ids, answered again
            assert second["provider_message_id"].to_list() == first["provider_message_id"].to_list()
            assert first["provider_message_id"].null_count() == 0
        else:  # the original job, replayed
            assert second["provider_batch_ref"].to_list() == first["provider_batch_ref"].to_list()
    else:
        # Postman has no idempotency: the same file makes a second batch and texts everyone twice. This is
        # why the engine records `unknown` after an ambiguous failure instead of re-sending blindly.
        assert len(entries) == 2 * N
        assert sorted(e["to"] for e in entries) == sorted(first["phone"].to_list() * 2)
        assert len({e["batch"] for e in entries}) == 2
        assert set(first["provider_batch_ref"]).isdisjoint(set(second["provider_batch_ref"]))


def test_lost_answer_is_resent_only_where_idempotency_makes_it_harmless(
    profile: Profile, sandbox: SandboxServer
) -> None:
    # The emulator processes (and records) the request, then holds the answer past our read timeout.
    # A read timeout of 5 s against an answer held for 60: no ordinary answer on a loaded machine takes 5 s.
    sandbox.client.set_faults(provider=profile.emulator, next_timeout=1, timeout_delay_s=60)
    run = prepare(profile, sandbox, profile.rows(N), "lost")
    out, requests = run.send(read_timeout=5.0)
    entries = ledger(sandbox, profile)
    assert requests.get("read_timeout") == 1
    # Either way nobody is texted twice.
    assert_ledger_is(entries, out["phone"].to_list())
    if run.provider.caps.resend_safe:
        # The engine re-sent with the same keys; the provider answered the first messages.
        assert statuses(out) == [Status.ACCEPTED.value] * N
        assert sandbox.client.stats()["providers"][profile.emulator]["duplicates"] == N
    else:
        # No idempotency: the rows are `unknown`, for reconciliation, and the file went up once.
        assert statuses(out) == [Status.UNKNOWN.value] * N
        assert set(out["error_code"]) == {"read_timeout"}
        assert sum(requests.values()) == 1


# ---- 6. limits at the boundary ---------------------------------------------------------------------------


def test_max_rows_per_request_at_the_boundary(profile: Profile, sandbox: SandboxServer) -> None:
    m = profile.max_rows
    # Asked for bigger requests, the plan still never makes one over the maximum: one row more is two.
    over = prepare(profile, sandbox, profile.rows(m + 1), "max-over", batch_size=m + 1)
    assert over.provider.caps.max_rows == m  # the adapter declares the documented maximum
    sizes = over.sendable.group_by("batch_seq").len()["len"].to_list()
    assert len(sizes) == 2 and sum(sizes) == m + 1 and max(sizes) <= m

    # Exactly the maximum: one request, every row accepted, one ledger batch.
    run = prepare(profile, sandbox, profile.rows(m), "max")
    assert run.sendable["batch_seq"].n_unique() == 1
    out, requests = run.send()
    assert statuses(out) == [Status.ACCEPTED.value] * m
    assert sum(requests.values()) == 1 and set(requests) <= {"200", "201"}
    entries = ledger(sandbox, profile)
    assert_ledger_is(entries, out["phone"].to_list())
    assert len({e["batch"] for e in entries}) == 1

    # One more row in ONE request, built by hand: the emulator refuses it with the documented error and
    # records nothing.
    batch, response = over.by_hand(over.sendable, "over")
    status, code = profile.over_max
    assert response.status_code == status, response.text[:300]
    with pytest.raises(BatchRejectedError) as refused:
        over.provider.parse_response(batch, response)
    assert refused.value.code == code
    assert len(ledger(sandbox, profile)) == m


def test_body_at_the_character_limit_and_one_over(profile: Profile, sandbox: SandboxServer) -> None:
    if profile.body_chars is None:
        pytest.skip(profile.body_skip)
    limit = profile.body_chars
    p0 = profile.provider(sandbox.base_url)
    assert p0.caps.max_body_chars == limit  # the adapter declares the documented limit
    fillers = max(1, p0.caps.min_rows - 1)  # the hand-made request must meet the provider's minimum
    n = 2 + fillers
    run = prepare(profile, sandbox, profile.rows(n, {0: "a" * limit, 1: "a" * (limit + 1)}), "body")
    found = codes(run)
    # One character over: quarantined by validation.
    assert "body_too_long" in (found[1] or "").split(";")
    # At the limit: never `body_too_long`; quarantined only if the provider's SEGMENT limit is the tighter one
    # (smscast's sandbox: 1600 GSM-7 characters are 11 segments, over its 10).
    at = run.planned.row(0, named=True)
    caps = run.provider.caps
    over_segments = caps.max_segments is not None and at["segments"] > caps.max_segments
    assert found[0] == ("too_many_segments" if over_segments else None)

    # Sent anyway, by hand: the emulator takes the body at the limit and refuses the one over it.
    batch, response = run.by_hand(run.planned, "body")
    if caps.rejection is Rejection.WHOLE_BATCH:
        with pytest.raises(BatchRejectedError) as refused:
            run.provider.parse_response(batch, response)
        assert refused.value.code == profile.body_over_code
        assert ledger(sandbox, profile) == []
    else:
        outcomes = run.provider.parse_response(batch, response)
        assert outcomes[0].status is Status.ACCEPTED
        assert (outcomes[1].status, outcomes[1].error_code) == (Status.REJECTED, profile.body_over_code)
        assert all(o.status is Status.ACCEPTED for o in outcomes[2:])

    # Through the engine, the rows validation passed are accepted (the body at the limit among them when its
    # segments allow); the body one over never reaches the ledger.
    out, _ = run.send()
    assert set(statuses(out)) == {Status.ACCEPTED.value}
    bodies = {e["to"]: e["body"] for e in ledger(sandbox, profile)}
    assert phone(1) not in bodies
    assert len(bodies[phone(0)]) == limit


def test_gsm7_against_ucs2_limits(profile: Profile, sandbox: SandboxServer) -> None:
    if profile.encoding is None:
        pytest.skip(profile.encoding_skip)
    if profile.encoding == "segments":
        _segments_depend_on_encoding(profile, sandbox)
    elif profile.encoding == "chars":
        _characters_do_not_depend_on_encoding(profile, sandbox)
    else:
        _allow_unicode_follows_encoding(profile, sandbox)


def _segment_capacity(segments: int, single: int, part: int) -> int:
    return single if segments == 1 else part * segments


def _segments_depend_on_encoding(profile: Profile, sandbox: SandboxServer) -> None:
    caps = profile.provider(sandbox.base_url).caps
    assert caps.max_segments is not None
    gsm = _segment_capacity(caps.max_segments, GSM7_SINGLE, GSM7_MULTI_PART)  # 1530 for 10 segments
    ucs = _segment_capacity(caps.max_segments, UCS2_SINGLE, UCS2_MULTI_PART)  # 670
    assert caps.max_body_chars is None or gsm <= caps.max_body_chars  # so the char limit stays out of it
    bodies = {
        0: "a" * gsm,  # fits in GSM-7
        1: "a" * (gsm + 1),  # one GSM-7 character more: one segment too many
        2: "a" * (gsm - 1) + UCS2_CHAR,  # the same length with one UCS-2 character: far too many
        3: UCS2_CHAR * ucs,  # fits in UCS-2
        4: UCS2_CHAR * (ucs + 1),  # one more
    }
    run = prepare(profile, sandbox, profile.rows(5, bodies), "gsm-ucs")
    assert codes(run) == {
        0: None,
        1: "too_many_segments",
        2: "too_many_segments",
        3: None,
        4: "too_many_segments",
    }
    segments = run.planned["segments"].to_list()
    assert segments[:4] == [
        caps.max_segments,
        caps.max_segments + 1,
        -(-gsm // UCS2_MULTI_PART),
        caps.max_segments,
    ]
    out, _ = run.send()
    assert out["row_index"].to_list() == [0, 3] and set(statuses(out)) == {Status.ACCEPTED.value}
    sent = {e["to"]: e["body"] for e in ledger(sandbox, profile)}
    assert sent == {phone(0): bodies[0], phone(3): bodies[3]}


def _characters_do_not_depend_on_encoding(profile: Profile, sandbox: SandboxServer) -> None:
    # A limit in characters (robase 1600, textingline 640) is the same in GSM-7 and UCS-2: a UCS-2 body at
    # the limit passes, though it is many more segments than its GSM-7 twin.
    limit = profile.body_chars
    assert limit is not None
    caps = profile.provider(sandbox.base_url).caps
    assert caps.max_segments is None
    bodies = {
        0: "a" * (limit - 1) + UCS2_CHAR,
        1: UCS2_CHAR * limit,
        2: UCS2_CHAR * (limit + 1),
        3: "a" * limit,
        # An astral character is one character (code point) on both sides, though two UTF-16 units.
        4: "a" * (limit - 1) + EMOJI,
    }
    n = max(len(bodies), caps.min_rows + 1)
    run = prepare(profile, sandbox, profile.rows(n, bodies), "gsm-ucs")
    found = codes(run)
    assert [found[i] for i in bodies] == [None, None, "body_too_long", None, None]
    encodings = run.planned["encoding"].to_list()
    assert encodings[: len(bodies)] == [UCS2_ENCODING, UCS2_ENCODING, UCS2_ENCODING, "GSM-7", UCS2_ENCODING]
    out, _ = run.send()
    assert set(statuses(out)) == {Status.ACCEPTED.value} and out.height == n - 1
    sent = {e["to"]: e["body"] for e in ledger(sandbox, profile)}
    assert phone(2) not in sent
    assert {i: sent[phone(i)] for i in (0, 1, 3, 4)} == {i: bodies[i] for i in (0, 1, 3, 4)}


def _allow_unicode_follows_encoding(profile: Profile, sandbox: SandboxServer) -> None:
    # Instasent: "allowUnicode … Set to true if the text may contain non-GSM-7 characters". GSM-7 texts (the
    # extension table included) go with false, keeping 160-character segments; UCS-2 ones with true.
    bodies = {
        0: "Hello there, see you at 10",
        1: "Price: €5 {promo} [ok] ~^|\\",
        2: f"Olá! Ça va? {UCS2_CHAR}",
    }
    run = prepare(profile, sandbox, profile.rows(3, bodies), "gsm-ucs")
    assert run.sendable.height == 3
    request = run.provider.build_request(Batch("c", "b", "k", run.sendable, run.spec))
    items = orjson.loads(request.content)
    assert [it["allowUnicode"] for it in items] == [False, False, True]

    # Sent by hand with allowUnicode false, the UCS-2 text is refused by the emulator, per item.
    for it in items:
        it["allowUnicode"] = False
    forced = httpx.Request(
        "POST", request.url, headers={"Authorization": request.headers["authorization"]}, json=items
    )
    with httpx.Client(timeout=30.0) as http:
        response = http.send(forced)
    outcomes = run.provider.parse_response(Batch("c", "b", "k", run.sendable, run.spec), response)
    assert [o.status for o in outcomes] == [Status.ACCEPTED, Status.ACCEPTED, Status.REJECTED]
    assert outcomes[2].error_code == "text:needs_unicode"

    # Through the engine: all three accepted, the UCS-2 one with allowUnicode set.
    out, _ = run.send()
    assert set(statuses(out)) == {Status.ACCEPTED.value}
    sent = {e["to"]: e["body"] for e in ledger(sandbox, profile)}
    assert sent == {phone(i): bodies[i] for i in range(3)}


# ---- 7. refusals the adapter has no code for (httpx.MockTransport, no emulator) ---------------------------
#
# Vendors refuse rows with more codes than their documents show (phone_blocked, opted_out, …). A refusal is
# the provider saying it did not take the row: `rejected` with its code and message kept, never `unknown`
# (which the retry flow and reconciliation read as "may have been sent"). The answers below are each vendor's
# documented shape carrying a code no adapter lists.

REFUSAL_TEXT = "the recipient opted out of all messages"
BAD_UNKNOWN = [2, 9]

Answer = Callable[[httpx.Request, set[str]], httpx.Response]


def _sandbox_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    messages = orjson.loads(request.content)["messages"]
    results = [
        {"index": i, "status": "rejected", "code": "phone_blocked", "message": REFUSAL_TEXT}
        if m["to"] in bad
        else {"index": i, "status": "accepted", "message_id": f"sbx_{i}"}
        for i, m in enumerate(messages)
    ]
    return httpx.Response(200, json={"batch": "bat_mock", "results": results})


def _sent_dm_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    # The document shows no per-recipient error; an entry with one and no message_id is a refusal.
    recipients = [
        {"to": to, "channel": "sms", "error": {"code": "RECIPIENT_OPTED_OUT", "message": REFUSAL_TEXT}}
        if to in bad
        else {"message_id": f"msg_{i}", "to": to, "channel": "sms"}
        for i, to in enumerate(orjson.loads(request.content)["to"])
    ]
    data = {"status": "QUEUED", "recipients": recipients}
    return httpx.Response(
        200, json={"success": True, "data": data, "error": None, "meta": {"request_id": "r"}}
    )


def _robase_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    data = [
        {"index": i, "error": {"type": "opted_out", "message": REFUSAL_TEXT, "field": "to"}}
        if m["to"] in bad
        else {"index": i, "sms": {"id": f"sms_{i}", "status": "queued"}}
        for i, m in enumerate(orjson.loads(request.content)["messages"])
    ]
    failed = sum("error" in d for d in data)
    body = {"accepted": len(data) - failed, "failed": failed, "success": failed == 0, "data": data}
    return httpx.Response(200, json=body)


def _textingline_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    recipients = orjson.loads(request.content)["recipients"]
    if any(r["to"] in bad for r in recipients):
        return httpx.Response(400, json={"code": 33099, "message": REFUSAL_TEXT, "status": 400})
    return httpx.Response(
        202, json={"id": "brc_mock", "totalRecipients": len(recipients), "status": "queued"}
    )


def _postman_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    if any(p.removeprefix("+").encode() in request.content for p in bad):  # the CSV's recipient column
        return httpx.Response(400, json={"code": "recipient_opted_out", "message": REFUSAL_TEXT})
    return httpx.Response(201, json={"isValid": True, "batchId": "batch_mock"})


def _instasent_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    items = orjson.loads(request.content)
    entities = [
        {"id": f"id_{i}", "clientId": it["clientId"], "to": it["to"], "status": "enqueued"}
        for i, it in enumerate(items)
        if it["to"] not in bad
    ]
    errors = [{"fields": {"recipient": [REFUSAL_TEXT]}} for it in items if it["to"] in bad]
    return httpx.Response(201, json={"entities": entities, "errors": errors})


# Each provider's answer refusing the bad rows, and the code those rows must keep.
UNKNOWN_REFUSALS: dict[str, tuple[Answer, str]] = {
    "sandbox": (_sandbox_answer, "phone_blocked"),
    "sent-dm": (_sent_dm_answer, "RECIPIENT_OPTED_OUT"),
    "robase": (_robase_answer, "opted_out"),
    "textingline": (_textingline_answer, "33099"),
    "postman": (_postman_answer, "recipient_opted_out"),
    "instasent": (_instasent_answer, "recipient:invalid"),  # Instasent's codes are `field:kind`
}


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


def test_an_unrecognised_refusal_code_is_rejected_with_the_code_kept(
    profile: Profile, sandbox: SandboxServer
) -> None:
    answer, code = UNKNOWN_REFUSALS[profile.name]
    assert code not in profile.provider_cls.REFUSALS  # the point: a code the adapter does not list
    run = prepare(profile, sandbox, profile.rows(N), "unknown-code")
    assert run.sendable.height == N and run.sendable["batch_seq"].n_unique() == 1
    bad = {phone(i) for i in BAD_UNKNOWN}
    out, requests = send_mocked(run, lambda request: answer(request, bad))

    assert Status.UNKNOWN.value not in statuses(out)
    refused = out.filter(pl.col("phone").is_in(list(bad)))
    assert set(statuses(refused)) == {Status.REJECTED.value}
    assert set(refused["error_code"]) == {code}
    assert refused["error_message"].str.contains(REFUSAL_TEXT, literal=True).all()
    rest = out.filter(~pl.col("phone").is_in(list(bad)))
    if run.provider.caps.rejection is Rejection.PER_ROW:
        assert set(statuses(rest)) == {Status.ACCEPTED.value}
    else:
        # Refused as a whole with a code the adapter cannot tell is caused by a row: no bisection on a guess
        # (textingline allows 5 requests a minute), so the request's every row is rejected with that code.
        assert set(statuses(rest)) == {Status.REJECTED.value} and set(rest["error_code"]) == {code}
        assert requests == {"batch_rejected": 1}


@pytest.mark.parametrize("http_status", [404, 418, 408, 409])
def test_an_unhandled_http_4xx_is_unknown_only_if_the_request_may_have_been_accepted(
    profile: Profile, sandbox: SandboxServer, http_status: int
) -> None:
    run = prepare(profile, sandbox, profile.rows(N), f"http-{http_status}")
    out, requests = send_mocked(run, lambda request: httpx.Response(http_status, text="no"))

    if http_status == 404:
        # Nothing answers where we post: not these rows' fault. The campaign stops; rows stay retriable.
        assert set(statuses(out)) == {Status.FAILED.value}
        assert requests == {"http_404": 1}
        return
    assert set(out["error_code"]) == {f"http_{http_status}"}
    if http_status == 408:
        # The server did not receive the whole request: nothing was taken, retried, then `failed`.
        expected = Status.FAILED
        assert requests == {f"http_{http_status}": FAST.max_attempts}
    elif http_status == 409 and run.provider.caps.resend_safe:
        # An earlier request with our key may be in flight: re-sent with the same keys, and `unknown` (may
        # have been accepted) when the conflict never resolves.
        expected = Status.UNKNOWN
        assert requests == {f"http_{http_status}": FAST.max_attempts}
    else:
        # The provider refused the request: its rows are rejected, never unknown; nothing to bisect.
        expected = Status.REJECTED
        assert requests == {"batch_rejected": 1}
    assert set(statuses(out)) == {expected.value}
