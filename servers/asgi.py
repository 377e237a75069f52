"""Serving an ASGI app in this process (the sandbox, the delivery-report receiver): the listening socket, the
uvicorn settings they share, and stopping when the process that started us has gone. The launchers that start
such a process and wait for it are in servers/process.py."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any, Literal

import uvicorn


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one), bound before uvicorn starts so the port is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP, and
    # without it uvicorn's separate writes of headers and body meet Nagle + delayed ACK (40 ms per response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(
    app: Any, *, log_level: str, lifespan: Literal["on", "off"], graceful_seconds: int
) -> uvicorn.Config:
    """uvicorn for a service on loopback: no access log (it would print every URL, query-string secrets with
    it), no proxy headers, no Server/Date headers."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan=lifespan,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=graceful_seconds,
    )


def exit_with_parent(parent: int, name: str) -> None:
    """A daemon thread that stops this process gracefully (SIGTERM) once `parent` has gone: a test runner that
    died must not leave a server behind."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name=f"{name}-parent-watch", daemon=True).start()
