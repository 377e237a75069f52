"""What the server launchers share: free loopback ports, log tails, and stopping a process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

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


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, for error messages when a server fails to start."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
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
