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
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        deploy(args.prefect_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
