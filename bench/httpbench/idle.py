"""Idle keep-alive connections held by the bench process, and the server's memory for them.

A row with `Workload.idle` opens that many connections to the server under test before
wrk starts. Each sends one GET and reads the whole response (its body checked against the
generated file), so the server really holds a finished keep-alive connection, not a
half-open socket in its accept queue. Then they sit idle through the timed run; at the
end the pool counts how many the server closed, since a row whose idle clients were
dropped measured something else.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import resource
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Connections opened per batch, all answered before the next: below every listen backlog,
# so no SYN is dropped and retried a second later.
BATCH = 256
OPEN_TIMEOUT_S = 60.0
PAGE_KIB = resource.getpagesize() // 1024
# SO_LINGER {on, 0 s}: close with RST, so 10,000 client sockets do not sit in TIME_WAIT
# holding ephemeral ports while the next cells run.
LINGER_RST = struct.pack("ii", 1, 0)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close[ \t]*\r\n", re.IGNORECASE)


class IdleError(Exception):
    """The idle connections could not be set up; the message goes into the row's cell."""


def raise_nofile(needed: int) -> None:
    """Lift RLIMIT_NOFILE to `needed` (hard limit too, when root) before servers start.

    The bench process holds the idle sockets itself, and the servers inherit the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        raise IdleError(
            f"RLIMIT_NOFILE is {soft} (hard {hard}) and cannot be raised to {needed}; "
            f"run `ulimit -n {needed}` first"
        ) from None


def group_rss_kib(pgid: int) -> int:
    """Resident memory of every live process in the server's group, in KiB.

    Pages shared between nginx's master and worker count twice, but the same pages count
    twice before and after, so the difference (what the idle connections cost) is exact.
    """
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            total += int((stat.parent / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * PAGE_KIB


@dataclass
class IdlePool:
    """The open idle connections; `closed()` counts those the server has given up on."""

    socks: list[socket.socket] = field(default_factory=list)

    def closed(self) -> int:
        """Connections with anything to read: EOF, RST or stray bytes, none of it expected."""
        poller = select.epoll(sizehint=len(self.socks) or 1)
        try:
            for sock in self.socks:
                poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            return len(poller.poll(0, maxevents=len(self.socks) or 1))
        finally:
            poller.close()

    def close(self) -> None:
        """Reset every connection (see LINGER_RST) and forget them."""
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.close()
        self.socks.clear()


@contextlib.contextmanager
def held_idle(port: int, count: int, path: str, digest: str) -> Iterator[IdlePool]:
    """`count` keep-alive connections, each with one verified response behind it."""
    pool = IdlePool()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    try:
        while len(pool.socks) < count:
            batch = connect_batch(port, min(BATCH, count - len(pool.socks)), deadline)
            pool.socks += batch
            for sock in batch:
                sock.send(request)  # a fresh socket's buffer takes 50 bytes at once
            read_responses(batch, digest, deadline)
        yield pool
    finally:
        pool.close()


def connect_batch(port: int, n: int, deadline: float) -> list[socket.socket]:
    """n connected non-blocking sockets; loopback connects complete in the kernel."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(max(deadline - time.monotonic(), 0.1))
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise IdleError(f"idle connection {len(socks)} of a batch failed: {exc}") from None
    return socks


def read_responses(batch: list[socket.socket], digest: str, deadline: float) -> None:
    """Read one whole 200 response per socket; a bad, short or closing one is an error."""
    pending = {sock.fileno(): (sock, bytearray()) for sock in batch}
    poller = select.epoll(sizehint=len(batch))
    try:
        for fd in pending:
            poller.register(fd, select.EPOLLIN)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IdleError(f"{len(pending)} idle connections got no full response")
            for fd, _ in poller.poll(min(left, 1.0)):
                sock, buf = pending[fd]
                data = sock.recv(65536)
                if not data:
                    raise IdleError("the server closed an idle connection before answering")
                buf += data
                if response_complete(buf, digest):
                    poller.unregister(fd)
                    del pending[fd]
    finally:
        poller.close()


def response_complete(buf: bytearray, digest: str) -> bool:
    """True once `buf` holds a full keep-alive 200 whose body has the expected sha256."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(buf[: end + 2])
    if not head.startswith(b"HTTP/1.1 200 "):
        status = head.split(b"\r\n", 1)[0]
        raise IdleError(f"idle connection got {status!r}, not a 200")
    if _CLOSE.search(head):
        raise IdleError("the server answered an idle connection with Connection: close")
    found = _CONTENT_LENGTH.search(head)
    if found is None:
        raise IdleError("the idle connection's response has no Content-Length")
    body = buf[end + 4 :]
    if len(body) < int(found.group(1)):
        return False
    if len(body) > int(found.group(1)) or hashlib.sha256(body).hexdigest() != digest:
        raise IdleError("an idle connection's body differs from the generated file")
    return True
