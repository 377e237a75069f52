"""Preflight: every mistake in a campaign's set-up, found at once, before Prefect starts.

A campaign used to meet its mistakes one at a time, each after Prefect's temporary server had started (15–30
s): no endpoint, then no key, then a sender the provider needs, then a missing column. `preflight(spec)` looks
for all of them in one pass, without importing Prefect, and returns them as `Problem`s (what is wrong, and the
one thing to do about it):

* provider: the adapter exists; its endpoint (--base-url, SMSCAST_<PROVIDER>_BASE_URL or the adapter's default)
  is there and is a plain http(s) URL; its key (SMSCAST_<PROVIDER>_API_KEY or the Secret block) is there,
  except for a dry run, which never needs one (the campaign flow builds the provider with `require_key=False`;
  it does need the endpoint, so the preflight asks for it too); the campaign suits the provider (its own
  `check_spec`, then `validate_spec`: sender required or refused, body or template, its own rules);
* source (smscast/preflight_source.py): reachable, readable, a known format, not empty, and its columns by the
  loader's own rules: phone (after --column), body or --body, the template's variables;
* results (smscast/preflight_env.py): the location can be written (a probe file written and removed under
  `<results>/_work/`; an S3 bucket must exist), except for a dry run, which writes nothing; and a campaign
  id used before under it was recorded with the same content.

Local checks take milliseconds; network ones (S3, PostgreSQL, a Prefect API for the Secret block) use short
timeouts and no retries. A Secret block that cannot be looked up (an API that does not answer) is not a
problem: the run will look again. Messages never include a secret: keys are named by their variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import typer
from pydantic import ValidationError

from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError, SmscastError
from smscast.settings import ProviderSettings, Secret, check_base_url, env_prefix

__all__ = [
    "Findings",
    "Problem",
    "describe_validation_error",
    "preflight",
    "refuse_invalid_spec",
    "require_ready",
    "require_retry_ready",
    "run_preflight",
]

EXIT_PROBLEMS = 2  # the command line's usage-error status: nothing was started


@dataclass(frozen=True)
class Problem:
    """One mistake: `what` is wrong and the `fix`. `check` groups them: parameters, provider, credentials,
    campaign, source, results."""

    check: str
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.what} — {self.fix}"


@dataclass
class Findings:
    """The problems, and what was checked (for `smscast doctor`'s "ok")."""

    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def add(self, check: str, what: str, fix: str) -> None:
        self.problems.append(Problem(check, what, fix))

    def add_error(self, check: str, exc: Exception, fallback_fix: str) -> None:
        self.problems.append(problem_from(check, str(exc), fallback_fix))


# The first word of the part of an error message that says what to do (our messages are "what: do this").
_FIX_VERBS = (
    "pass|set|drop|give|use|remove|add|map|put|check|rename|create|export|save|re-save|quote|move|make|"
    "choose|select|alias|repeat|fix|correct|delete"
)
_FIX_START = re.compile(rf"(?::|;|\.|,)\s+(?=(?:{_FIX_VERBS})\b)", re.IGNORECASE)


def problem_from(check: str, message: str, fallback_fix: str) -> Problem:
    """A Problem from one of smscast's error messages, split where it starts saying what to do."""
    message = " ".join(message.split())
    match = _FIX_START.search(message)
    if match is None:
        return Problem(check, message.rstrip("."), fallback_fix)
    return Problem(check, message[: match.start()].rstrip("."), message[match.end() :].rstrip("."))


def preflight(spec: CampaignSpec, *, check_source: bool = True, check_results: bool = True) -> list[Problem]:
    """Every problem that would stop this campaign, found at once and without Prefect (empty: none)."""
    return run_preflight(spec, check_source=check_source, check_results=check_results).problems


def run_preflight(
    spec: CampaignSpec, *, check_source: bool = True, check_results: bool = True, same_campaign: bool = True
) -> Findings:
    """`preflight`, with what was checked. `same_campaign`: compare with the campaign recorded under the same
    id (off for a retry, which sends the recorded campaign itself, perhaps through another provider)."""
    found = Findings()
    _check_provider(spec, found)
    if spec.fallback is not None:  # checked as the provider is, under its own settings, named as the fallback
        from smscast.provider_specs import fallback_spec

        of_fallback = Findings()
        _check_provider(fallback_spec(spec), of_fallback)
        found.problems += [
            replace(p, check="fallback", what=f"--fallback: {p.what}") for p in of_fallback.problems
        ]
        found.checked += [f"fallback {line}" for line in of_fallback.checked]
    if check_source:
        from smscast.preflight_source import check_source as source_checks

        source_checks(spec, found)
        from smscast.tasks.suppression import list_spec

        for src in spec.suppress:  # each opt-out list is read as a source: the same checks, named as a list
            of_list = Findings()
            source_checks(list_spec(src, query=spec.suppress_query, encoding=spec.encoding), of_list)
            for p in of_list.problems:
                found.add("suppress", "--suppress list: " + p.what.replace("recipients ", ""), p.fix)
    if check_results:
        from smscast.preflight_env import check_results as results_checks

        results_checks(spec, found, same_campaign=same_campaign)
    return found


# -- provider: endpoint, key, the provider's campaign rules ---------------------------------------------------


def _check_provider(spec: CampaignSpec, found: Findings) -> None:
    from smscast.providers.registry import provider_class

    name = spec.provider
    try:
        cls = provider_class(name)
    except ConfigError as exc:
        found.add_error("provider", exc, "choose a provider `smscast send --help` lists")
        return
    prefix = env_prefix(name)
    url_var, key_var = f"{prefix}_BASE_URL", f"{prefix}_API_KEY"
    from_env = os.environ.get(url_var, "").strip()
    url = (spec.base_url or from_env or cls.caps.default_base_url or "").strip()
    usable_url = ""
    if not url:
        hint = " (`smscast sandbox` prints the line to paste)" if name == "sandbox" else ""
        found.add(
            "provider", f"no endpoint for provider {name!r}", f"pass --base-url or export {url_var}{hint}"
        )
    else:
        try:
            check_base_url(url, name)
            usable_url = url
            origin = "--base-url" if spec.base_url else url_var if from_env else "the adapter's default"
            found.checked.append(f"endpoint of {name}: {url} ({origin})")
        except ConfigError as exc:
            found.add_error("provider", exc, f"correct --base-url or {url_var}")
    key = os.environ.get(key_var) or None
    if spec.dry_run:
        found.checked.append("credentials: not needed for a dry run")
    elif key:
        found.checked.append(f"credentials: {key_var} is set")
    else:
        _check_secret_block(name, key_var, found)
    # The provider's own rules need an instance, which needs settings: a stand-in endpoint when it is missing
    # (its problem is already reported), the key only when it is at hand (textingline checks its shape).
    settings = ProviderSettings(
        base_url=(usable_url or "https://preflight.invalid").rstrip("/"),
        api_key=Secret(key) if key else None,
    )
    provider = cls(settings)
    try:
        # The provider's own check first: where it has one, its words are the clearer (Instasent's sender
        # rule in words rather than the capabilities' pattern), then every rule through `validate_spec`.
        provider.check_spec(spec)
        provider.validate_spec(spec)
        found.checked.append(f"campaign settings: {name} accepts the sender and content")
    except ConfigError as exc:
        message = _PATTERN_NOTE.sub("", str(exc))  # a sender pattern is a regex, not words
        found.problems.append(problem_from("campaign", message, f"see docs/providers/{name}.md"))


_PATTERN_NOTE = re.compile(r" \(expected .*\)$")


def _check_secret_block(provider: str, key_var: str, found: Findings) -> None:
    from smscast.preflight_env import secret_block_state

    block = f"smscast-{provider}-api-key"
    state, where = secret_block_state(block)
    if state == "present":
        found.checked.append(f"credentials: the Prefect Secret block {block!r} ({where})")
    elif state == "unknown":
        found.checked.append(f"credentials: {key_var} is unset; the Secret block {block!r} {where}")
    else:
        hint = " (the key `smscast sandbox` prints)" if provider == "sandbox" else ""
        found.add(
            "credentials",
            f"no credentials for provider {provider!r}",
            f"export {key_var}=<key>{hint}, or create the Prefect Secret block {block!r}",
        )


# -- pydantic's errors in words ------------------------------------------------------------------------------

# What a field takes, for the errors whose own words would be a regex or a bare type.
_TAKES = {
    "campaign_id": "1–64 letters, digits, '_', '.', '-', starting with a letter or digit",
    "base_url": "a plain http(s)://host[:port][/path] URL, without user:password@, query string or fragment",
    "default_country": "an ISO region code such as GB",
}


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _words(error: Any) -> str:
    kind, ctx, name = error["type"], error.get("ctx") or {}, str(error["loc"][0]) if error["loc"] else ""
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "not a campaign setting"
    if kind == "literal_error":
        return "one of " + str(ctx.get("expected", "")).replace("'", "")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than"}
        word = bound.get(kind, "at most")
        return f"must be {word} {_number(next(iter(ctx.values()), ''))}"
    if kind.startswith("int_"):
        return "must be a whole number"
    if kind.startswith("float_"):
        return "must be a number"
    if kind.startswith("bool_"):
        return "must be true or false"
    if name in _TAKES:
        return _TAKES[name]
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":  # a pattern without words of its own: never show the regex
        return "has characters that are not allowed"
    return str(error["msg"])


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per field of a CampaignSpec's ValidationError, in words ("rate: must be greater than 0"):
    no regex, no pydantic URL, never the value given (it may be a URL with a password in it)."""
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        where = " ".join(str(part).replace("_", " ") for part in error["loc"]) or "campaign"
        line = f"{where}: {_words(error)}"
        if line not in lines:
            lines.append(line)
    return lines


# -- the command line's hooks ---------------------------------------------------------------------------------


def _refuse(headline: str, lines: list[str]) -> NoReturn:
    typer.secho(f"error: {headline}", fg=typer.colors.RED, err=True)
    for line in lines:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(EXIT_PROBLEMS)


def refuse_invalid_spec(exc: ValidationError) -> NoReturn:
    """For `smscast send`: the parameters pydantic refused, one line each, exit 2."""
    _refuse("invalid parameters:", describe_validation_error(exc))


def report_problems(problems: list[Problem], command: str, *, started: bool = True) -> NoReturn:
    """Each problem on one line (what — fix), then exit 2."""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    headline = f"{count}; smscast {command} started nothing:" if started else f"{count}:"
    _refuse(headline, [p.line() for p in problems])


def require_ready(spec: CampaignSpec) -> None:
    """For `smscast send`, before anything starts: the preflight; its problems and exit 2 if it finds any."""
    problems = preflight(spec)
    if problems:
        report_problems(problems, "send")


def retry_spec(
    campaign_id: str, results: str, *, provider: str | None, base_url: str | None
) -> CampaignSpec | Problem:
    """The spec a retry would send with (the recorded campaign and the overrides), or why there is none."""
    from smscast.results import CampaignPaths
    from smscast.tasks.manifest import load_spec

    if results.strip().lower().startswith("s3://"):  # an unreachable endpoint fails here in seconds
        from smscast.locations import split_s3
        from smscast.preflight_env import bucket_problem, quick_s3

        try:
            wrong = bucket_problem(quick_s3(), split_s3(results)[0], f"results {results}")
        except ValueError:
            wrong = Problem("results", f"no bucket in {results}", "use --results s3://bucket/prefix")
        if wrong is not None:
            return wrong
    try:
        original = load_spec(CampaignPaths(results, campaign_id))
    except (SmscastError, ValidationError, OSError, ValueError) as exc:
        return problem_from(
            "results", f"cannot read campaign {campaign_id!r} under {results}: {exc}", "check --results"
        )
    except Exception as exc:  # S3 unreachable or refused: botocore's errors
        return Problem(
            "results",
            f"cannot read campaign {campaign_id!r} under {results} ({type(exc).__name__})",
            "check --results and the AWS_* variables",
        )
    if original is None:
        return Problem(
            "results",
            f"campaign {campaign_id!r} has no recorded parameters under {results}",
            "check --campaign-id and --results (the location `smscast send` wrote to)",
        )
    overrides = {k: v for k, v in {"provider": provider, "base_url": base_url}.items() if v}
    try:
        return CampaignSpec.model_validate({**original.model_dump(), **overrides, "dry_run": False})
    except ValidationError as exc:
        return Problem(
            "parameters", "; ".join(describe_validation_error(exc)), "correct --provider / --base-url"
        )


def require_retry_ready(
    campaign_id: str,
    results: str,
    *,
    provider: str | None = None,
    base_url: str | None = None,
    command: str = "retry",
) -> None:
    """For `smscast retry` and `release`: the recorded campaign must be found, and its provider ready (the
    source is not read again: they send from the recorded plan)."""
    spec = retry_spec(campaign_id, results, provider=provider, base_url=base_url)
    if isinstance(spec, Problem):
        problems = [spec]
    else:
        problems = run_preflight(spec, check_source=False, same_campaign=False).problems
    if problems:
        report_problems(problems, command)
