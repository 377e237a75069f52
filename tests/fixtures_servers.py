"""Session fixtures that start real servers on loopback: SeaweedFS (S3) and PostgreSQL.

Imported by tests/conftest.py. Tests that use them are marked `@pytest.mark.integration`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from smscast.servers.postgres import EmbeddedPostgres
from smscast.servers.seaweedfs import SeaweedS3

# Variables that would override the ones the `seaweed` fixture sets (or point boto3 / polars elsewhere).
_SHADOWING_AWS_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")
# Seconds a server may take to start: a few on an idle machine, far more while the other test worker keeps
# both cores busy. A server that exits while starting fails at once all the same.
STARTUP_TIMEOUT = 180.0


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A started SeaweedFS S3 server; the AWS_* variables point at it for the session, then are restored."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), startup_timeout=STARTUP_TIMEOUT)
    server.start()
    env = pytest.MonkeyPatch()
    try:
        for name in _SHADOWING_AWS_VARS:
            env.delenv(name, raising=False)
        for name, value in server.env().items():
            env.setenv(name, value)
        yield server
    finally:
        env.undo()
        server.stop()


@pytest.fixture
def s3_bucket(seaweed: SeaweedS3) -> Iterator[str]:
    """A fresh, empty bucket for one test (deleted afterwards, which frees its SeaweedFS volume)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    seaweed.create_bucket(name)
    try:
        yield name
    finally:
        seaweed.delete_bucket(name)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A started PostgreSQL; `postgres.dsn` is postgresql://user:password@127.0.0.1:port/smscast."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), startup_timeout=STARTUP_TIMEOUT)
    server.start()
    try:
        yield server
    finally:
        server.stop()
