"""The provider table: how a soak campaign is set up for each provider, and what its emulator does with the
per-row fault knobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reliability.settings import KEY, env_list


@dataclass(frozen=True)
class ProviderSetup:
    """How a campaign is set up for one provider (the options its e2e test uses), and what its emulator does
    with the per-row fault knobs."""

    name: str  # smscast's provider name
    emulator: str  # the sandbox's name for it (ledger, stats, knobs)
    key_env: str
    key: str
    args: tuple[str, ...]  # --body / --template / --sender / --language …
    batch_size: int  # short variant
    long_batch_size: int
    resend_safe: bool  # idempotency: a re-send is recognised
    # What the per-row knobs do at send time:
    per_row_reject: bool = True  # reject_suffixes -> that row `rejected` (bisected out where whole-batch)
    transient_at_send: bool = True  # transient_suffixes -> `failed` rows now (else only in a later lookup)
    transient_suffix: str = "77"  # 1 % of the rows
    reject_suffix: str = "013"  # 0.1 %: a whole-file refusal (Postman) bisects ~14 requests per bad row
    marker_rejects: bool = False  # textingline: a SHAFT-TEST body refuses its whole (sub-)batch
    template: str | None = None
    columns: Callable[[int], dict[str, str]] | None = None  # extra input columns by row

    def batch(self, long: bool) -> int:
        return self.long_batch_size if long else self.batch_size


TIERS = ("gold", "silver", "bronze")

PROVIDERS: dict[str, ProviderSetup] = {
    p.name: p
    for p in (
        ProviderSetup(
            "sandbox",
            "generic",
            "SMSCAST_SANDBOX_API_KEY",
            KEY,
            ("--body", "Hi {{name}}, your order ships today.", "--sender", "ACME"),
            100,
            500,
            resend_safe=True,
        ),
        ProviderSetup(
            "sent-dm",
            "sent-dm",
            "SMSCAST_SENT_DM_API_KEY",
            KEY,
            ("--template", "tmpl_soak", "--template-var", "tier"),
            100,
            500,
            resend_safe=True,
            # sent.dm answers a transient recipient with a 502 for the whole request: keep them rare.
            transient_suffix="0077",
            columns=lambda i: {"tier": TIERS[i % 3]},
        ),
        ProviderSetup(
            "robase",
            "robase",
            "SMSCAST_ROBASE_API_KEY",
            KEY,
            ("--body", "Hi {{name}}, your ride is at 10:00am.", "--sender", "SHUTTLERS"),
            100,
            500,
            resend_safe=True,
        ),
        ProviderSetup(
            "textingline",
            "textingline",
            "SMSCAST_TEXTINGLINE_API_KEY",
            f"{KEY}:{KEY}",
            ("--body", "Hi {{name}}, order shipped.", "--sender", "+18005559876"),
            100,
            500,
            resend_safe=True,
            per_row_reject=False,  # the per-row knobs only change the later status lookup
            transient_at_send=False,
            marker_rejects=True,
        ),
        ProviderSetup(
            "postman",
            "postman",
            "SMSCAST_POSTMAN_API_KEY",
            KEY,
            # Production mode (no /test, no SMSCAST_POSTMAN_TEST_ENV): files of up to 1,000 rows.
            (
                "--template",
                "soak_campaign",
                "--body",
                "Hi {{name}}, your application is ready.",
                "--language",
                "english",
            ),
            100,
            500,
            resend_safe=False,
            transient_at_send=False,  # accepted; Retrieve Batch Messages reports the failure later
            template="soak_campaign",
        ),
        ProviderSetup(
            "instasent",
            "instasent",
            "SMSCAST_INSTASENT_API_KEY",
            KEY,
            ("--body", "Hola {{name}}, tu pedido sale hoy.", "--sender", "Instasent"),
            100,
            100,  # "Items per request 1 - 100"
            resend_safe=True,
            transient_at_send=False,  # no per-item transient refusal in Instasent's API
        ),
    )
}


def selected_providers() -> list[str]:
    chosen = env_list("SMSCAST_SOAK_PROVIDERS")
    if chosen is None:
        return list(PROVIDERS)
    unknown = set(chosen) - set(PROVIDERS)
    if unknown:
        raise ValueError(f"SMSCAST_SOAK_PROVIDERS: unknown {sorted(unknown)}; known {list(PROVIDERS)}")
    return chosen


# Start knobs per emulator: every documented rate limit raised far above what the runs ask for (textingline's
# 5 a minute would make a 50,000-row campaign take hours), so that only the mixes that mean to throttle do.
START_KNOBS: dict[str, Any] = {"rate_limit_rps": 5000, "rate_limit_burst": 5000}
