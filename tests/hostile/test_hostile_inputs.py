"""Hostile recipient files (tests/hostile/corpus.py): each gives a clear error or quarantined rows, never a
crash, a hang or a lost row.

The contract, per corpus item:

* either a SmscastError whose message holds the item's key words, names the source, stays short and quotes
  none of the file's phone numbers;
* or validated rows where every input record appears exactly once, each with a status, and each quarantined
  one with a reason code and message;
* and never an uncaught exception (any other exception type fails the test) nor a hang (timeouts).

A representative subset also runs the whole `send_campaign` flow against the sandbox: every input row is in
the results exactly once, every accepted row is in the sandbox ledger once, and bodies arrive verbatim.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hostile.corpus import FORMULAS, ITEMS, Item
from provider_facts import FACTS
from support import ledger_frame, prefect_harness

from smscast.campaign import CampaignSpec
from smscast.errors import SmscastError
from smscast.flows.campaign import send_campaign
from smscast.phone import is_e164, normalise
from smscast.providers.base import Batch
from smscast.providers.names import ProviderName
from smscast.providers.registry import provider_class
from smscast.providers.sandbox import SandboxProvider
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings
from smscast.tasks.current import current_results
from smscast.tasks.load import load_recipients
from smscast.tasks.validate import validate_recipients

KEY = "hostile-inputs-key"
PROVIDER = SandboxProvider(ProviderSettings(base_url="http://sandbox.invalid", api_key=None))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def spec_for(item: Item, source: Path, results: Path, **kw: Any) -> CampaignSpec:
    fields: dict[str, Any] = {"campaign_id": f"h-{item.name[:40].replace('_', '-')}", **item.spec, **kw}
    return CampaignSpec(source=str(source), results=str(results), **fields)


def phone_spellings(phones: tuple[str, ...]) -> set[str]:
    """The ways a file's phone can leak into a message: as written, as E.164 digits, as national digits."""
    out: set[str] = set()
    for p in phones:
        digits = "".join(c for c in p if c.isdigit())
        out |= {p, digits, digits[2:]} if len(digits) > 8 else {p}
    return out


def assert_clear_error(item: Item, source: Path, exc: BaseException) -> None:
    message = str(exc)
    assert isinstance(exc, SmscastError), f"{type(exc).__name__}: {message[:300]}"
    for word in item.error:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert source.name in message, "the message names the source"
    assert len(message) < 1000, f"a {len(message)}-character message"
    for p in phone_spellings(item.phones):
        assert p not in message, "the message quotes the file's content"


def assert_every_row_once(item: Item, out: pl.DataFrame) -> None:
    assert item.rows is not None
    assert out.height == item.rows
    assert out["row_index"].sort().to_list() == list(range(item.rows)), "a record lost or doubled"
    invalid = out.filter(pl.col("status") == "invalid")
    assert invalid["error_code"].null_count() == 0 and invalid["error_message"].null_count() == 0
    valid = out.filter(pl.col("status").is_null())
    assert valid["error_code"].null_count() == valid.height, "a passing row with a reason"
    assert valid.height == item.valid
    assert dict(Counter(invalid["error_code"].to_list())) == dict(item.codes)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("item", ITEMS, ids=[i.name for i in ITEMS])
def test_load_and_validate(item: Item, corpus_dir: Path, tmp_path: Path) -> None:
    source = item.write(corpus_dir)
    spec = spec_for(item, source, tmp_path / "results")
    # CPU seconds of this process, not wall time: a loaded CI machine must not fail a pathology check.
    # Polars works on every core, so CPU time may run to twice the wall time on two cores: bounds allow it.
    start = time.process_time()
    try:
        out = validate_recipients(load_recipients(spec), spec, PROVIDER.caps, PROVIDER)
    except Exception as exc:
        if item.rows is not None:
            raise
        assert_clear_error(item, source, exc)
        return
    finally:
        elapsed = time.process_time() - start
        if item.max_seconds is not None:
            assert elapsed < 2 * item.max_seconds, f"load + validate took {elapsed:.2f} CPU s"
    assert item.rows is not None, f"expected an error, got {out.height} rows"
    assert_every_row_once(item, out)
    by_index = {r["row_index"]: r for r in out.select("row_index", "body", "phone").iter_rows(named=True)}
    for i, body in item.bodies.items():
        assert by_index[i]["body"] == body, f"row {i}: the body was changed"
    for i, e164 in item.e164.items():
        assert by_index[i]["phone"] == e164


# ---- phone normalisation: invisible formatting characters ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("\u200e+44 7400 900123\u200e", None, "+447400900123"),  # LRM: pasted from a right-to-left page
        ("\u202a+44 7400 900123\u202c", None, "+447400900123"),  # LRE … PDF
        ("+44\u202e7400900123", None, "+447400900123"),  # RLO: spoofs the display, not the digits
        ("\u2067+1 (415) 555-0100\u2069", None, "+14155550100"),  # RLI … PDI
        ("\ufeff+447400900123", None, "+447400900123"),  # a BOM at the front of a cell
        ("+44\u200b7400\u200c900\u200d123", None, "+447400900123"),  # zero-width space / non-joiner / joiner
        ("+44\u20607400\u00ad900123", None, "+447400900123"),  # word joiner, soft hyphen
        ("\u200f07400 900123", "GB", "+447400900123"),  # RLM before a national number
        ("\u200e\u200f", None, None),  # marks alone: no phone
    ],
)
def test_normalise_drops_invisible_formatting_characters(
    raw: str, country: str | None, expected: str | None
) -> None:
    out = pl.select(normalise(pl.lit(raw), country).alias("p")).item()
    assert out == expected
    if expected is not None:
        assert pl.select(is_e164(pl.lit(out))).item()


@pytest.mark.parametrize("raw", ["+44 7400 9OO123", "+٤٤٧٤٠٠٩٠٠١٢٣", "+44\u20097400900123x"])
def test_normalise_still_refuses_what_is_not_invisible(raw: str) -> None:
    # Letters, other scripts' digits and visible junk are not formatting characters: the number stays invalid.
    assert not pl.select(is_e164(normalise(pl.lit(raw)))).item()


# ---- a 10 MB body through every provider that sends text ------------------------------------------------------

# Every provider whose campaigns can carry our own text (sent.dm sends templates only).
TEXT_PROVIDERS = [f.name for f in FACTS.values() if f.sends_text]
# Instasent's document states no length limit and providers/instasent.py declares neither max_body_chars nor
# max_segments (nor a row rule), so nothing stops a 10 MB body: it would go out as ~66,000 segments, billed.
# Suggested fix (providers/instasent.py, or a floor in tasks/validate.py for providers that declare no limit):
# a conservative max_segments (e.g. 10, the sandbox's) until the real limit is known.


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", TEXT_PROVIDERS)
def test_a_10mb_body_is_quarantined_by_every_provider(
    name: ProviderName, corpus_dir: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec(f"providers.{name}") is None:
        pytest.skip(f"providers/{name}.py not present")
    item = next(i for i in ITEMS if i.name == "csv_body_of_10mb")
    provider = provider_class(name)(ProviderSettings(base_url="http://provider.invalid", api_key=None))
    spec = CampaignSpec(
        campaign_id="h-10mb",
        provider=name,
        source=str(item.write(corpus_dir)),
        results=str(tmp_path / "res"),
        **FACTS[name].spec_fields(),  # the body column from the file
    )
    start = time.process_time()  # CPU seconds (see test_load_and_validate)
    out = validate_recipients(load_recipients(spec), spec, provider.caps, provider).sort("row_index")
    assert time.process_time() - start < 10
    assert out["status"].to_list() == ["invalid", None], out.select(
        "row_index", "status", "error_code"
    ).rows()


# ---- Postman's CSV neutralises formula-looking cells ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_postman_csv_neutralises_formula_cells(tmp_path: Path) -> None:
    postman = pytest.importorskip("smscast.providers.postman", reason="providers/postman.py not present")
    item = next(i for i in ITEMS if i.name == "csv_formula_cells_as_names")
    source = item.write(tmp_path)
    spec = CampaignSpec(
        campaign_id="h-postman",
        provider="postman",
        source=str(source),
        results=str(tmp_path / "res"),
        template="campaign_1",
        template_vars=("name",),
        language="english",
    )
    provider = postman.PostmanProvider(ProviderSettings(base_url="http://postman.invalid", api_key=None))
    out = validate_recipients(load_recipients(spec), spec, provider.caps, provider)
    assert out["status"].null_count() == out.height  # formulas are valid text, not errors
    rows = out.sort("row_index").with_columns(idempotency_key=pl.lit("k"))
    batch = Batch(campaign_id="h-postman", batch_id="b0", batch_key="b0", rows=rows, spec=spec)
    table = list(csv.reader(io.StringIO(postman.csv_bytes(batch).decode("utf-8"), newline="")))
    assert table[0] == ["recipient", "language", "name"]
    sent = [r[2] for r in table[1:]]
    assert sent == [("'" + f if f.startswith(("=", "+", "-", "@", "\t", "\r")) else f) for f in FORMULAS]
    for cell in sent:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), f"a live formula went out: {cell!r}"


# ---- the whole flow, for a representative subset --------------------------------------------------------------

SENT = [i for i in ITEMS if i.send]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_harness(), SandboxServer(default_key=KEY) as server:
        mp = pytest.MonkeyPatch()
        mp.setenv("SMSCAST_SANDBOX_API_KEY", KEY)
        try:
            yield server
        finally:
            mp.undo()


@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.parametrize("item", SENT, ids=[i.name for i in SENT])
def test_send_campaign(item: Item, sandbox: SandboxServer, corpus_dir: Path, tmp_path: Path) -> None:
    sandbox.client.reset()
    source = item.write(corpus_dir)
    results = tmp_path / "results"
    spec = spec_for(item, source, results, provider="sandbox", base_url=sandbox.base_url, sender="ACME")
    if item.rows is None:
        with pytest.raises(Exception) as info:
            send_campaign(spec)
        assert_clear_error(item, source, info.value)
        assert ledger_frame(sandbox.client, "generic").height == 0
        return

    summary = send_campaign(spec)
    assert summary["rows"] == item.rows
    current = current_results(str(results), spec.campaign_id)
    assert current.height == item.rows
    assert current["row_index"].sort().to_list() == list(range(item.rows)), "a row lost or doubled"
    assert current["status"].null_count() == 0, "a row without a status"
    not_accepted = current.filter(pl.col("status") != "accepted")
    assert not_accepted["error_code"].null_count() == 0, "a row not accepted and no reason"
    assert summary["by_status"]["accepted"] == item.valid
    assert summary["by_status"]["invalid"] == item.rows - item.valid
    assert dict(Counter(current.filter(pl.col("status") == "invalid")["error_code"].to_list())) == dict(
        item.codes
    )

    ledger = ledger_frame(sandbox.client, "generic")
    accepted = current.filter(pl.col("status") == "accepted")
    assert ledger.height == accepted.height and ledger["to"].n_unique() == ledger.height
    assert sorted(ledger["to"].to_list()) == sorted(accepted["phone"].to_list())
    if item.bodies and ledger.height:
        sent = dict(
            accepted.join(ledger, left_on="phone", right_on="to").select("row_index", "body").iter_rows()
        )
        for i, body in item.bodies.items():
            assert sent[i] == body, f"row {i}: the body arrived changed"
    for i, e164 in item.e164.items():
        assert current.filter(pl.col("row_index") == i)["phone"].item() == e164
