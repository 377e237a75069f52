"""Which Prefect API a smscast command talks to, and `smscast server start|stop|status`.

Every flow needs a Prefect API. Without one, Prefect starts a temporary server inside each command: 15–30 s
on an idle machine (a new PREFECT_HOME first migrates its database), far more on a busy one, and its default
start timeout (20 s) then fails the command before anything is sent. So, before Prefect is imported (its
settings are read once, at import), `configure_prefect_api` picks, in this order:

1. an API the user configured: PREFECT_API_URL in the environment or in the active Prefect profile;
2. the local server `smscast server start` left running (state file under SMSCAST_HOME, default
   ~/.smscast), if its process is still the one recorded and it answers its health check;
3. Prefect's temporary server, with a start timeout generous enough for a loaded machine.

`smscast server start` runs `prefect server start` detached (its own session: it outlives the command and
the terminal), with its home and SQLite database under SMSCAST_HOME/prefect, so later starts reuse a migrated
database. The state file records its pid *and* the pid's start time: a pid reused by an unrelated process
after a reboot or a crash must never be taken for the server, nor be signalled by `stop`.

Importing this module is cheap (no Prefect import): the command line imports it on every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import io
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import typer

from smscast.servers.prefect_server import PrefectServer, PrefectServerStartError, health_status
from smscast.servers.process import process_start_time, terminate_detached_group

__all__ = [
    "PREFECT_COMMANDS",
    "TEMPORARY_START_TIMEOUT",
    "ServerState",
    "check_local_server",
    "configure_prefect_api",
    "read_state",
    "register",
    "smscast_home",
    "state_path",
]

# The commands that run flows or talk to the Prefect API; the others (sandbox, server, help) need no API.
PREFECT_COMMANDS = frozenset({"send", "retry", "release", "demo", "watch"})
# Commands that check their campaign first (smscast/preflight.py) and may stop before any flow: they say which
# server they use only when a flow is about to start (`announce_prefect_api`), never above a list of mistakes.
CHECKED_FIRST = frozenset({"send", "retry", "release"})
_notice = io.StringIO()
# Seconds Prefect may take to start its temporary server (its default, 20, is what failed). Measured on 2
# busy cores: a cold start 40-50 s, four cold starts at once about 2 min. Prefect counts only its polling
# sleeps against this, so the wall-clock bound is longer still. Prefect restarts a server whose startup
# failed (uvicorn's exit 3, e.g. two first starts migrating one database); a server that dies any other way
# makes the command wait out this timeout before it fails, the price of never failing a slow start.
TEMPORARY_START_TIMEOUT = 300
_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STATE_NAME = "prefect-server.json"

Status = Literal["running", "unhealthy", "stale", "none"]


def smscast_home(environ: MutableMapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("SMSCAST_HOME") or "~/.smscast").expanduser()


def state_path(home: Path) -> Path:
    return home / STATE_NAME


def server_dir(home: Path) -> Path:
    return home / "prefect"


@dataclass(frozen=True)
class ServerState:
    """What `smscast server start` recorded about the server it left running."""

    pid: int
    start_time: str  # servers.process.process_start_time(pid) when it was recorded
    port: int
    api_url: str
    ui: bool
    workdir: str
    started_at: float  # epoch seconds

    @property
    def url(self) -> str:
        return self.api_url.removesuffix("/api")

    @property
    def log_path(self) -> Path:
        return Path(self.workdir) / "server.log"


def read_state(home: Path) -> ServerState | None:
    try:
        raw = json.loads(state_path(home).read_text())
        return ServerState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, state: ServerState) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = state_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, state_path(home))  # atomic: a reader sees the old state or the new one, never half


@contextlib.contextmanager
def _state_lock(home: Path, *, wait: bool = True) -> Iterator[bool]:
    """Serialise start/stop (and stale-state cleanup) between smscast processes. Yields False when `wait`
    is off and another process holds the lock."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "prefect-server.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _forget_if_unchanged(home: Path, seen: ServerState | None) -> None:
    """Remove a stale state file, unless another smscast is starting or stopping a server right now (it may
    be replacing the file) or the file changed since we read it."""
    with _state_lock(home, wait=False) as locked:
        if locked and read_state(home) == seen:
            with contextlib.suppress(FileNotFoundError):
                state_path(home).unlink()


def check_local_server(home: Path, *, wait: float = 3.0) -> tuple[Status, ServerState | None]:
    """Whether the recorded server is running: its pid alive with the recorded start time, and its health
    check answering within `wait` seconds (a loaded machine can be slow to answer even a healthy server).
    A stale record (exited server, reused pid, unreadable file) is removed and reported as "stale"."""
    path = state_path(home)
    state = read_state(home)
    if state is None:
        if not path.exists():
            return "none", None
        _forget_if_unchanged(home, None)
        return "stale", None
    if process_start_time(state.pid) != state.start_time:
        _forget_if_unchanged(home, state)
        return "stale", state
    deadline = time.monotonic() + wait
    while True:
        if health_status(state.api_url, timeout=1.0) == 200:
            return "running", state
        if time.monotonic() >= deadline:
            return "unhealthy", state
        time.sleep(0.2)


def _profile_api_url(environ: MutableMapping[str, str]) -> str | None:
    """PREFECT_API_URL from the active Prefect profile, read the way Prefect reads it (its own default
    profiles, overlaid with the user's file) but without importing Prefect."""
    profiles: dict[str, dict[str, object]] = {}
    active: str | None = None
    spec = importlib.util.find_spec("prefect")  # locates the package without importing it
    defaults = Path(spec.origin).parent / "settings" / "profiles.toml" if spec and spec.origin else None
    prefect_home = Path(environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    user = Path(environ.get("PREFECT_PROFILES_PATH") or prefect_home / "profiles.toml").expanduser()
    for path in (defaults, user):
        try:
            data = tomllib.loads(path.read_text()) if path is not None else {}
        except (OSError, tomllib.TOMLDecodeError):
            continue
        for name, values in (data.get("profiles") or {}).items():
            if isinstance(values, dict):
                profiles.setdefault(name, {}).update(values)
        active = data.get("active") or active
    url = profiles.get(environ.get("PREFECT_PROFILE") or active or "ephemeral", {}).get("PREFECT_API_URL")
    return str(url) if url else None


def configure_prefect_api(
    *, environ: MutableMapping[str, str] | None = None, home: Path | None = None, err: TextIO | None = None
) -> Literal["configured", "local", "temporary"]:
    """Point this process's Prefect at an API (see the module docstring) by setting environment variables.
    Must run before Prefect is imported. Says in one stderr line which server it chose, unless the user
    configured one."""
    env = os.environ if environ is None else environ
    out = sys.stderr if err is None else err
    if env.get("PREFECT_API_URL") or _profile_api_url(env):
        return "configured"
    home = smscast_home(env) if home is None else home
    status, state = check_local_server(home)
    if status == "running" and state is not None:
        env["PREFECT_API_URL"] = state.api_url
        print(f"smscast: using the local Prefect server at {state.url}", file=out, flush=True)
        return "local"
    if status == "unhealthy" and state is not None:
        print(
            f"smscast: the local Prefect server (pid {state.pid}) is not answering at {state.url}; "
            "`smscast server status` has its log",
            file=out,
            flush=True,
        )
    env.setdefault(_TIMEOUT_SETTING, str(TEMPORARY_START_TIMEOUT))
    print(
        "smscast: starting Prefect's temporary server for this command (15–30 s, longer on a busy machine; "
        "`smscast server start` keeps one running for every command)",
        file=out,
        flush=True,
    )
    return "temporary"


# -- smscast server start | stop | status --------------------------------------------------------------------


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def start_server(home: Path, *, port: int, ui: bool, timeout: float) -> ServerState:
    """Start the local server detached and record it; return the running one if there already is one."""
    with _state_lock(home):
        status, state = check_local_server(home)
        if status == "running" and state is not None:
            _say(f"The local Prefect server is already running at {state.url} (pid {state.pid}).")
            return state
        if status == "unhealthy" and state is not None:
            _fail(
                f"the local Prefect server (pid {state.pid}) is running but not answering at {state.url}; "
                f"see {state.log_path}, or `smscast server stop` and start again"
            )
        if port and health_status(f"http://127.0.0.1:{port}/api", timeout=1.0) is not None:
            _fail(
                f"something already answers on port {port} (another Prefect server?). To use it: "
                f"export PREFECT_API_URL=http://127.0.0.1:{port}/api; or pick another --port (0 = any free one)"
            )
        workdir = server_dir(home)
        where = f"port {port}" if port else "a free port"
        _say(
            f"Starting a Prefect server on {where}, data in {workdir} "
            "(a first start migrates a new database: 15–60 s) ..."
        )
        server = PrefectServer(workdir, port=port, ui=ui, startup_timeout=timeout, progress=_say)
        try:
            server.start()
        except PrefectServerStartError as exc:
            _fail(str(exc))
        pid = server.detach()
        started = process_start_time(pid)
        if started is None:  # it exited in the instant since its health check answered
            _fail(
                f"the Prefect server exited right after starting; log {server.log_path}:\n{server.log_tail()}"
            )
        assert started is not None and server.port is not None and server.startup_seconds is not None
        state = ServerState(pid, started, server.port, server.api_url, ui, str(workdir), time.time())
        _write_state(home, state)
        _say(f"Ready in {server.startup_seconds:.0f}s.")
        return state


def stop_server(home: Path) -> bool:
    """Stop the recorded server (SIGTERM to its process group, SIGKILL after a grace period) and forget it.
    Returns whether a running server was stopped."""
    with _state_lock(home):
        state = read_state(home)
        if state is None:
            with contextlib.suppress(FileNotFoundError):
                state_path(home).unlink()
            _say("No local Prefect server is running.")
            return False
        if process_start_time(state.pid) != state.start_time:
            state_path(home).unlink()
            _say(f"The local Prefect server (pid {state.pid}) had already exited; forgot it.")
            return False
        _say(f"Stopping the local Prefect server (pid {state.pid}) ...")
        if not terminate_detached_group(state.pid, grace=15.0):
            _fail(f"process group {state.pid} is still alive after SIGKILL")
        state_path(home).unlink()
        _say("Stopped.")
        return True


def register(app: typer.Typer) -> None:
    """Add `smscast server start|stop|status`, and make the commands in PREFECT_COMMANDS choose their Prefect
    API first. Call it after those commands are defined."""
    server_app = typer.Typer(
        help="A local Prefect server that every later smscast command finds and uses by itself.",
        no_args_is_help=True,
    )

    @server_app.command("start")
    def start_command(
        port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any free port).")] = 4200,
        ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the Prefect UI too.")] = True,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for it to become healthy.")] = 600.0,
    ) -> None:
        """Start a Prefect server in the background (it keeps running after this command)."""
        state = start_server(smscast_home(), port=port, ui=ui, timeout=timeout)
        typer.echo(f"Prefect server running: {state.url}{'' if state.ui else ' (no UI)'} · pid {state.pid}")
        typer.echo("Every smscast command now uses it. For the prefect CLI in this shell:")
        typer.echo(f"  export PREFECT_API_URL={state.api_url}")
        typer.echo("`smscast server stop` stops it.")

    @server_app.command("stop")
    def stop_command() -> None:
        """Stop the server `smscast server start` started."""
        stop_server(smscast_home())

    @server_app.command("status")
    def status_command() -> None:
        """Say whether the local server is running, where, and its pid. Exit status 0 only if it is."""
        status, state = check_local_server(smscast_home())
        if os.environ.get("PREFECT_API_URL"):
            typer.echo(f"(this shell's PREFECT_API_URL={os.environ['PREFECT_API_URL']} takes precedence)")
        if status == "running" and state is not None:
            up = time.time() - state.started_at
            typer.echo(f"running: {state.url}{'' if state.ui else ' (no UI)'} · API {state.api_url}")
            typer.echo(f"pid {state.pid} · up {up / 3600:.1f} h · log {state.log_path}")
            return
        if status == "unhealthy" and state is not None:
            typer.echo(f"not answering: pid {state.pid} is alive but {state.url} does not answer")
            typer.echo(f"log {state.log_path}; `smscast server stop` then `smscast server start`")
        elif status == "stale" and state is not None:
            typer.echo(f"not running (pid {state.pid} exited; its record is removed)")
        else:
            typer.echo("not running; `smscast server start` starts one")
        raise typer.Exit(1)

    app.add_typer(server_app, name="server")

    # The API is chosen when a command's body starts: after its arguments are parsed (so `--help` and usage
    # errors neither wait for a health check nor announce a server) and before it imports Prefect. A group
    # callback would run too early: Click calls it before the subcommand has seen its arguments.
    for info in app.registered_commands:
        command = info.callback
        if command is None:
            continue
        name = info.name or command.__name__.lower().replace("_", "-")  # Typer's default command name
        if name in PREFECT_COMMANDS:
            info.callback = _choosing_prefect_api(command, name)


def _choosing_prefect_api(command: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(command)  # Typer reads the options from the wrapped signature
    def run(*args: Any, **kwargs: Any) -> Any:
        configure_prefect_api(err=_notice if name in CHECKED_FIRST else None)
        return command(*args, **kwargs)

    return run


def announce_prefect_api(err: TextIO | None = None) -> None:
    """Say which Prefect server this command uses, if `configure_prefect_api` held the line back."""
    said, _ = _notice.getvalue(), _notice.truncate(0)
    _notice.seek(0)
    if said:
        print(said, end="", file=sys.stderr if err is None else err, flush=True)
