"""The ``--metrics HOST:PORT`` listener: ``GET /metrics`` (Prometheus text) and
``GET /healthz`` (200 while accepting, 503 while draining or with no worker up).

It runs on a :class:`~aws.loop.Loop`: the single process adds it to its own loop, and
under a supervisor it is the loop of a small process of its own (so the supervisor's
signal handling stays as it is, and a scrape never waits for a worker). Each scrape is a
short connection, answered and closed; heads are bounded, slow clients are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

import aiobind
from aws.listeners import StartupError
from aws.logs import tag_process
from aws.loop import EPOLLIN, EPOLLOUT, Loop
from aws.metrics import Shared, Snapshot, render
from aws.proctitle import set_title

log = logging.getLogger("aws.metrics")

MAX_HEAD = 8192
MAX_CLIENTS = 64
CLIENT_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise StartupError(f"--metrics {text}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def metrics_listener(text: str) -> socket.socket:
    host, port = parse_address(text)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on --metrics {text}: {exc.strerror}") from None
    return sock


def respond(head: bytes, snapshot: Callable[[], Snapshot]) -> bytes:
    line = head.split(b"\r\n", 1)[0].split(b" ")
    method, target = (line[0], line[1]) if len(line) == 3 else (b"", b"")
    path = target.split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        status, body, ctype = "405 Method Not Allowed", "GET or HEAD\n", "text/plain"
    elif path == b"/metrics":
        status, body, ctype = "200 OK", render(snapshot()), CONTENT_TYPE
    elif path == b"/healthz":
        snap = snapshot()
        up = not snap.draining and bool(snap.alive)
        status = "200 OK" if up else "503 Service Unavailable"
        body, ctype = (
            ("ok\n" if up else "draining\n" if snap.draining else "no worker up\n"),
            "text/plain",
        )
    else:
        status, body, ctype = "404 Not Found", "/metrics or /healthz\n", "text/plain"
    if not status.startswith(("200", "503")):
        log.info("metrics listener: %s for %r", status, head[:100])
    data = body.encode()
    head_out = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode()
    return head_out if method == b"HEAD" else head_out + data


class _Client:
    def __init__(self, owner: MetricsListener, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out = b""
        self.closed = False
        owner.loop.add(self.fd, EPOLLIN, self)
        owner.loop.call_later(CLIENT_TIMEOUT, self.close)

    def on_event(self, events: int) -> None:
        if self.out:
            self._send()
            return
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        if not data:
            self.close()
            return
        self.buf += data
        if b"\r\n\r\n" in self.buf or len(self.buf) > MAX_HEAD:
            self.out = respond(self.buf, self.owner.snapshot)
            self.owner.loop.modify(self.fd, EPOLLOUT)
            self._send()

    def _send(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        self.out = self.out[sent:]
        if not self.out:
            self.close()

    def on_error(self, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.loop.remove(self.fd)
            self.sock.close()
            self.owner.clients.discard(self)


class MetricsListener:
    def __init__(self, loop: Loop, sock: socket.socket, snapshot: Callable[[], Snapshot]) -> None:
        self.loop = loop
        self.sock = sock
        self.snapshot = snapshot
        self.clients: set[_Client] = set()
        loop.add(sock.fileno(), EPOLLIN, self)

    def on_event(self, events: int) -> None:
        for _ in range(16):
            try:
                conn, _peer = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("metrics accept failed: %s", exc.strerror)
                return
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                self.clients.add(_Client(self, conn))

    def on_error(self, exc: BaseException) -> None:
        log.error("metrics listener failed: %r", exc)

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        self.loop.remove(self.sock.fileno())
        self.sock.close()


def metrics_process(sock: socket.socket, shared: Shared, supervisor: int) -> None:
    """Entry point of the supervisor's metrics child: serve until SIGTERM, never return."""
    status = 0
    try:
        aiobind.set_parent_death_signal(signal.SIGTERM)
        tag_process("metrics")
        set_title("aws: metrics")
        loop = Loop()
        MetricsListener(loop, sock, shared.snapshot)
        signal.signal(signal.SIGTERM, lambda signo, frame: os._exit(0))  # nothing to flush
        # Ctrl-C, logrotate's USR1 and a reload's HUP are the supervisor's to act on (and
        # `systemctl kill` sends them to every process of the unit).
        for signo in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            signal.signal(signo, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if os.getppid() != supervisor:
            loop.stop()
        loop.run()
    except BaseException:
        log.exception("metrics process crashed")
        status = 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
