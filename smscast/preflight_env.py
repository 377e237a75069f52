"""What the preflight (smscast/preflight.py) asks of the world around a campaign, quickly and without Prefect:
an S3 client that fails fast, whether a bucket is there, whether the results location can be written (and
holds no other campaign under the same id), and whether a Prefect Secret block exists.

The run's own S3 client retries a connection five times with a 5 s timeout, which is right for moving data
and wrong for a check meant to answer in a second: the preflight's client tries once, with short timeouts.

A Secret block is looked up without importing Prefect (seconds) or starting its temporary server (15–30 s):
over HTTP when a Prefect API is known (PREFECT_API_URL, the active profile, or the server `smscast server
start` left running), else in the SQLite database Prefect's temporary server would open, read-only.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote, urlsplit

from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.preflight import Findings, Problem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BlockState = Literal["present", "absent", "unknown"]
API_TIMEOUT = 3.0


def quick_s3() -> S3Client:
    """An S3 client from the AWS_* variables, like the run's, that tries once and gives up in seconds."""
    from smscast.locations import s3_client

    return s3_client(quick=True)


def bucket_problem(client: S3Client, bucket: str, label: str) -> Problem | None:
    """Why `bucket` cannot be used (missing, refused, unreachable, no credentials), or None when it is there."""
    from smscast.locations import error_code, is_not_found

    try:
        client.head_bucket(Bucket=bucket)
        return None
    except Exception as exc:
        code, kind = error_code(exc), type(exc).__name__
        if is_not_found(exc):
            return Problem(
                "s3",
                f"the S3 bucket {bucket!r} does not exist ({label})",
                "create it or correct the s3:// URI",
            )
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return Problem(
                "s3",
                f"access to the S3 bucket {bucket!r} was denied ({label})",
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions",
            )
        if kind == "NoCredentialsError":
            return Problem(
                "s3", f"no AWS credentials for {label}", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if kind in (
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ConnectionClosedError",
        ):
            return Problem("s3", f"cannot reach the S3 endpoint for {label}", "check AWS_ENDPOINT_URL")
        return Problem(
            "s3", f"cannot use the S3 bucket {bucket!r} ({label}: {code or kind})", "check the URI"
        )


# -- the results location: writable, the same campaign -------------------------------------------------------


def check_results(spec: CampaignSpec, found: Findings, *, same_campaign: bool) -> None:
    from smscast import storage

    results = spec.results.strip()
    if not results:
        found.add("results", "no results location", "pass --results DIR or --results s3://bucket/prefix")
        return
    if storage.is_s3(results):
        reachable = _check_s3_results(results, spec.dry_run, found)
    else:
        reachable = _check_local_results(results, spec.dry_run, found)
    if reachable and same_campaign:
        _check_same_campaign(spec, found)


def _check_local_results(results: str, dry_run: bool, found: Findings) -> bool:
    from smscast.storage import to_local_path

    try:
        root = to_local_path(results)
    except ValueError as exc:
        found.add_error("results", exc, "use a plain directory path or file:///absolute/path")
        return False
    if dry_run:
        found.checked.append(f"results {results}: not written by a dry run")
        return root.is_dir()
    work = root / "_work"
    missing: list[Path] = []
    existing = work
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        found.add(
            "results",
            f"cannot write results under {results}: {existing} is a file, not a directory",
            "choose another --results directory",
        )
        return False
    created: list[Path] = []
    try:
        for directory in reversed(missing):
            directory.mkdir()
            created.append(directory)
        probe = work / f".preflight-{secrets.token_hex(6)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        found.add(
            "results",
            f"cannot write results under {results} ({reason})",
            "choose a directory you can write to, or fix its permissions",
        )
        return False
    finally:
        for directory in reversed(created):  # leave no trace of the probe
            with contextlib.suppress(OSError):
                directory.rmdir()
    found.checked.append(f"results {results}: writable (a probe file written and removed)")
    return True


def _check_s3_results(results: str, dry_run: bool, found: Findings) -> bool:
    from smscast.locations import split_s3

    try:
        bucket, key = split_s3(results)
    except ValueError:
        found.add("results", f"no bucket in {results}", "use --results s3://bucket/prefix")
        return False
    client = quick_s3()
    wrong = bucket_problem(client, bucket, f"results {results}")
    if wrong is not None:
        found.problems.append(wrong)
        return False
    if dry_run:
        found.checked.append(f"results {results}: the bucket exists (a dry run writes nothing)")
        return True
    probe = "/".join(p for p in (key.strip("/"), "_work", f".preflight-{secrets.token_hex(6)}") if p)
    try:
        client.put_object(Bucket=bucket, Key=probe, Body=b"")
    except Exception as exc:
        from smscast.locations import error_code

        found.add(
            "results",
            f"cannot write under {results} ({error_code(exc) or type(exc).__name__})",
            "check that these AWS credentials may write to the bucket",
        )
        return False
    with contextlib.suppress(Exception):  # a probe left behind under _work/ harms nothing
        client.delete_object(Bucket=bucket, Key=probe)
    found.checked.append(f"results {results}: the bucket exists and a probe object was written and removed")
    return True


def _check_same_campaign(spec: CampaignSpec, found: Findings) -> None:
    from smscast.tasks.manifest import check_same_campaign

    try:
        check_same_campaign(spec)
    except ConfigError as exc:
        found.add_error("results", exc, f"give the new campaign its own --campaign-id ({spec.campaign_id}-2)")
    except Exception as exc:  # a results location that cannot be read is reported by the run itself
        found.checked.append(
            f"campaign {spec.campaign_id!r}: its record could not be read ({type(exc).__name__})"
        )


# -- Prefect Secret blocks ----------------------------------------------------------------------------------


def prefect_api_url() -> str | None:
    """The Prefect API a command would use, if one is known without starting anything (local_server.py)."""
    from smscast.local_server import _profile_api_url, check_local_server, smscast_home

    url = os.environ.get("PREFECT_API_URL") or _profile_api_url(os.environ)
    if url:
        return url
    status, state = check_local_server(smscast_home(), wait=1.0)
    return state.api_url if status == "running" and state is not None else None


def _api_headers() -> dict[str, str]:
    if key := os.environ.get("PREFECT_API_KEY"):
        return {"Authorization": f"Bearer {key}"}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {}


def _block_url(api: str, name: str) -> str:
    return f"{api.rstrip('/')}/block_types/slug/secret/block_documents/name/{quote(name, safe='')}"


def secret_block_state(name: str) -> tuple[BlockState, str]:
    """Whether the Prefect Secret block `name` exists, and where that was seen (for `smscast doctor`)."""
    api = prefect_api_url()
    if api is None:
        return _local_database_state(name)
    import httpx

    try:
        response = httpx.get(_block_url(api, name), headers=_api_headers(), timeout=API_TIMEOUT)
    except httpx.HTTPError as exc:
        return "unknown", f"could not be looked up (the Prefect API did not answer: {type(exc).__name__})"
    if response.status_code == 404:
        return "absent", "on the Prefect API"
    if response.status_code == 200:
        return "present", "on the Prefect API"
    return "unknown", f"could not be looked up (the Prefect API answered HTTP {response.status_code})"


def _local_database_state(name: str) -> tuple[BlockState, str]:
    """The block in the SQLite database Prefect's temporary server would use (PREFECT_HOME/prefect.db)."""
    url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_API_DATABASE_CONNECTION_URL"
    )
    if url and not url.startswith("sqlite"):
        return "unknown", "could not be looked up (Prefect's database is not SQLite)"
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(unquote(urlsplit(url).path)) if url else home / "prefect.db"
    if not path.is_file():
        return "absent", "(no Prefect server is running and Prefect's local database does not exist)"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
            row = db.execute(
                "SELECT 1 FROM block_document d JOIN block_type t ON d.block_type_id = t.id "
                "WHERE t.slug = 'secret' AND d.name = ? LIMIT 1",
                (name,),
            ).fetchone()
    except sqlite3.Error as exc:
        return "unknown", f"could not be looked up in {path} ({type(exc).__name__})"
    return ("present", f"in {path}") if row else ("absent", f"in Prefect's local database {path}")


def secret_block_value(name: str) -> str | None:
    """A Secret block's value over the Prefect API, for the PostgreSQL password of a deployment; None when
    there is no API or no such block (libpq then tries ~/.pgpass)."""
    api = prefect_api_url()
    if api is None:
        return None
    import httpx

    try:
        response = httpx.get(
            _block_url(api, name),
            params={"include_secrets": "true"},
            headers=_api_headers(),
            timeout=API_TIMEOUT,
        )
        data: Any = response.json().get("data") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    value = data.get("value") if isinstance(data, dict) else None
    return str(value) if value else None
