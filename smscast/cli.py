"""`smscast` — the command line (every command and option: docs/contracts.md)."""

from __future__ import annotations

import os
import secrets
import time

# Before Prefect is imported: there is no network here, and telemetry would only log errors.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from smscast.campaign import PROVIDER_NAMES, CampaignSpec
from smscast.check_cli import CheckOutOpt, run_check
from smscast.check_cli import register as register_check
from smscast.dlr.cli import app as dlr_app
from smscast.doctor_cli import check
from smscast.doctor_cli import register as register_doctor
from smscast.errors import SmscastError
from smscast.local_server import announce_prefect_api
from smscast.local_server import register as register_local_server
from smscast.optout import register as register_optout
from smscast.policy_options import (
    AllowCountriesOpt,
    BlockCountriesOpt,
    MaxCostOpt,
    MaxPerRecipientOpt,
    PerWindowOpt,
    PricesOpt,
    QuietHoursOpt,
    SuppressOpt,
    SuppressQueryOpt,
    policy_fields,
)
from smscast.preflight import refuse_invalid_spec, require_ready
from smscast.reconcile_cli import register as register_reconcile
from smscast.resend_cli import register as register_resend
from smscast.results_cli import register as register_results
from smscast.run_options import (
    DaskAddressOpt,
    DaskWorkersOpt,
    FallbackOpt,
    FallbackSenderOpt,
    MaxFailureRateOpt,
    MinSampleOpt,
    RunnerOpt,
    run_fields,
)
from smscast.sources.credentials import take_password_for_this_process
from smscast.watch import register as register_watch

app = typer.Typer(
    help="Bulk SMS campaigns as Prefect flows: load → validate → plan → send → persist.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ProviderOpt = Annotated[str, typer.Option("--provider", "-p", help=f"One of: {', '.join(PROVIDER_NAMES)}.")]
CampaignOpt = Annotated[
    str, typer.Option("--campaign-id", "-c", help="Campaign id; re-running it resumes, never re-sends.")
]
ResultsOpt = Annotated[
    str, typer.Option("--results", "-r", help="Results location: a directory or s3://bucket/prefix.")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="Provider endpoint (else SMSCAST_<PROVIDER>_BASE_URL).")
]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _columns(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours or not theirs:
            _fail(f"--column takes ours=theirs, e.g. --column phone=msisdn (got {pair!r})")
        out[ours.strip()] = theirs.strip()
    return out


def run_campaign(spec: CampaignSpec, *, wait_for_lock: bool = False) -> dict[str, Any]:
    announce_prefect_api()
    from smscast.flows.campaign import send_campaign

    result: dict[str, Any] = send_campaign(spec, wait_for_lock=wait_for_lock)
    return result


SEND_EXAMPLES = """Examples:

  smscast send recipients.csv -p sandbox -c spring-01 -r ./results --body "Hi {{name}}" --dry-run

  smscast send s3://crm/tonight.parquet -p robase -c promo-0612 -r s3://crm/sms-results
  --sender ACME --body "Hi {{first_name}}" --default-country GB

  smscast send "postgresql://crm@db/crm" --query "SELECT msisdn, plan FROM customers"
  --column phone=msisdn -p sent-dm -c upsell-07 -r ./results --template tmpl_upsell --template-var plan

Credentials: SMSCAST_<PROVIDER>_API_KEY (e.g. SMSCAST_SENT_DM_API_KEY), or a Prefect Secret block
smscast-<provider>-api-key.
"""


@app.command(epilog=SEND_EXAMPLES)
def send(
    source: Annotated[
        str,
        typer.Argument(help="Recipients: path (CSV/Parquet/NDJSON), s3://…, postgresql://…, duckdb:///…."),
    ],
    provider: ProviderOpt,
    campaign_id: CampaignOpt,
    results: ResultsOpt,
    sender: Annotated[str | None, typer.Option(help="Sender id or number.")] = None,
    body: Annotated[
        str | None, typer.Option(help="Message text; {{column}} placeholders are filled per row.")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Provider-side template (sent.dm id, robase name, Postman campaign).")
    ] = None,
    template_var: Annotated[
        list[str], typer.Option("--template-var", help="A column the provider template needs (repeat).")
    ] = [],  # noqa: B006
    base_url: BaseUrlOpt = None,
    query: Annotated[str | None, typer.Option(help="SQL for postgresql:// and duckdb:// sources.")] = None,
    column: Annotated[
        list[str], typer.Option("--column", help="Map a column: ours=theirs, e.g. phone=msisdn (repeat).")
    ] = [],  # noqa: B006
    default_country: Annotated[
        str | None, typer.Option(help="ISO region for national numbers, e.g. GB.")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Default language (Postman).")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Rows per request (≤ the provider's maximum).")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second (default: the provider's).")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight (default: the provider's).")
    ] = None,
    request_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for a provider's answer (default: the provider's).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, plan and count segments; send nothing.")
    ] = False,
    allow_braces: Annotated[
        bool,
        typer.Option(
            "--allow-braces",
            help="Send bodies that still hold {{…}} after rendering (else quarantined: template_unrendered).",
        ),
    ] = False,
    require_mobile: Annotated[
        bool,
        typer.Option(
            "--require-mobile",
            help="Refuse numbers that cannot receive SMS (landlines, toll-free, premium rate…: phone_not_mobile).",
        ),
    ] = False,
    encoding: Annotated[
        str,
        typer.Option(
            help="Text encoding of CSV/NDJSON sources: utf-8, latin-1, cp1252, utf-16, … (a Python codec)."
        ),
    ] = "utf-8",
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Run a campaign whose source has no rows (else an error).")
    ] = False,
    wait_for_lock: Annotated[
        bool,
        typer.Option(
            "--wait-for-lock",
            help="If another live run is sending this campaign, wait for it instead of failing.",
        ),
    ] = False,
    suppress: SuppressOpt = [],  # noqa: B006
    suppress_query: SuppressQueryOpt = None,
    max_per_recipient: MaxPerRecipientOpt = None,
    per_window: PerWindowOpt = None,
    quiet_hours: QuietHoursOpt = None,
    allow_countries: AllowCountriesOpt = None,
    block_countries: BlockCountriesOpt = None,
    prices: PricesOpt = None,
    max_cost: MaxCostOpt = None,
    runner: RunnerOpt = "threads",
    dask_address: DaskAddressOpt = None,
    dask_workers: DaskWorkersOpt = None,
    max_failure_rate: MaxFailureRateOpt = 0.5,
    min_sample: MinSampleOpt = 500,
    fallback: FallbackOpt = None,
    fallback_sender: FallbackSenderOpt = None,
    # `smscast doctor` is this command with check_only (smscast/doctor_cli.py): one declaration of the options.
    check_only: Annotated[bool, typer.Option("--check-only", hidden=True)] = False,
    # `smscast check` is this command with check_out (smscast/check_cli.py): the file it writes.
    check_out: CheckOutOpt = None,
) -> None:
    """Send a campaign. Every input row ends up in the results with a status and, if not accepted, a reason."""
    try:
        # A password in a database URI would be recorded with the campaign: it goes to this process's
        # PGPASSWORD instead, and the spec keeps the URI without it.
        source = take_password_for_this_process(source)
        # model_validate rather than the constructor: the provider name is checked against the choices here.
        spec = CampaignSpec.model_validate(
            dict(
                campaign_id=campaign_id,
                provider=provider,
                source=source,
                results=results,
                query=query,
                sender=sender,
                body=body,
                template=template,
                template_vars=tuple(template_var),
                default_country=default_country,
                columns=_columns(column),
                language=language,
                base_url=base_url,
                dry_run=dry_run,
                batch_size=batch_size,
                rate=rate,
                concurrency=concurrency,
                request_timeout=request_timeout,
                allow_braces=allow_braces,
                require_mobile=require_mobile,
                encoding=encoding,
                allow_empty=allow_empty,
                **policy_fields(
                    suppress=suppress,
                    suppress_query=suppress_query,
                    max_per_recipient=max_per_recipient,
                    per_window=per_window,
                    quiet_hours=quiet_hours,
                    allow_countries=allow_countries,
                    block_countries=block_countries,
                    prices=prices,
                    max_cost=max_cost,
                ),
                **run_fields(
                    runner=runner,
                    dask_address=dask_address,
                    dask_workers=dask_workers,
                    max_failure_rate=max_failure_rate,
                    min_sample=min_sample,
                    fallback=fallback,
                    fallback_sender=fallback_sender,
                ),
            )
        )
    except ValidationError as exc:  # one line per parameter, in words; exit 2
        refuse_invalid_spec(exc)
    except (ValueError, SmscastError) as exc:
        _fail(str(exc))
        return
    if check_out is not None:
        run_check(spec, check_out)
        return
    if check_only:
        check(spec)
        return
    require_ready(spec)  # every set-up mistake at once, exit 2, before any Prefect server starts
    try:
        # What to do about failed or unknown rows is logged by the flow itself (tasks/dispatch.py, next_steps).
        run_campaign(spec, wait_for_lock=wait_for_lock)
    except SmscastError as exc:
        _fail(str(exc))


register_resend(app)  # retry and release, listed right after send


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    host: Annotated[str, typer.Option(help="Loopback address to bind.")] = "127.0.0.1",
    undelivered_share: Annotated[
        float, typer.Option(help="Share (0-1) of accepted messages that end undelivered.")
    ] = 0.0,
    dlr_url: Annotated[
        str | None,
        typer.Option(
            help="Where delivery reports are POSTed (Instasent, sent.dm, generic); none when unset."
        ),
    ] = None,
    dlr_delay_ms: Annotated[
        float, typer.Option(help="Milliseconds from acceptance to the final delivery state.")
    ] = 0.0,
    dlr_duplicate_share: Annotated[float, typer.Option(help="Share of delivery reports posted twice.")] = 0.0,
    async_reject_share: Annotated[
        float, typer.Option(help="textingline: share of a queued job's recipients the job later fails.")
    ] = 0.0,
) -> None:
    """Serve the provider emulator (every documented provider, plus smscast's own) on loopback.

    Every provider accepts the key sandbox-key (textingline: sandbox-key:sandbox-key).
    On start it prints, for each provider, the line to paste where you send from:

    export SMSCAST_<PROVIDER>_BASE_URL=http://127.0.0.1:<port> SMSCAST_<PROVIDER>_API_KEY=<key>"""
    from smscast.sandbox.faults import KnobError
    from smscast.sandbox.server import serve

    try:
        serve(
            host=host,
            port=port,
            undelivered_share=undelivered_share,
            dlr_url=dlr_url,
            dlr_delay_ms=dlr_delay_ms,
            dlr_duplicate_share=dlr_duplicate_share,
            async_reject_share=async_reject_share,
        )
    except KnobError as exc:
        _fail(str(exc))


@app.command()
def demo(
    results: Annotated[str, typer.Option(help="Where to write the demo's results.")] = "demo-results",
    source: Annotated[
        str | None, typer.Option(help="Recipients file (default: the example shipped in examples/).")
    ] = None,
) -> None:
    """Run a demo campaign end to end: starts the sandbox, sends the example recipients, writes results."""
    from smscast.servers.sandbox import SandboxServer

    example = (
        Path(source) if source else Path(__file__).resolve().parent.parent / "examples" / "recipients.csv"
    )
    if not example.exists():
        _fail(f"example recipients not found at {example}")
    key = secrets.token_urlsafe(16)  # a throwaway credential: the demo needs none from the user
    with SandboxServer(default_key=key) as server:
        os.environ["SMSCAST_SANDBOX_API_KEY"] = key
        spec = CampaignSpec(
            campaign_id=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
            provider="sandbox",
            source=str(example),
            results=results,
            base_url=server.base_url,
            sender="SMSCAST",
            body="Hi {{name}}, your order {{order}} ships today.",
            default_country="GB",
        )
        try:
            run_campaign(spec)
        except SmscastError as exc:
            _fail(str(exc))


register_watch(app)
register_results(app)
register_doctor(app, send)
register_check(app, send)
register_optout(app)
app.add_typer(dlr_app, name="dlr")
register_reconcile(app)
register_local_server(app)  # also picks the Prefect API before the commands that need one

if __name__ == "__main__":
    app()
