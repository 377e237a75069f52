"""smscast/local_server.py: which Prefect API a command uses, and `smscast server start|stop|status`.

The unit tests fake the server with a tiny health endpoint; the integration test starts a real detached
`prefect server start` through the command line, as a user would, and checks that `smscast send` uses it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from smscast.local_server import (
    TEMPORARY_START_TIMEOUT,
    ServerState,
    check_local_server,
    configure_prefect_api,
    read_state,
    state_path,
    stop_server,
)
from smscast.servers.process import free_ports, group_alive, process_start_time

_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _write_state(home: Path, *, pid: int, start_time: str, port: int = 9) -> ServerState:
    state = ServerState(pid, start_time, port, f"http://127.0.0.1:{port}/api", False, str(home), 0.0)
    home.mkdir(parents=True, exist_ok=True)
    state_path(home).write_text(json.dumps(state.__dict__))
    return state


def _empty_profiles(tmp_path: Path) -> dict[str, str]:
    """An environment whose Prefect profile sets no API URL (the user's real profiles are not read)."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\n')
    return {"PREFECT_PROFILES_PATH": str(profiles)}


@pytest.fixture()
def health_server() -> Iterator[int]:
    """A loopback HTTP server whose /api/health answers 200, like a healthy Prefect server. Yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


# -- which API: unit tests ---------------------------------------------------------------------------------


def test_an_explicit_prefect_api_url_is_used_as_is(tmp_path: Path, health_server: int) -> None:
    home = tmp_path / "home"
    me = os.getpid()
    _write_state(home, pid=me, start_time=process_start_time(me) or "", port=health_server)
    env = {"PREFECT_API_URL": "http://prefect.example:4200/api", **_empty_profiles(tmp_path)}
    err = io.StringIO()
    assert configure_prefect_api(environ=env, home=home, err=err) == "configured"
    assert env["PREFECT_API_URL"] == "http://prefect.example:4200/api"  # not replaced by the live local one
    assert _TIMEOUT_SETTING not in env and err.getvalue() == ""


def test_an_api_url_in_the_active_prefect_profile_is_respected(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "http://10.0.0.5:4200/api"\n[profiles.other]\n'
    )
    env = {"PREFECT_PROFILES_PATH": str(profiles)}
    assert configure_prefect_api(environ=env, home=tmp_path / "home", err=io.StringIO()) == "configured"
    assert "PREFECT_API_URL" not in env
    # PREFECT_PROFILE picks another profile, without a URL: then smscast chooses.
    env = {"PREFECT_PROFILES_PATH": str(profiles), "PREFECT_PROFILE": "other"}
    assert configure_prefect_api(environ=env, home=tmp_path / "home", err=io.StringIO()) == "temporary"


def test_a_live_local_server_is_found_and_used(tmp_path: Path, health_server: int) -> None:
    home = tmp_path / "home"
    me = os.getpid()  # a live process with a known start time stands in for the server's
    _write_state(home, pid=me, start_time=process_start_time(me) or "", port=health_server)
    env = _empty_profiles(tmp_path)
    err = io.StringIO()
    assert configure_prefect_api(environ=env, home=home, err=err) == "local"
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{health_server}/api"
    assert (
        err.getvalue().strip()
        == f"smscast: using the local Prefect server at http://127.0.0.1:{health_server}"
    )


def test_without_a_server_the_temporary_one_gets_a_generous_timeout_and_a_message(tmp_path: Path) -> None:
    env = _empty_profiles(tmp_path)
    err = io.StringIO()
    assert configure_prefect_api(environ=env, home=tmp_path / "nothing", err=err) == "temporary"
    assert "PREFECT_API_URL" not in env
    assert env[_TIMEOUT_SETTING] == str(TEMPORARY_START_TIMEOUT) and TEMPORARY_START_TIMEOUT >= 120
    assert "starting Prefect's temporary server" in err.getvalue()
    assert "smscast server start" in err.getvalue()
    # A timeout the user chose is theirs.
    env = {**_empty_profiles(tmp_path), _TIMEOUT_SETTING: "45"}
    configure_prefect_api(environ=env, home=tmp_path / "nothing", err=io.StringIO())
    assert env[_TIMEOUT_SETTING] == "45"


def test_the_state_of_an_exited_server_is_ignored_and_removed(tmp_path: Path, health_server: int) -> None:
    home = tmp_path / "home"
    # Even with something healthy on the recorded port: the recorded process is gone, so it is not ours.
    state = _write_state(home, pid=_dead_pid(), start_time="12345", port=health_server)
    assert check_local_server(home) == ("stale", state)
    assert not state_path(home).exists()
    env = _empty_profiles(tmp_path)
    assert configure_prefect_api(environ=env, home=home, err=io.StringIO()) == "temporary"
    assert "PREFECT_API_URL" not in env


def test_a_reused_pid_is_neither_used_nor_signalled(tmp_path: Path, health_server: int) -> None:
    home = tmp_path / "home"
    me = os.getpid()  # alive, but started at another time than the one recorded: someone else's process
    state = _write_state(home, pid=me, start_time="not-when-it-started", port=health_server)
    assert check_local_server(home) == ("stale", state)
    assert not state_path(home).exists()
    _write_state(home, pid=me, start_time="not-when-it-started", port=health_server)
    assert stop_server(home) is False  # and this test process is still here to say so
    assert not state_path(home).exists()


def test_an_unreadable_state_file_is_removed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    state_path(home).write_text("{not json")
    assert check_local_server(home) == ("stale", None)
    assert not state_path(home).exists()


def test_a_live_server_that_does_not_answer_is_kept_but_not_used(tmp_path: Path) -> None:
    home = tmp_path / "home"
    me = os.getpid()
    port = free_ports()[0]  # nothing listens there
    state = _write_state(home, pid=me, start_time=process_start_time(me) or "", port=port)
    assert check_local_server(home, wait=0.5) == ("unhealthy", state)
    assert state_path(home).exists()  # its process is alive: `smscast server stop` must still find it
    err = io.StringIO()
    env = _empty_profiles(tmp_path)
    assert configure_prefect_api(environ=env, home=home, err=err) == "temporary"
    assert f"pid {me}) is not answering" in err.getvalue()


def test_only_a_running_prefect_command_chooses_an_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import smscast.local_server
    from smscast.cli import app

    class Chosen(Exception):
        pass

    def choose(**_: object) -> str:
        raise Chosen  # stops the command before it would import Prefect or run a flow

    monkeypatch.setattr(smscast.local_server, "configure_prefect_api", choose)
    monkeypatch.setenv("SMSCAST_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    # Help, usage errors and commands that need no Prefect API neither wait for nor announce a server.
    assert runner.invoke(app, ["send", "--help"]).exit_code == 0
    assert runner.invoke(app, ["retry", "--help"]).exit_code == 0
    assert runner.invoke(app, ["send", "x.csv"]).exit_code == 2  # required options missing
    status = runner.invoke(app, ["server", "status"])
    assert status.exit_code == 1 and "not running" in status.output
    # The commands that run flows choose one before anything else.
    args = ["-p", "sandbox", "-c", "c1", "-r", str(tmp_path / "res"), "--body", "Hi", "--dry-run"]
    assert isinstance(runner.invoke(app, ["send", "x.csv", *args]).exception, Chosen)
    assert isinstance(runner.invoke(app, ["retry", "-c", "c1", "-r", str(tmp_path)]).exception, Chosen)
    assert isinstance(runner.invoke(app, ["demo", "--results", str(tmp_path / "d")]).exception, Chosen)


# -- a real detached server through the command line -----------------------------------------------------


def _smscast() -> list[str]:
    script = Path(sys.executable).with_name("smscast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "smscast.cli"]


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_smscast(), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_server_start_status_send_stop(tmp_path: Path) -> None:
    home = tmp_path / "smscast-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SMSCAST_"))}
    env.update(
        SMSCAST_HOME=str(home),
        PREFECT_HOME=str(
            tmp_path / "prefect-home"
        ),  # the client's; the server has its own under SMSCAST_HOME
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **_empty_profiles(tmp_path),
    )
    try:
        started = _run(["server", "start", "--port", "0", "--no-ui"], env)
        assert started.returncode == 0, started.stdout + started.stderr
        state = read_state(home)
        assert state is not None and process_start_time(state.pid) == state.start_time
        assert httpx.get(f"{state.api_url}/health", timeout=30).status_code == 200
        assert state.api_url in started.stdout

        again = _run(["server", "start", "--port", "0", "--no-ui"], env)
        assert again.returncode == 0 and "already running" in again.stderr
        assert read_state(home) == state  # the same server, not a second one

        status = _run(["server", "status"], env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"running: {state.url}" in status.stdout and f"pid {state.pid}" in status.stdout

        recipients = tmp_path / "r.csv"
        recipients.write_text("phone,name\n+447400900001,Ann\n+447400900002,Bo\n")
        sent = _run(
            ["send", str(recipients), "-p", "sandbox", "-c", "uses-local-server", "-r", str(tmp_path / "res"),
             "--body", "Hi {{name}}", "--base-url", "http://127.0.0.1:9", "--dry-run"],
            env,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"smscast: using the local Prefect server at {state.url}" in sent.stderr
        assert "temporary server" not in sent.stderr
        runs = httpx.post(f"{state.api_url}/flow_runs/filter", json={}, timeout=60).json()
        mine = [r for r in runs if "uses-local-server" in json.dumps(r.get("parameters"))]
        assert len(mine) == 1 and mine[0]["state_type"] == "COMPLETED", runs

        stopped = _run(["server", "stop"], env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not state_path(home).exists()
        assert not group_alive(state.pid)  # the whole process group, uvicorn included
        status = _run(["server", "status"], env)
        assert status.returncode == 1 and "not running" in status.stdout
    finally:
        if state_path(home).exists():
            stop_server(home)
