"""Set up smscast on a Prefect server in one idempotent step: the work pool, the credential blocks, the
deployments of deployments/prefect.yaml.

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    export SMSCAST_SANDBOX_API_KEY=...  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_ENDPOINT_URL=...
    python deployments/bootstrap.py            # from the repository root

Blocks are saved from the environment of this command only, so that the worker and the flow runs need no
secret in theirs:
* `smscast-<provider>-api-key` (Secret) for each SMSCAST_<PROVIDER>_API_KEY that is set: smscast/settings.py
  reads these when the variable is unset;
* `smscast-s3` (Secret holding the AWS_* variables as JSON) when AWS_ACCESS_KEY_ID is set: the deployed flows
  and `smscast watch` load it when their environment has no S3 credentials (smscast/s3_block.py). A prefect-aws
  `aws-credentials` block named `smscast-s3` is read instead if you create one.
No value is printed. Re-running updates the blocks and the deployments and leaves the work pool as it is.

Schedules: a new one starts as prefect.yaml says (the nightly one paused: its source is a placeholder until
you configure it). After that a schedule keeps the state you give it (resumed or paused in the UI or with
`prefect deployment schedule resume|pause`): `prefect deploy` would apply prefect.yaml's `active` again, so
this puts back what each schedule was before. Every paused schedule is listed, with the command that
resumes it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import UUID

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
POOL = "smscast"
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ALLOW_HTTP",
)


def _prefect(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, check=True)


def ensure_work_pool(name: str = POOL) -> bool:
    """Create the `process` work pool unless it exists (an existing one keeps its settings). True if made."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
    _prefect("work-pool", "create", name, "--type", "process")
    return True


def save_blocks() -> list[str]:
    """Secret blocks from the credentials in this environment; returns the names saved (never the values)."""
    from prefect.blocks.system import Secret as SecretBlock

    from smscast.campaign import PROVIDER_NAMES
    from smscast.settings import env_prefix

    # Typed Any: Secret's `value` is annotated as the wrapped secret types, though it takes plain values.
    Secret: Any = SecretBlock
    saved: list[str] = []
    for provider in PROVIDER_NAMES:
        key = os.environ.get(f"{env_prefix(provider)}_API_KEY")
        if key:
            name = f"smscast-{provider}-api-key"
            Secret(value=key).save(name, overwrite=True)
            saved.append(name)
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        values = {k: os.environ[k] for k in AWS_VARS if os.environ.get(k)}
        Secret(value=values).save("smscast-s3", overwrite=True)
        saved.append("smscast-s3")
    return saved


def deploy(prefect_file: Path = PREFECT_FILE) -> None:
    """`prefect deploy --all` from the repository root (the entrypoints and the recorded working directory
    are relative to it)."""
    _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))


@dataclass(frozen=True)
class ScheduleState:
    deployment: str  # flow/deployment, as the CLI names it
    deployment_id: UUID
    schedule_id: UUID
    key: str  # the schedule's slug (prefect.yaml gives each one), else the schedule itself
    active: bool
    what: str  # "cron 0 2 * * * (Europe/London)", "every 900 s"
    source: str | None  # what the schedule would send: its campaign's recipients


def _describe(schedule: Any) -> str:
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval.total_seconds():g} s"
    return str(schedule)


def schedule_states(pool: str = POOL) -> list[ScheduleState]:
    """The schedules of the deployments in the work pool, as they are on the server now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    states: list[ScheduleState] = []
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
        )
        for dep in deployments:
            flow_name = client.read_flow(dep.flow_id).name
            campaign = (dep.parameters or {}).get("campaign")
            source = (campaign.get("recipients") or {}).get("source") if isinstance(campaign, dict) else None
            for s in dep.schedules:
                states.append(
                    ScheduleState(
                        deployment=f"{flow_name}/{dep.name}",
                        deployment_id=dep.id,
                        schedule_id=s.id,
                        key=s.slug or s.schedule.model_dump_json(),
                        active=s.active,
                        what=_describe(s.schedule),
                        source=source,
                    )
                )
    return states


def keep_schedule_states(before: list[ScheduleState], after: list[ScheduleState]) -> list[ScheduleState]:
    """Put each schedule that existed before the deploy back in the state it had (resumed or paused by
    someone since it was created); returns the schedules as they are now."""
    from prefect.client.orchestration import get_client

    was = {(s.deployment_id, s.key): s.active for s in before}
    now: list[ScheduleState] = []
    with get_client(sync_client=True) as client:
        for s in after:
            active = was.get((s.deployment_id, s.key), s.active)
            if active != s.active:
                client.update_deployment_schedule(s.deployment_id, s.schedule_id, active=active)
                s = replace(s, active=active)
            now.append(s)
    return now


def paused_notice(states: list[ScheduleState]) -> list[str]:
    """What to tell about the paused schedules: each one, what it would send, how to resume it."""
    lines: list[str] = []
    for s in states:
        if s.active:
            continue
        lines.append(f"schedule of {s.deployment} ({s.what}) is PAUSED: it starts no run.")
        if s.source:
            lines.append(
                f"  It would send {s.source}. Point campaign.recipients.source in deployments/prefect.yaml "
                "at your recipients (then run this again), and resume it:"
            )
        else:
            lines.append("  Resume it:")
        lines.append(f"    prefect deployment schedule resume {s.deployment} {s.schedule_id}")
        lines.append(
            f"  or in the UI: Deployments → {s.deployment.split('/', 1)[1]} → the schedule's switch."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", default=POOL, help="work pool name (must match prefect.yaml)")
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_FILE)
    parser.add_argument("--no-blocks", action="store_true", help="do not save credential blocks")
    parser.add_argument("--no-deploy", action="store_true", help="do not (re)deploy")
    args = parser.parse_args(argv)

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: set PREFECT_API_URL to your Prefect server's API, e.g. http://127.0.0.1:4200/api")
        return 2
    sys.path.insert(0, str(ROOT))  # smscast imports when run as a script from anywhere
    made = ensure_work_pool(args.pool)
    print(f"work pool {args.pool!r}: {'created' if made else 'exists'}")
    if not args.no_blocks:
        names = save_blocks()
        print(f"blocks saved: {', '.join(names) or 'none (no credentials in this environment)'}")
    if not args.no_deploy:
        before = schedule_states(args.pool)
        deploy(args.prefect_file)
        states = keep_schedule_states(before, schedule_states(args.pool))
        for line in paused_notice(states):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
