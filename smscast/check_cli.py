"""`smscast check`: what a campaign would make of every row of its source, without sending anything.

It loads, validates, applies the contact policy and plans exactly as the campaign flow does (flows/campaign.py
`choose_rows`: the same step functions, called directly), then writes every input row, in input order, with
the status it would have, to `--out` (`.parquet` or `.csv`, a local path or s3://). Data teams run it against
an export before a campaign. It never imports Prefect, so it answers in about a second for small inputs.

Columns of the file, in this order:

* `row_index` (0-based position in the source), `status` (`ready`: the campaign would send it; `invalid`,
  `suppressed`, `held`), `error_code` (`;`-joined) and `error_message`;
* `phone` (normalised, E.164 when valid), `country` (ISO), `number_type`, `encoding`, `segments`, `chars`,
  `release_at` (UTC; held rows only), `recipient_id`, `body` (the message as it would be sent: rendered from
  --body, or the source's; null for provider-side templates), and `cost` with --prices (price × segments);
* then the source's own columns as the loader read them: the phone as written is `phone_raw`; columns mapped
  with --column carry our names. Batch ids and idempotency keys are left out: they name the check's own plan,
  not the campaign's.

Options are `smscast send`'s, declared once (smscast/cli.py): `register(app, send)` adds the command as `send`
with the hidden `--check-out FILE` (the way `smscast doctor` is send with `--check-only`), so a send command
line with `send` changed to `check` and `--out` added works. `--campaign-id` and `--results` are optional here:
with `--results`, the managed opt-out list and the messages already sent under it (the frequency cap) apply
as they would to a campaign sending there; nothing is written to it. Options that only change how a campaign
sends (rate, runner, circuit breaker, fallback, endpoint) are accepted and hidden from the help.

Exit status: 0 with a summary (counts by status, top reasons, segments, cost, time per step); 2 and one line
per problem for a set-up mistake (the preflight's source, sender and content checks, smscast/preflight.py,
and --out); 1 for an error while reading the source.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import json
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from smscast.campaign import CampaignSpec
from smscast.errors import SmscastError
from smscast.preflight import Problem, report_problems

if TYPE_CHECKING:
    import polars as pl

__all__ = ["CHECK_STATUSES", "NO_RESULTS", "READY", "CheckOutOpt", "register", "run_check"]

READY = "ready"
CHECK_STATUSES = (READY, "invalid", "suppressed", "held")
# The campaign id when none is given: it only names the check's own plan, which is not written.
CHECK_CAMPAIGN = "check"
# `--results` not given. The spec needs a location: the policy then reads an empty temporary one.
NO_RESULTS = "<no results location>"
_FORMATS = (".parquet", ".csv")
TOP_REASONS = 10

# For send's signature (smscast/cli.py): the file `smscast check` writes; set, send checks instead of sending.
CheckOutOpt = Annotated[str | None, typer.Option("--check-out", hidden=True)]

_OutOpt = Annotated[
    str,
    typer.Option(
        "--out", "-o", help="Where to write every row with its status: FILE.parquet or FILE.csv (or s3://…)."
    ),
]
_CampaignOpt = Annotated[
    str,
    typer.Option(
        "--campaign-id",
        "-c",
        help="The campaign to check as: with --results, its own earlier messages are not counted against "
        "--max-per-recipient.",
    ),
]
_ResultsOpt = Annotated[
    str | None,
    typer.Option(
        "--results",
        "-r",
        help="The results location the campaign would send to: its managed opt-out list and its message "
        "history (--max-per-recipient) apply. Read only.",
    ),
]
# send's options that change how a campaign sends, not what it would send to whom.
_SEND_ONLY = frozenset(
    {
        "base_url",
        "dry_run",
        "wait_for_lock",
        "rate",
        "concurrency",
        "request_timeout",
        "runner",
        "dask_address",
        "dask_workers",
        "max_failure_rate",
        "min_sample",
        "fallback",
        "fallback_sender",
    }
)
_HOOKS = ("check_only", "check_out")  # send's hidden switches: doctor's and this command's
# The preflight's groups that concern a check; the endpoint, credentials and results location do not.
_CHECKS = frozenset({"parameters", "campaign", "source", "suppress"})
# Columns of the plan that name the check's own batches: left out of the file.
_PLAN_ONLY = ("idempotency_key", "batch_seq", "batch_id", "batch_key", "shard")
_LEAD = (
    *("row_index", "status", "error_code", "error_message", "phone", "country", "number_type"),
    *("encoding", "segments", "chars", "release_at", "recipient_id", "body", "cost"),
)


def register(app: typer.Typer, send: Callable[..., None]) -> None:
    """Add `smscast check`: send's own options (one declaration of them) and `--out`, checking every row."""

    @functools.wraps(send)
    def check(*, out: str, campaign_id: str, results: str | None, **kwargs: Any) -> None:
        send(campaign_id=campaign_id, results=results or NO_RESULTS, check_out=out, **kwargs)

    # As doctor does (smscast/doctor_cli.py): send's annotations are strings naming its module's option types,
    # resolved there; check's own options replace or join them.
    hints = typing.get_type_hints(send, include_extras=True)
    own = {"campaign_id": (_CampaignOpt, CHECK_CAMPAIGN), "results": (_ResultsOpt, None)}
    keyword = inspect.Parameter.KEYWORD_ONLY
    params: list[inspect.Parameter] = []
    for name, p in inspect.signature(send).parameters.items():
        if name in _HOOKS:
            continue
        if name in own:
            hint, default = own[name]
            params.append(p.replace(annotation=hint, default=default, kind=keyword))
        else:
            hint = _hidden(hints[name]) if name in _SEND_ONLY else hints[name]
            params.append(p.replace(annotation=hint, kind=keyword))
        if name == "provider":  # --out next: the options without a default come first
            params.append(inspect.Parameter("out", keyword, annotation=_OutOpt))
    check.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    check.__annotations__ = {p.name: p.annotation for p in params}
    check.__doc__ = (
        "Load, validate, apply the contact policy and plan, sending nothing: write every row with the status "
        "it would have (ready, invalid, suppressed, held), its reasons, phone, country, number type, encoding "
        "and segments. Takes the options of `smscast send` and --out; starts no Prefect server."
    )
    app.command("check")(check)


def _hidden(hint: Any) -> Any:
    """The same option, left out of the help."""
    base, *meta = typing.get_args(hint)
    info = copy.copy(meta[0])
    info.hidden = True
    return Annotated[base, info]


# -- the check itself ---------------------------------------------------------------------------------------


def run_check(spec: CampaignSpec, out: str, *, now: datetime | None = None) -> pl.DataFrame:
    """Check `spec`'s source, write every row to `out` and print the summary; the rows written. `now` (aware)
    decides quiet hours and the frequency window: the real time unless a test gives one. A set-up mistake
    prints its problems and exits 2 (typer.Exit)."""
    # The preflight's look at credentials would ask a Prefect API for a Secret block: a check needs none.
    spec = spec.model_copy(update={"dry_run": True})
    _refuse_setup_mistakes(spec, out)
    history = spec.results != NO_RESULTS
    with _results_for(spec) as spec:
        try:
            rows, seconds = _check_rows(spec, now)
        except SmscastError as exc:  # e.g. a source that changed since the preflight looked at it
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
    started = time.perf_counter()
    _write(rows, out)
    seconds["write"] = time.perf_counter() - started
    typer.echo(_summary(rows, spec, out, seconds, history=history))
    return rows


def _refuse_setup_mistakes(spec: CampaignSpec, out: str) -> None:
    from smscast.preflight import run_preflight

    problems = [p for p in run_preflight(spec, check_results=False).problems if p.check in _CHECKS]
    if not out.lower().endswith(_FORMATS):
        problems.append(
            Problem("out", f"--out {out} is neither .parquet nor .csv", "name a .parquet or .csv file")
        )
    elif _same_file(out, spec.source):
        problems.append(Problem("out", "--out is the source itself", "name another file for --out"))
    if spec.results == NO_RESULTS and spec.max_per_recipient is not None:
        problems.append(
            Problem(
                "parameters",
                "--max-per-recipient counts the messages already sent under a results location",
                "pass --results, the location the campaign would send to",
            )
        )
    if problems:
        report_problems(problems, "check", started=False)


def _same_file(out: str, source: str) -> bool:
    if "://" in out or "://" in source:
        return out == source
    return Path(out).expanduser().resolve() == Path(source).expanduser().resolve()


@contextmanager
def _results_for(spec: CampaignSpec) -> Iterator[CampaignSpec]:
    """The spec the policy reads: without --results, an empty location (no opt-outs, no history)."""
    if spec.results != NO_RESULTS:
        yield spec
        return
    with tempfile.TemporaryDirectory(prefix="smscast-check-") as empty:
        yield spec.model_copy(update={"results": empty})


def _check_rows(spec: CampaignSpec, now: datetime | None) -> tuple[pl.DataFrame, dict[str, float]]:
    """Every row of the source with the status the campaign would give it, and the seconds of each step."""
    import polars as pl

    from smscast.providers.registry import provider_class
    from smscast.settings import ProviderSettings
    from smscast.tasks.load import load_recipients
    from smscast.tasks.plan import plan_campaign
    from smscast.tasks.policy import apply_policy
    from smscast.tasks.validate import validate_recipients

    # Nothing is sent: the adapter only lends its rules and batching, so no endpoint or key is needed.
    provider = provider_class(spec.provider)(
        ProviderSettings(base_url=spec.base_url or "https://check.invalid", api_key=None)
    )
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        seconds[name] = time.perf_counter() - started
        started = time.perf_counter()

    recipients = load_recipients(spec)
    lap("load")
    checked = validate_recipients(recipients, spec, provider.caps, provider)
    lap("validate")
    checked = apply_policy(checked, spec, now)
    lap("policy")
    rows = plan_campaign(checked, spec, provider.caps, provider).rows
    if spec.prices is not None:
        from smscast.pricing import load_prices, with_costs

        sends = pl.col("status").is_null() | (pl.col("status") == "held")
        costed = with_costs(rows, load_prices(spec.prices), spec.provider)
        rows = costed.with_columns(cost=pl.when(sends).then(pl.col("cost")))
    lap("plan")
    rows = rows.with_columns(pl.col("status").fill_null(READY))
    lead = [c for c in _LEAD if c in rows.columns]
    theirs = [c for c in recipients.columns if c not in lead and not c.startswith("_")]
    return rows.drop(_PLAN_ONLY, strict=False).select(*lead, *theirs), seconds


def _write(rows: pl.DataFrame, out: str) -> None:
    from smscast import storage

    if out.lower().endswith(".parquet"):
        storage.write_parquet(rows, out)
        return
    buf = io.BytesIO()
    _for_csv(rows).write_csv(buf)
    storage.put_bytes(out, buf.getvalue())


def _for_csv(rows: pl.DataFrame) -> pl.DataFrame:
    """CSV has no nested values: a source's lists and structs (Parquet, NDJSON) become their JSON text."""
    import polars as pl

    nested = [c for c, t in rows.schema.items() if t.is_nested()]
    prefix = {c: "{" + json.dumps(c) + ":" for c in nested}
    return rows.with_columns(
        pl.struct(c).struct.json_encode().str.strip_prefix(prefix[c]).str.strip_suffix("}").alias(c)
        for c in nested
    )


def _summary(
    rows: pl.DataFrame, spec: CampaignSpec, out: str, seconds: dict[str, float], *, history: bool
) -> str:
    import polars as pl

    from smscast.tasks.report import reason_lines

    counts = dict.fromkeys(CHECK_STATUSES, 0)
    counts.update({str(s): int(n) for s, n in rows.group_by("status").len().iter_rows()})
    reasons = (
        rows.filter(pl.col("error_code").is_not_null())
        .group_by("status", "error_code")
        .len()
        .sort("len", "status", "error_code", descending=[True, False, False])
    )
    ready = rows.filter(pl.col("status") == READY)
    lines = [
        f"Check · provider {spec.provider} · {rows.height:,} rows · nothing was sent",
        "  " + "  ".join(f"{s}: {n:,}" for s, n in counts.items()),
        f"  segments: {int(ready.get_column('segments').fill_null(0).sum()):,} ready",
    ]
    lines += reason_lines([(s, c, n) for s, c, n in reasons.iter_rows()], TOP_REASONS, out)
    held = rows.filter(pl.col("status") == "held").get_column("release_at").min()
    if isinstance(held, datetime):
        lines.append(f"  held rows: the first may go at {held:%Y-%m-%d %H:%M} UTC (smscast release)")
    if spec.prices is not None:
        lines += _cost_lines(rows, spec)
    if not history:
        lines.append("  without --results: no managed opt-out list applied")
    lines.append("  time: " + " · ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))
    lines.append(f"  rows: {out}")
    return "\n".join(lines)


def _cost_lines(rows: pl.DataFrame, spec: CampaignSpec) -> list[str]:
    import polars as pl

    from smscast.pricing import describe, estimate_for

    # As the campaign's own plan has them: null for the rows it would send.
    planned = rows.with_columns(pl.when(pl.col("status") != READY).then(pl.col("status")).alias("status"))
    found = estimate_for(planned, spec)
    if found is None:
        return []
    head, notes, table = describe(found.to_dict(), dry_run=True, over_budget=0)
    return [
        f"  cost: {head}",
        *(f"    {r[0]:<8}" + "".join(f"{c:>16}" for c in r[1:]) for r in table),
        *(f"  {n}" for n in notes),
    ]
