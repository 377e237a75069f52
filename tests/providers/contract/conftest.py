"""Contract tests: one set of scenarios, parametrised over the six providers, each driven through the real
engine (validate -> plan -> `send_rows`, without Prefect) against ONE sandbox over loopback and checked
against the sandbox's ledger.

* test_sending.py: the happy path, a partial failure, a whole-batch rejection, a 429 storm, an idempotent
  re-send (the same planned rows sent again, and the engine's own re-send after an answer lost to a read
  timeout);
* test_limits.py: the limits at the boundary (rows per request, body characters, GSM-7 against UCS-2);
* test_refusals.py: refusals no adapter has a code for, and unhandled 4xx answers (httpx.MockTransport).

What each provider needs is its `contract` facts (tests/provider_facts.py): how to build a valid campaign and
its recipient rows, how to make a row refused one by one and how to make a whole request refused (or why it
cannot be), its documented limits and the codes that come back when they are exceeded. A scenario that does
not apply to a provider is skipped with the document's reason.

Postman runs in its TEST environment (`/test`, SMSCAST_POSTMAN_TEST_ENV=1): 20 rows per file. Production
allows 1,000 rows per file only as the adapter's own budget under the 40 MB file limit; the emulator has no
row limit there to refuse the 1,001st row, so only the test environment has a row maximum to test at its
boundary.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from provider_facts import FACTS, ProviderFacts

from smscast import ratelimit
from smscast.sandbox.framework import DEFAULT_API_KEY
from smscast.servers.sandbox import SandboxServer


@pytest.fixture(params=list(FACTS.values()), ids=list(FACTS))
def facts(request: pytest.FixtureRequest) -> ProviderFacts:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="package")
def sandbox() -> Iterator[SandboxServer]:
    # Every emulator, its documented rate limit lifted (for speed).
    knobs = {f.emulator: f.lift for f in FACTS.values() if f.lift}
    keys = {f.emulator: f.api_key(DEFAULT_API_KEY) for f in FACTS.values()}
    with SandboxServer(provider_knobs=knobs, api_keys=keys) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> Iterator[None]:
    sandbox.client.reset()  # ledger, idempotency stores, knobs back to the start values (rates lifted)
    ratelimit._BUCKETS.clear()  # the engine's process-wide buckets keep a 429's penalty otherwise
    yield
    ratelimit._BUCKETS.clear()
