"""`smscast doctor`: the preflight (smscast/preflight.py) alone, for a campaign as `smscast send` would take it.

A command of its own rather than `send --check-only`: it takes send's options, so that checking a campaign is
the send command line with one word changed, and it cannot send by accident (a forgotten flag). It never
imports Prefect, so it answers in about a second. Registered on the main command line by `register(app)`.

Exit status: 0 and "ok" with what was checked; 2 and one line per problem when there is any.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from smscast.campaign import PROVIDER_NAMES, CampaignSpec
from smscast.errors import SmscastError
from smscast.preflight import EXIT_PROBLEMS, refuse_invalid_spec, report_problems, run_preflight
from smscast.sources.credentials import take_password_for_this_process


def _columns(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours or not theirs:
            typer.secho(
                f"error: --column takes ours=theirs, e.g. --column phone=msisdn (got {pair!r})", err=True
            )
            raise typer.Exit(EXIT_PROBLEMS)
        out[ours.strip()] = theirs.strip()
    return out


def _source_options(**given: object) -> dict[str, object]:
    """The source options the campaign model knows, when given: --encoding and --allow-empty arrive in the
    model and in `send` separately from this command."""
    fields = CampaignSpec.model_fields
    return {k: v for k, v in given.items() if k in fields and v not in (None, False)}


def doctor(
    source: Annotated[
        str,
        typer.Argument(help="Recipients: path (CSV/Parquet/NDJSON), s3://…, postgresql://…, duckdb:///…."),
    ],
    provider: Annotated[str, typer.Option("--provider", "-p", help=f"One of: {', '.join(PROVIDER_NAMES)}.")],
    campaign_id: Annotated[str, typer.Option("--campaign-id", "-c", help="Campaign id.")],
    results: Annotated[str, typer.Option("--results", "-r", help="A directory or s3://bucket/prefix.")],
    sender: Annotated[str | None, typer.Option(help="Sender id or number.")] = None,
    body: Annotated[str | None, typer.Option(help="Message text with {{column}} placeholders.")] = None,
    template: Annotated[str | None, typer.Option(help="Provider-side template.")] = None,
    template_var: Annotated[
        list[str], typer.Option("--template-var", help="A column the provider template needs (repeat).")
    ] = [],  # noqa: B006
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Provider endpoint (else SMSCAST_<PROVIDER>_BASE_URL).")
    ] = None,
    query: Annotated[str | None, typer.Option(help="SQL for postgresql:// and duckdb:// sources.")] = None,
    column: Annotated[
        list[str], typer.Option("--column", help="Map a column: ours=theirs, e.g. phone=msisdn (repeat).")
    ] = [],  # noqa: B006
    default_country: Annotated[str | None, typer.Option(help="ISO region for national numbers.")] = None,
    language: Annotated[str | None, typer.Option(help="Default language (Postman).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per request.")] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight.")] = None,
    request_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for an answer.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check for a dry run: no key needed, nothing written.")
    ] = False,
    allow_braces: Annotated[bool, typer.Option("--allow-braces", help="As for send.")] = False,
    encoding: Annotated[str | None, typer.Option(help="Encoding of CSV and NDJSON sources (utf-8).")] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="A source with no rows is expected.")
    ] = False,
    # Accepted so that a send command line checks unchanged; it has no bearing on readiness.
    wait_for_lock: Annotated[bool, typer.Option("--wait-for-lock", hidden=True)] = False,
) -> None:
    """Check a campaign before sending it: provider endpoint and key, sender, source and its columns, results
    location. Takes the options of `smscast send`; sends nothing, starts no Prefect server."""
    try:
        source = take_password_for_this_process(source)
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
            )
            | _source_options(encoding=encoding, allow_empty=allow_empty)
        )
    except ValidationError as exc:
        refuse_invalid_spec(exc)
    except SmscastError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_PROBLEMS) from None
    found = run_preflight(spec)
    if found.problems:
        report_problems(found.problems, "doctor", started=False)
    typer.echo(f"ok: campaign {spec.campaign_id!r} is ready to send through {spec.provider}. Checked:")
    for line in found.checked:
        typer.echo(f"  {line}")


def register(app: typer.Typer) -> None:
    """Add `smscast doctor` to the command line."""
    app.command("doctor")(doctor)
