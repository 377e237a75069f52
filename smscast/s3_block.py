"""S3 settings from a Prefect block, for processes whose environment names no S3 credentials: the deployed
flows (flows/deployed.py) and `smscast watch` (smscast/watch.py)."""

from __future__ import annotations

import os
from typing import Any

from smscast.errors import ConfigError

__all__ = ["S3_BLOCK", "s3_env_from_blocks", "use_s3_block"]

S3_BLOCK = "smscast-s3"


def _aws_credentials_env(data: dict[str, Any]) -> dict[str, str]:
    """AWS_* variables from the fields of a prefect-aws `AwsCredentials` block document."""
    params = data.get("aws_client_parameters") or {}
    pairs = {
        "AWS_ACCESS_KEY_ID": data.get("aws_access_key_id"),
        "AWS_SECRET_ACCESS_KEY": data.get("aws_secret_access_key"),
        "AWS_SESSION_TOKEN": data.get("aws_session_token"),
        "AWS_REGION": data.get("region_name"),
        "AWS_DEFAULT_REGION": data.get("region_name"),
        "AWS_ENDPOINT_URL": params.get("endpoint_url"),
    }
    return {k: str(v) for k, v in pairs.items() if v}


def s3_env_from_blocks(name: str = S3_BLOCK) -> dict[str, str]:
    """S3 settings as AWS_* variables from a Prefect block named `name`: a prefect-aws `aws-credentials`
    block if one exists (readable without prefect-aws installed), else a Secret block whose value is a JSON
    object of AWS_* variables. {} when there is neither, or no API to ask."""
    try:
        from prefect.blocks.system import Secret
        from prefect.client.orchestration import get_client
    except ImportError:  # pragma: no cover - prefect is a dependency
        return {}
    try:
        with get_client(sync_client=True) as client:
            doc = client.read_block_document_by_name(name, "aws-credentials", include_secrets=True)
        return _aws_credentials_env(dict(doc.data))
    except Exception:
        pass
    try:
        block: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
        value = block.get()
    except Exception:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"the Secret block {name!r} must hold a JSON object of AWS_* variables")
    return {str(k): str(v) for k, v in value.items() if str(k).startswith("AWS_") and v is not None}


def use_s3_block(name: str | None = None) -> bool:
    """Put the S3 block's settings into this process's environment, unless the environment already names
    S3 credentials (an operator's explicit variables win). True when a block was applied."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return False
    values = s3_env_from_blocks(name or os.environ.get("SMSCAST_S3_BLOCK") or S3_BLOCK)
    if values.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        values.setdefault("AWS_ALLOW_HTTP", "true")
    os.environ.update(values)
    return bool(values)
