"""No secret ever appears in logs, artifacts, results or exception texts; phones are masked in logs.

What is captured and searched, and how: tests/hostile/secrecy_support.py. This module runs the first half of
the scenarios (the happy path, a wrong key, a 5xx storm, a malformed base URL) and the checks that need no
run; tests/hostile/test_secrecy_logs.py runs the other half and a source's password.
"""

from __future__ import annotations

import asyncio
import base64
import pickle
from pathlib import Path

import httpx
import polars as pl
import pytest
from hostile.secrecy_support import (
    ALL_NEEDLES,
    FIRST_HALF,
    KEYS,
    PHONE_NEEDLES,
    PROVIDERS,
    URL_PASSWORD,
    FastPolicy,
    capture_fixture,  # noqa: F401 (a fixture)
    exception_text,
    leaks,
    no_secret_anywhere,
    sandbox_fixture,  # noqa: F401 (a fixture)
    spec_fields,
    write_recipients,
)

from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.providers.names import ProviderName
from smscast.providers.registry import provider_class
from smscast.settings import ProviderSettings, Secret, resolve_settings
from smscast.tasks.load import load_recipients
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

pytestmark = pytest.mark.integration


test_no_secret_anywhere = no_secret_anywhere(FIRST_HALF)


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{URL_PASSWORD}@api.example.com",
        f"https://{URL_PASSWORD}@api.example.com/v1",
        f"https://api.example.com/v1?api_key={URL_PASSWORD}",
        f"https://api.example.com/v1#{URL_PASSWORD}",
        f"api.example.com/{URL_PASSWORD}",
        f"ftp://api.example.com/{URL_PASSWORD}",
        f"http://[{URL_PASSWORD}",
        f"http://api.example.com:{URL_PASSWORD}/",
        f"http://api.example.com/{URL_PASSWORD}\n/x",
        "http://",
    ],
)
def test_a_bad_endpoint_is_refused_without_quoting_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSCAST_SANDBOX_API_KEY", KEYS["sandbox"])
    with pytest.raises(ConfigError) as info:
        resolve_settings("sandbox", base_url=url)
    assert "endpoint" in str(info.value)
    assert URL_PASSWORD not in str(info.value) and URL_PASSWORD not in repr(info.value)
    assert KEYS["sandbox"] not in str(info.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765", "https://api.example.com/v2/", " https://h.example "]
)
def test_a_plain_endpoint_is_accepted(url: str) -> None:
    assert resolve_settings("sandbox", base_url=url, require_key=False).base_url == url.strip().rstrip("/")


def test_secret_masks_itself_everywhere() -> None:
    secret = Secret(KEYS["sandbox"])
    shown = [
        str(secret),
        repr(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret:>40}",
        "%s %r" % (secret, secret),  # noqa: UP031 - as logging formats its arguments
    ]
    shown.append(repr(ProviderSettings(base_url="http://h", api_key=secret)))
    assert all(KEYS["sandbox"] not in text for text in shown)
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert secret.reveal() == KEYS["sandbox"]


# ---- a server that echoes the credential back --------------------------------------------------------------


def echoing_server(request: httpx.Request) -> httpx.Response:
    """A misbehaving gateway (a debug proxy, a WAF page) that reflects the request's credentials into its
    400 answer, in every field a provider module might quote."""
    echo = " ".join(f"{k}: {v}" for k, v in request.headers.items() if k in ("authorization", "x-api-key"))
    body = {"code": "bad_request", "message": echo, "error": {"code": "bad_request", "message": echo}}
    return httpx.Response(400, json=body)


# LEAK, outside this module's files: every provider copies the server's error text into its BatchRejectedError
# or AuthError message (providers/base.py Provider.reject_batch, postman's _error, textingline's
# _vendor_error, …), and tasks/send_engine.py ShardSender._all records str(exc) as the rows' error_message. A
# server that echoes the Authorization header (a debug proxy, a WAF page) thus puts the key into the results
# and into exception texts. Suggested fix: redact the provider's own key (as given, its parts, base64 of
# key_id:secret) from every server-supplied text in one place, e.g. a Provider.redact(text) used by
# reject_batch and by ShardSender._all. Strict: this test starts failing (XPASS) once that is fixed.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_key_echoed_by_the_server_is_not_recorded(provider: ProviderName, tmp_path: Path) -> None:
    cls = provider_class(provider)
    instance = cls(ProviderSettings(base_url=f"http://echo-{provider}.test", api_key=Secret(KEYS[provider])))
    spec = CampaignSpec(
        campaign_id=f"echo-{provider}",
        provider=provider,
        source=str(write_recipients(tmp_path / "r.csv")),
        results=str(tmp_path / "res"),
        rate=10_000,
        **{k: v for k, v in spec_fields(provider).items() if k != "rate"},
    )
    checked = validate_recipients(load_recipients(spec), spec, instance.caps, instance)
    planned = plan_campaign(checked, spec, instance.caps, instance).rows
    rows = planned.filter(pl.col("shard").is_not_null())
    client = httpx.AsyncClient(transport=httpx.MockTransport(echoing_server))
    text = ""
    try:
        outcomes, _ = asyncio.run(send_rows(instance, rows, spec, policy=FastPolicy(), client=client))
        assert outcomes.height == rows.height
        text = outcomes.select(pl.all().cast(pl.String)).write_csv()
    except Exception as exc:
        text = exception_text(exc)
    found = leaks({"outcomes or exception": text}, ALL_NEEDLES)
    assert not found, "a secret leaked:\n" + "\n".join(found)


def test_the_search_finds_every_form_of_a_key() -> None:
    key = KEYS["textingline"]
    key_id, secret = key.split(":")
    planted = {
        "plain": f"x {key} y",
        "key id": f"id={key_id}",
        "secret": f"secret={secret}",
        "basic auth": "Authorization: Basic " + base64.b64encode(key.encode()).decode(),
        "url-encoded": "k=" + key.replace(":", "%3A"),
    }
    assert len(leaks(planted, ALL_NEEDLES)) == len(planted)
    assert not leaks({"masked": str(Secret(key)), "phone": "+44********23"}, ALL_NEEDLES + PHONE_NEEDLES)
