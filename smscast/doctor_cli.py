"""`smscast doctor`: the preflight (smscast/preflight.py) alone, for a campaign as `smscast send` would take it.

A command of its own rather than `send --check-only`: it takes send's options, so that checking a campaign is
the send command line with one word changed, and it cannot send by accident (a forgotten flag). It never
imports Prefect, so it answers in about a second. Registered on the main command line by
`register(app, send)`: its options are send's, declared once.

Exit status: 0 and "ok" with what was checked; 2 and one line per problem when there is any.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer

from smscast.campaign import CampaignSpec
from smscast.preflight import report_problems, run_preflight


def check(spec: CampaignSpec) -> None:
    """Run the preflight and print its verdict: "ok" and what was checked, or the problems (exit 2)."""
    found = run_preflight(spec)
    if found.problems:
        report_problems(found.problems, "doctor", started=False)
    typer.echo(f"ok: campaign {spec.campaign_id!r} is ready to send through {spec.provider}. Checked:")
    for line in found.checked:
        typer.echo(f"  {line}")


def register(app: typer.Typer, send: Callable[..., None]) -> None:
    """Add `smscast doctor`: `send`'s own options (one declaration of them), checking instead of sending."""

    @functools.wraps(send)
    def doctor(*args: Any, **kwargs: Any) -> None:
        send(*args, check_only=True, **kwargs)

    # Typer reads the options from the signature and the annotations, resolved here in send's own module (its
    # annotations are strings naming that module's option types).
    hints = typing.get_type_hints(send, include_extras=True)
    params = [
        p.replace(annotation=hints[name])
        for name, p in inspect.signature(send).parameters.items()
        if name not in ("check_only", "check_out")
    ]
    doctor.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    doctor.__annotations__ = {p.name: p.annotation for p in params}
    doctor.__doc__ = (
        "Check a campaign before sending it: provider endpoint and key, sender, source and its columns, "
        "results location. Takes the options of `smscast send`; sends nothing, starts no Prefect server."
    )
    app.command("doctor")(doctor)
