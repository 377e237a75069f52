"""What the server launchers share: `ServerProcess`, the base of every launcher (start a child with its output
in a log, wait until it is ready, stop it, show the log's tail when it fails), and the process helpers under
it (free loopback ports, stopping a process group, telling a live process from a reused pid)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

HOST = "127.0.0.1"


def free_ports(count: int = 1) -> list[int]:
    """Distinct free loopback ports (all held open until every one is chosen, so no duplicates)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, chars: int = 4000) -> str:
    """The end of a log, for error messages when a server fails to start."""
    try:
        return path.read_bytes()[-chars:].decode(errors="replace")
    except OSError:
        return "(no log)"


def terminate_group(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM the process group, wait `grace` seconds, then SIGKILL it. The group id is the pid
    (start_new_session=True). A process that already exited is only reaped."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        # Still alive, so the group id is still ours to signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _proc_stat(pid: int) -> list[str] | None:
    """Linux: the fields of /proc/<pid>/stat after the command name (which may hold spaces and
    parentheses), so index 0 is the state, 2 the process group and 19 the start time. None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def process_start_time(pid: int) -> str | None:
    """An opaque token for when process `pid` started, or None if no live process has that pid. A pid can be
    reused by an unrelated process once ours has died; comparing this token tells the two apart."""
    if pid <= 0:
        return None
    if _has_proc():
        fields = _proc_stat(pid)
        # A zombie has exited; it lingers only until its parent (init, for a detached server) reaps it.
        if fields is None or len(fields) < 20 or fields[0] == "Z":
            return None
        return fields[19]  # clock ticks since boot
    try:  # elsewhere (macOS, BSD) ask ps; an empty answer means no such process
        out = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in process group `pgid`."""
    if _has_proc():
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = _proc_stat(int(entry.name))
                if fields is not None and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                    return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours to signal
    return True


def terminate_detached_group(pgid: int, *, grace: float, poll: float = 0.1) -> bool:
    """SIGTERM the process group `pgid` of a process that is not our child (a server started by an earlier
    command), wait up to `grace` seconds for the whole group to go, then SIGKILL what is left. We cannot
    wait() for a process that is not our child, so the group's disappearance is what we poll for. Returns
    whether the group is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10.0
            while group_alive(pgid) and time.monotonic() < kill_deadline:
                time.sleep(poll)
            return not group_alive(pgid)
        time.sleep(poll)
    return True


class ServerProcess:
    """A server in a child process, for as long as the context lasts. A launcher says how to start its server
    (`_start`, which hands a function that calls `_spawn` to `_launch_until_ready`), what ready means
    (`_probe`), and where its log is; the waiting, the retries, the stopping and the error messages are here."""

    name = "server"  # how messages call it: "<name> exited with code 1 while starting"
    start_error: type[Exception] = RuntimeError
    poll_interval = 0.05  # seconds between two readiness probes
    stop_grace = 5.0  # seconds between SIGTERM and SIGKILL
    port_taken: tuple[str, ...] = ("address already in use",)  # in the log (lower case): try other ports

    def __init__(self, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return tail(self.log_path, chars)

    def start(self) -> Self:
        """Start the server and wait until it is ready; a no-op while it runs. A failed start leaves nothing
        running and raises `start_error` with the log's tail."""
        with self._lock:
            if self.running():
                return self
            began = time.monotonic()
            try:
                self._start(began + self.startup_timeout)
            except BaseException:
                self._stop_locked()
                raise
            self.startup_seconds = time.monotonic() - began
            atexit.register(self.stop)  # should the owner forget to stop it
            return self

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- for the launchers ---------------------------------------------------------------------------------

    def _spawn(self, cmd: Sequence[str], *, cwd: Path | str, new_session: bool = True, **popen: Any) -> None:
        """Start the server, its output appended to the log (the child keeps its own descriptor of it).
        `new_session`: its own process group, so that stopping it stops whatever it spawned too."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
                **popen,
            )

    def _start(self, deadline: float) -> None:
        raise NotImplementedError

    def _probe(self) -> str | None:
        """None once the server is ready, else what it is still waiting for (for the timeout's message)."""
        raise NotImplementedError

    def _waiting(self, last: str, waited: float) -> None:
        """Called after every probe that found the server not ready yet."""

    def _exited_error(self, code: int) -> Exception:
        return self.start_error(
            f"{self.name} exited with code {code} while starting; log {self.log_path}:\n{self.log_tail()}"
        )

    def _timeout_error(self, last: str) -> Exception:
        return self.start_error(
            f"{self.name} was not ready after {self.startup_timeout:g}s ({last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        began = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise self._exited_error(self.process.returncode)
            last = self._probe()
            if last is None:
                return
            now = time.monotonic()
            if now > deadline:
                raise self._timeout_error(last)
            self._waiting(last, now - began)
            time.sleep(self.poll_interval)

    def _launch_until_ready(self, launch: Callable[[], None], deadline: float, *, attempts: int = 3) -> None:
        """`launch()`, then wait until ready. A port picked free can be taken by someone else before the
        server binds it: a start whose log says so (`port_taken`) is launched again, and `launch` picks new
        ports. Whatever fails, the process is stopped before the error goes up."""
        for attempt in range(attempts):
            launch()
            try:
                self._wait_ready(deadline)
                return
            except self.start_error:
                taken = any(marker in self.log_tail().lower() for marker in self.port_taken)
                self._stop_process()
                if taken and attempt < attempts - 1:
                    continue
                raise
            except BaseException:
                self._stop_process()
                raise

    def _stop_process(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            self._terminate(proc)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        terminate_group(proc, grace=self.stop_grace)

    def _stop_locked(self) -> None:
        self._stop_process()
        self._forget_exit_stop()

    def _forget_exit_stop(self) -> None:
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)


S = TypeVar("S", bound=ServerProcess)


def run_in_foreground(server: S, ready: Callable[[S], None]) -> int:
    """`python -m smscast.servers.<name>`: start the server, let `ready` print how to reach it, and keep it running
    until SIGINT or SIGTERM. Returns the exit status: 1 if the server exited on its own."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        ready(server)
        print("# Ctrl+C to stop", flush=True)
        while not stop.wait(0.5):
            if not server.running():
                print(f"{server.name} exited; log {server.log_path}:\n{server.log_tail()}", file=sys.stderr)
                return 1
    return 0
