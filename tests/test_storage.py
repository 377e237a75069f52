"""smscast.storage on a local disk and on a real S3 server (SeaweedFS, started by the `seaweed` fixture)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from botocore.exceptions import ClientError
from polars.testing import assert_frame_equal

from smscast import storage

# -- URIs and settings --------------------------------------------------------------------------------------


def test_is_s3_and_split() -> None:
    assert storage.is_s3("s3://bucket/key")
    assert storage.is_s3("S3://bucket/key")
    assert not storage.is_s3("/tmp/s3://x")
    assert not storage.is_s3("file:///tmp/x")
    assert storage.split_s3("s3://bucket/a/b.parquet") == ("bucket", "a/b.parquet")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="no bucket"):
        storage.split_s3("s3:///key")


def test_file_uri_and_join(tmp_path: Path) -> None:
    assert storage.to_local_path(f"file://{tmp_path}/a%20b.csv") == tmp_path / "a b.csv"
    assert storage.to_local_path("relative/x.csv") == Path("relative/x.csv")
    assert (
        storage.join("s3://b/results/", "campaign=c", "attempt=1/") == "s3://b/results/campaign=c/attempt=1"
    )
    assert storage.join("s3://b", "k") == "s3://b/k"
    assert storage.join("/tmp/r", "x.parquet") == "/tmp/r/x.parquet"


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_storage_options_local_is_none() -> None:
    assert storage.storage_options("/tmp/x.parquet") is None
    assert storage.storage_options("file:///tmp/x.parquet") is None


def test_storage_options_from_env(clean_aws_env: pytest.MonkeyPatch) -> None:
    env = clean_aws_env
    assert storage.storage_options("s3://b/k") == {"aws_region": "us-east-1"}
    env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    env.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    env.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    env.setenv("AWS_REGION", "eu-west-2")
    assert storage.storage_options("s3://b/k") == {
        "aws_endpoint_url": "http://127.0.0.1:9000",
        "aws_access_key_id": "AKIDEXAMPLE",
        "aws_secret_access_key": "s3cr3t-value",
        "aws_region": "eu-west-2",
        "aws_allow_http": "true",
    }
    # the S3-specific endpoint wins; https does not imply allow_http
    env.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.test")
    options = storage.storage_options("s3://b/k")
    assert options is not None
    assert options["aws_endpoint_url"] == "https://s3.example.test"
    assert "aws_allow_http" not in options
    env.setenv("AWS_ALLOW_HTTP", "true")
    assert storage.storage_options("s3://b/k")["aws_allow_http"] == "true"  # type: ignore[index]


def test_redact(clean_aws_env: pytest.MonkeyPatch) -> None:
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    assert storage.redact("key AKIDEXAMPLE secret s3cr3t-value") == "key *** secret ***"


# -- local --------------------------------------------------------------------------------------------------


def test_local_bytes_round_trip_creates_parents(tmp_path: Path) -> None:
    uri = str(tmp_path / "a" / "b" / "c.bin")
    storage.put_bytes(uri, b"\x00hello\xff")
    assert storage.get_bytes(uri) == b"\x00hello\xff"
    assert storage.size(uri) == 7
    assert storage.get_range(uri, 3) == b"\x00he"
    storage.put_bytes(uri, b"second")  # overwrite
    assert storage.get_bytes(uri) == b"second"
    assert storage.get_bytes(f"file://{uri}") == b"second"


def test_local_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.get_bytes(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        storage.size(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no Parquet file"):
        storage.read_parquet(str(tmp_path / "nope"))
    assert not storage.exists(str(tmp_path / "nope"))


def test_local_parquet_round_trip(tmp_path: Path) -> None:
    df = pl.DataFrame({"phone": ["+447400900123", "07400900123"], "n": [1, 2], "body": ["hi 😀", None]})
    uri = str(tmp_path / "out" / "results.parquet")
    storage.write_parquet(df, uri)
    assert_frame_equal(storage.read_parquet(uri), df)
    assert storage.exists(uri)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.parquet"]  # no temp files left


def test_local_parquet_dataset_reads_all_parts(tmp_path: Path) -> None:
    base = tmp_path / "results" / "campaign=c1" / "attempt=1"
    storage.write_parquet(pl.DataFrame({"id": [1, 2], "status": ["a", "b"]}), str(base / "part-0.parquet"))
    storage.write_parquet(pl.DataFrame({"id": [3], "extra": ["x"]}), str(base / "part-1.parquet"))
    storage.put_bytes(str(base / "_SUCCESS.txt"), b"")  # ignored: not .parquet
    out = storage.read_parquet(str(tmp_path / "results" / "campaign=c1"))
    assert out["id"].to_list() == [1, 2, 3]
    assert out["status"].to_list() == ["a", "b", None]
    assert out["extra"].to_list() == [None, None, "x"]
    assert "campaign" not in out.columns  # no hive columns


def test_read_parquet_columns_reads_only_those_a_part_has(tmp_path: Path) -> None:
    base = tmp_path / "results"
    storage.write_parquet(
        pl.DataFrame({"id": [1, 2], "status": ["a", "b"], "body": ["x", "y"]}), str(base / "p0.parquet")
    )
    storage.write_parquet(pl.DataFrame({"id": [3], "body": ["z"]}), str(base / "p1.parquet"))
    out = storage.read_parquet(str(base), columns=["status", "id"])
    assert out.columns == ["status", "id"] and out["status"].to_list() == ["a", "b", None]
    one = storage.read_parquet(str(base / "p1.parquet"), columns=["status", "id"])
    assert one.columns == ["id"] and one["id"].to_list() == [3]


def test_records_are_zstd_and_statistics_are_optional(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    df = pl.DataFrame({"n": list(range(100))})
    storage.write_parquet(df, str(tmp_path / "with.parquet"))
    storage.write_parquet(df, str(tmp_path / "without.parquet"), statistics=False)
    with_stats = pq.ParquetFile(tmp_path / "with.parquet").metadata.row_group(0).column(0)
    without = pq.ParquetFile(tmp_path / "without.parquet").metadata.row_group(0).column(0)
    assert with_stats.compression == without.compression == "ZSTD"
    assert with_stats.statistics is not None and with_stats.statistics.has_min_max
    assert without.statistics is None or not without.statistics.has_min_max


def test_local_atomic_write_leaves_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = str(tmp_path / "data.bin")
    storage.put_bytes(uri, b"old")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.put_bytes(uri, b"new content")
    with pytest.raises(OSError, match="disk full"):
        storage.write_parquet(pl.DataFrame({"a": [1]}), uri)
    monkeypatch.undo()
    assert storage.get_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]  # the temporary files were removed


def test_local_temp_files_are_hidden_from_listing(tmp_path: Path) -> None:
    (tmp_path / ".part-0.parquet.abc.tmp").write_bytes(b"half")
    storage.put_bytes(str(tmp_path / "part-1.parquet"), b"x")
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "part-1.parquet")]


def test_local_list_files(tmp_path: Path) -> None:
    for rel in ["campaign=a/attempt=1/p1.parquet", "campaign=a/attempt=2/p0.parquet", "campaign=a/notes.txt"]:
        storage.put_bytes(str(tmp_path / rel), b"x")
    storage.put_bytes(str(tmp_path / "campaign=ab/attempt=1/p.parquet"), b"x")
    got = storage.list_files(str(tmp_path / "campaign=a"), ".parquet")
    assert got == [
        str(tmp_path / "campaign=a/attempt=1/p1.parquet"),
        str(tmp_path / "campaign=a/attempt=2/p0.parquet"),
    ]
    assert len(storage.list_files(str(tmp_path / "campaign=a"))) == 3
    assert storage.list_files(str(tmp_path / "campaign=a/notes.txt")) == [
        str(tmp_path / "campaign=a/notes.txt")
    ]
    assert storage.list_files(str(tmp_path / "nope")) == []


def test_local_exists_and_delete(tmp_path: Path) -> None:
    uri = str(tmp_path / "d" / "f.txt")
    storage.put_bytes(uri, b"x")
    assert storage.exists(uri)
    assert storage.exists(str(tmp_path / "d"))
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # idempotent
    with pytest.raises(IsADirectoryError):
        storage.delete(str(tmp_path / "d"))


# -- S3 (real SeaweedFS) ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_bytes_round_trip(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/dir/obj.bin"
    storage.put_bytes(uri, b"\x00payload\xff")
    assert storage.get_bytes(uri) == b"\x00payload\xff"
    assert storage.size(uri) == 9
    assert storage.get_range(uri, 4) == b"\x00pay"
    storage.put_bytes(uri, b"v2")
    assert storage.get_bytes(uri) == b"v2"
    with pytest.raises(FileNotFoundError):
        storage.get_bytes(f"s3://{s3_bucket}/missing")
    with pytest.raises(FileNotFoundError):
        storage.size(f"s3://{s3_bucket}/missing")


@pytest.mark.integration
def test_s3_parquet_round_trip(s3_bucket: str) -> None:
    df = pl.DataFrame({"phone": ["+447400900123", "00447400900123"], "n": [1, 2], "body": ["ünï 😀", "b"]})
    uri = f"s3://{s3_bucket}/results/one.parquet"
    storage.write_parquet(df, uri)
    assert_frame_equal(storage.read_parquet(uri), df)
    # polars itself reads it with our storage_options
    assert_frame_equal(pl.read_parquet(uri, storage_options=storage.storage_options(uri)), df)


@pytest.mark.integration
def test_s3_parquet_prefix_reads_all_parts(s3_bucket: str) -> None:
    base = f"s3://{s3_bucket}/results/campaign=c1/attempt=1"
    storage.write_parquet(pl.DataFrame({"id": [3], "s": ["c"]}), f"{base}/part-1.parquet")
    storage.write_parquet(pl.DataFrame({"id": [1, 2], "s": ["a", "b"]}), f"{base}/part-0.parquet")
    storage.write_parquet(
        pl.DataFrame({"id": [9], "s": ["z"]}), f"s3://{s3_bucket}/results/campaign=c10/p.parquet"
    )
    out = storage.read_parquet(f"s3://{s3_bucket}/results/campaign=c1")
    assert out["id"].to_list() == [1, 2, 3]
    assert out.columns == ["id", "s"]
    with pytest.raises(FileNotFoundError):
        storage.read_parquet(f"s3://{s3_bucket}/results/campaign=none")


@pytest.mark.integration
def test_s3_list_exists_delete(s3_bucket: str) -> None:
    b = f"s3://{s3_bucket}"
    for key in [
        "r/campaign=a/attempt=1/p1.parquet",
        "r/campaign=a/attempt=1/p0.parquet",
        "r/campaign=a/x.txt",
    ]:
        storage.put_bytes(f"{b}/{key}", b"x")
    storage.put_bytes(f"{b}/r/campaign=ab/p.parquet", b"x")
    assert storage.list_files(f"{b}/r/campaign=a", ".parquet") == [
        f"{b}/r/campaign=a/attempt=1/p0.parquet",
        f"{b}/r/campaign=a/attempt=1/p1.parquet",
    ]
    assert storage.list_files(f"{b}/r/campaign=a/") == [
        f"{b}/r/campaign=a/attempt=1/p0.parquet",
        f"{b}/r/campaign=a/attempt=1/p1.parquet",
        f"{b}/r/campaign=a/x.txt",
    ]
    assert storage.list_files(f"{b}/r/campaign=a/x.txt") == [f"{b}/r/campaign=a/x.txt"]
    assert len(storage.list_files(b)) == 4
    assert storage.list_files(f"{b}/nothing") == []

    assert storage.exists(f"{b}/r/campaign=a/x.txt")
    assert storage.exists(f"{b}/r/campaign=a")  # a prefix with objects under it
    assert storage.exists(b)
    assert not storage.exists(f"{b}/r/campaign=")
    assert not storage.exists(f"{b}/missing.txt")
    assert not storage.exists("s3://no-such-bucket-smscast/x")

    storage.delete(f"{b}/r/campaign=a/x.txt")
    assert not storage.exists(f"{b}/r/campaign=a/x.txt")
    storage.delete(f"{b}/r/campaign=a/x.txt")  # idempotent
    storage.delete_tree(f"{b}/r/campaign=a")
    assert storage.list_files(f"{b}/r") == [f"{b}/r/campaign=ab/p.parquet"]


@pytest.mark.integration
def test_s3_client_uses_env(s3_bucket: str) -> None:
    storage.put_bytes(f"s3://{s3_bucket}/k.txt", b"abc")
    client = storage.s3_client()
    assert client.get_object(Bucket=s3_bucket, Key="k.txt")["Body"].read() == b"abc"


@pytest.mark.integration
def test_s3_wrong_secret_is_refused_and_not_echoed(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.put_bytes(f"s3://{s3_bucket}/k.parquet", b"abc")
    wrong = "definitely-wrong-secret-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(ClientError) as boto_err:
        storage.get_bytes(f"s3://{s3_bucket}/k.parquet")
    assert "SignatureDoesNotMatch" in str(boto_err.value)
    assert wrong not in str(boto_err.value)
    with pytest.raises((ClientError, PermissionError)) as polars_err:
        storage.read_parquet(f"s3://{s3_bucket}/k.parquet")
    assert wrong not in str(polars_err.value)
    uri = f"s3://{s3_bucket}/k.parquet"
    with pytest.raises(PermissionError) as direct_err:  # polars / object_store straight, 403
        pl.read_parquet(uri, storage_options=storage.storage_options(uri))
    assert wrong not in str(direct_err.value)
