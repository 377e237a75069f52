"""Where data lives and how to reach it: local paths, file:// and s3:// URIs, and the S3 client built from the
standard AWS variables (read at call time):

* AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (an S3-compatible server such as SeaweedFS; unset = AWS itself)
* AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (optional)
* AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1
* AWS_ALLOW_HTTP=true, implied when the endpoint is http://

smscast/storage.py reads and writes through these; no credential ever goes into an exception message
(`redact`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_REGION = "us-east-1"


# -- URIs ---------------------------------------------------------------------------------------------------


def is_s3(uri: str) -> bool:
    return uri[:5].lower() == "s3://"


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"). The key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri}")
    return bucket, key


def to_local_path(uri: str | os.PathLike[str]) -> Path:
    """A local path from a plain path or a file:// URI."""
    text = os.fspath(uri)
    if text[:7].lower() == "file://":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a remote host is not supported: {text}")
        return Path(unquote(parts.path))
    if is_s3(text):
        raise ValueError(f"not a local path: {text}")
    return Path(text)


def join(base: str, *parts: str) -> str:
    """Join path segments onto a local path or an s3:// URI with `/`."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


# -- settings -----------------------------------------------------------------------------------------------


def _settings() -> tuple[str | None, str | None, str | None, str | None, str, bool]:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    allow_http = env.get("AWS_ALLOW_HTTP", "").strip().lower() in ("1", "true", "yes", "on") or bool(
        endpoint and endpoint.lower().startswith("http://")
    )
    return (
        endpoint,
        env.get("AWS_ACCESS_KEY_ID") or None,
        env.get("AWS_SECRET_ACCESS_KEY") or None,
        env.get("AWS_SESSION_TOKEN") or None,
        region,
        allow_http,
    )


def storage_options(uri: str) -> dict[str, str] | None:
    """Polars `storage_options` for an s3:// URI from the AWS environment variables; None for a local path."""
    if not is_s3(uri):
        return None
    endpoint, key_id, secret, token, region, allow_http = _settings()
    options: dict[str, str] = {"aws_region": region}
    if endpoint:
        options["aws_endpoint_url"] = endpoint
    if key_id:
        options["aws_access_key_id"] = key_id
    if secret:
        options["aws_secret_access_key"] = secret
    if token:
        options["aws_session_token"] = token
    if allow_http:
        options["aws_allow_http"] = "true"
    return options


def redact(text: str) -> str:
    """`text` with any configured AWS secret, session token or access key id replaced by ***."""
    _, key_id, secret, token, _, _ = _settings()
    for value in (secret, token, key_id):
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def s3_client(*, quick: bool = False) -> S3Client:
    """A boto3 S3 client from the same environment settings (cached per distinct settings; thread-safe).
    `quick`: one try and seconds of patience, for checks that must answer fast (smscast/preflight_env.py)."""
    return _client_for(_settings(), quick)


@functools.lru_cache(maxsize=8)
def _client_for(
    settings: tuple[str | None, str | None, str | None, str | None, str, bool], quick: bool
) -> S3Client:
    import boto3
    from botocore.config import Config

    endpoint, key_id, secret, token, region, _allow_http = settings
    patience: dict[str, Any] = (
        {"connect_timeout": 3, "read_timeout": 5, "retries": {"total_max_attempts": 1, "mode": "standard"}}
        if quick
        else {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 5, "mode": "standard"}}
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name=region,
        config=Config(s3={"addressing_style": "path"} if endpoint else {}, **patience),
    )


def error_code(exc: Exception) -> str:
    response: Any = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: Exception) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")
