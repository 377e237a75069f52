"""One small I/O layer for local paths and s3:// URIs (which URI is where, and the S3 client built from the
AWS variables: smscast/locations.py).

Paths are "directories" for `list_files`, `read_parquet` and `exists`: `s3://b/results/campaign=a` covers
`s3://b/results/campaign=a/...` but not `s3://b/results/campaign=ab/...`, the same as on a local disk.

Local writes are atomic (a hidden temporary file in the same directory, fsync, rename); S3 writes are one
PUT, which S3 makes visible all at once. Polars reads s3:// itself with `storage_options`; writes go through
boto3 so that a Parquet file is a single PUT. No credential ever goes into an exception message (`redact`).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import polars.selectors as cs

from smscast.locations import (
    error_code,
    is_not_found,
    is_s3,
    join,
    redact,
    s3_client,
    s3_uri,
    split_s3,
    storage_options,
    to_local_path,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

__all__ = [
    "delete",
    "delete_tree",
    "exists",
    "get_bytes",
    "get_range",
    "is_s3",
    "join",
    "list_files",
    "put_bytes",
    "read_parquet",
    "redact",
    "s3_client",
    "size",
    "split_s3",
    "storage_options",
    "to_local_path",
    "write_parquet",
]

# -- Parquet ------------------------------------------------------------------------------------------------


def read_parquet(uri: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """One Parquet file, or every `*.parquet` under a directory / prefix (parts concatenated in name order;
    columns missing from some parts come out null). FileNotFoundError when there is nothing to read.
    `columns`: read only these (those a file lacks are left out of it), which skips decoding the rest."""
    files = _parquet_files(uri)
    options = storage_options(uri)
    frames = [pl.scan_parquet(f, storage_options=options, hive_partitioning=False, glob=False) for f in files]
    if columns is not None:
        frames = [f.select(cs.by_name(*columns, require_all=False)) for f in frames]
    if len(frames) == 1:
        return frames[0].collect()
    return pl.concat(frames, how="diagonal_relaxed").collect()


def _parquet_files(uri: str) -> list[str]:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if key and not key.endswith("/") and _s3_head(bucket, key) is not None:
            return [uri]
    else:
        path = to_local_path(uri)
        if path.is_file():
            return [str(path)]
    files = list_files(uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"no Parquet file at {uri}")
    return files


def parquet_bytes(df: pl.DataFrame, *, statistics: bool = True) -> bytes:
    """`df` as a Parquet file in memory, the way every record smscast writes is encoded. zstd at its fastest
    level: on results-shaped frames it is as small as the default level (within 2 %) for about two thirds of
    the CPU, and a million-row campaign writes its rows three times (plan, journal, results). `statistics`
    (per-column min/max) serve readers that filter on a column, such as the retry's status filter; files only
    ever read whole by smscast can go without."""
    buffer = io.BytesIO()
    df.write_parquet(buffer, compression="zstd", compression_level=1, statistics=statistics)
    return buffer.getvalue()


def write_parquet(df: pl.DataFrame, uri: str, *, statistics: bool = True) -> None:
    """Write `df` as one Parquet file (`parquet_bytes`): atomically on a local disk, with a single PUT on S3."""
    put_bytes(uri, parquet_bytes(df, statistics=statistics))


# -- bytes --------------------------------------------------------------------------------------------------


def put_bytes(uri: str, data: bytes) -> None:
    """Write `data`: atomically on a local disk (parent directories created), with a single PUT on S3."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if not key or key.endswith("/"):
            raise ValueError(f"not an object key: {uri}")
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return

    def _write(tmp: Path) -> None:
        tmp.write_bytes(data)

    _atomic_write(to_local_path(uri), _write)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` into a hidden temporary file next to `path`, fsync it, rename it over `path`, then fsync
    the folder, so that the rename too survives a crash of the machine (not only of the process): a receiver
    that acknowledges a report once it is written (smscast/dlr) relies on it. Readers see the old file or the
    new one, never half of one; list_files never lists the temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of a local folder (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def get_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            if is_not_found(exc):
                raise FileNotFoundError(f"no such object: {uri}") from None
            raise
    return to_local_path(uri).read_bytes()


def get_range(uri: str, length: int) -> bytes:
    """The first `length` bytes (fewer if the file is shorter)."""
    if length <= 0:
        return b""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            resp = s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")
            return resp["Body"].read()[:length]
        except Exception as exc:
            if is_not_found(exc):
                raise FileNotFoundError(f"no such object: {uri}") from None
            if error_code(exc) == "InvalidRange":  # an empty object
                return b""
            raise
    with to_local_path(uri).open("rb") as fh:
        return fh.read(length)


def size(uri: str) -> int:
    """Size in bytes of a file / object; FileNotFoundError when it does not exist."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        found = _s3_head(bucket, key) if key else None
        if found is None:
            raise FileNotFoundError(f"no such object: {uri}")
        return found
    path = to_local_path(uri)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {uri}")
    return path.stat().st_size


def _s3_head(bucket: str, key: str) -> int | None:
    try:
        return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


# -- listing, existence, deletion ---------------------------------------------------------------------------


def exists(uri: str) -> bool:
    """A file/object, or a directory/prefix with at least one object under it (or a bucket)."""
    if not is_s3(uri):
        return to_local_path(uri).exists()
    bucket, key = split_s3(uri)
    client = s3_client()
    if not key:
        try:
            client.head_bucket(Bucket=bucket)
            return True
        except Exception as exc:
            if is_not_found(exc):
                return False
            raise
    if not key.endswith("/") and _s3_head(bucket, key) is not None:
        return True
    try:
        resp = client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise
    return bool(resp.get("KeyCount") or resp.get("Contents"))


def list_files(prefix_uri: str, suffix: str = "") -> list[str]:
    """Full URIs of the files under a directory / prefix (recursively) whose names end with `suffix`, sorted.
    A file itself lists as [file]. Hidden files (leading dot, e.g. our temporary files) are left out."""
    if is_s3(prefix_uri):
        return _list_s3(prefix_uri, suffix)
    root = to_local_path(prefix_uri)
    if root.is_file():
        return [str(root)] if root.name.endswith(suffix) else []
    if not root.is_dir():
        return []
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.endswith(suffix):
                out.append(str(Path(dirpath) / name))
    return sorted(out)


def _list_s3(prefix_uri: str, suffix: str) -> list[str]:
    bucket, key = split_s3(prefix_uri)
    client = s3_client()
    prefix = key if (not key or key.endswith("/")) else key + "/"
    out: list[str] = []
    if key and not key.endswith("/") and _s3_head(bucket, key) is not None:
        out.append(s3_uri(bucket, key))
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj.get("Key", "")
                base = name.rsplit("/", 1)[-1]
                if base and not base.startswith(".") and name.endswith(suffix):
                    out.append(s3_uri(bucket, name))
    except Exception as exc:
        if is_not_found(exc):
            return []
        raise
    return sorted({f for f in out if f.endswith(suffix)})


def delete(uri: str) -> None:
    """Delete one file / object. Missing is fine (idempotent). A local directory raises IsADirectoryError."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if not key:
            raise ValueError(f"refusing to delete a whole bucket: {uri}")
        try:
            s3_client().delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if not is_not_found(exc):
                raise
        return
    path = to_local_path(uri)
    if path.is_dir():
        raise IsADirectoryError(f"delete() removes files, not directories: {uri}")
    path.unlink(missing_ok=True)


def delete_tree(uri: str) -> None:
    """Delete everything under a directory / prefix (and the directory itself locally)."""
    if is_s3(uri):
        bucket, _ = split_s3(uri)
        client = s3_client()
        keys = [split_s3(f)[1] for f in _list_s3(uri, "")]
        for start in range(0, len(keys), 1000):
            chunk: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        return
    path = to_local_path(uri)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---- compare-and-swap, for the campaign lock -------------------------------------------------------------
# S3 conditional writes (If-None-Match: *, If-Match: <etag>) — SeaweedFS honours both. On a local disk the
# same semantics come from an flock'd read-compare-write, with the content's digest standing in for an ETag.


def get_versioned(uri: str) -> tuple[bytes, str] | None:
    """The object's bytes and a version tag to pass to `put_if`; None when it does not exist."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            obj = s3_client().get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        return obj["Body"].read(), str(obj["ETag"])
    path = to_local_path(uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data, _digest(data)


def put_if(uri: str, data: bytes, version: str | None) -> str | None:
    """Write only if the object is still at `version` (None: only if it does not exist). Returns the new
    version when written, None when the condition failed."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        condition: dict[str, str] = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            response = s3_client().put_object(Bucket=bucket, Key=key, Body=data, **condition)  # type: ignore[arg-type]
        except Exception as exc:
            if error_code(exc) in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}:
                return None
            raise
        return str(response["ETag"])
    import fcntl

    path = to_local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.flock"), "a+b") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            current = path.read_bytes() if path.exists() else None
            if (version is None and current is not None) or (
                version is not None and (current is None or _digest(current) != version)
            ):
                return None
            _atomic_write(path, lambda tmp: tmp.write_bytes(data))
            return _digest(data)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def delete_if(uri: str, version: str) -> bool:
    """Delete only if still at `version` (a lock is released only by its holder)."""
    current = get_versioned(uri)
    if current is None or current[1] != version:
        return False
    delete(uri)
    return True


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def write_parquet_once(df: pl.DataFrame, uri: str) -> bool:
    """Write `df` only if nothing is at `uri` yet (a conditional create). False if something already was:
    a record written by another run is never overwritten."""
    return put_if(uri, parquet_bytes(df), None) is not None
