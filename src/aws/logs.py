"""The access log: its line formats, the file it goes to, and reopening it on SIGUSR1.

Three formats, chosen once at start so the per-response work is one bound call:

- ``common``: the NCSA Common Log Format (Apache ``%h %l %u %t "%r" %>s %b``);
- ``combined``: common plus ``"Referer" "User-Agent"``, what most log tools expect;
- ``json``: one object a line, with the duration, the worker and the way the body went
  out (``sendfile``, ``aio_direct``, ``aio_buffered``, or ``none`` for a head-only reply).

Reopening follows logrotate's ``postrotate`` convention: after the file is renamed the
worker keeps writing to the renamed file (nothing is lost) until SIGUSR1, then opens the
path again (nothing goes to a deleted or renamed file afterwards).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from aws.states import ANSWERING

if TYPE_CHECKING:
    from aws.connection import Connection

FORMATS = ("common", "combined", "json")

# How a body went out, for the json log and the metrics (the index into their counters):
# Connection.path names it as the response starts ("mixed": a /static/ body partly read
# by AIO because it was not in the page cache; "tls_copy": read and written through SSL).
WAY_NONE, WAY_SENDFILE, WAY_AIO_DIRECT, WAY_AIO_BUFFERED, WAY_MIXED, WAY_TLS_COPY = range(6)
WAY_NAMES = ("none", "sendfile", "aio_direct", "aio_buffered", "mixed", "tls_copy")
BY_PATH = {
    "": WAY_NONE,
    "sendfile": WAY_SENDFILE,
    "aio-direct": WAY_AIO_DIRECT,
    "aio-buffered": WAY_AIO_BUFFERED,
    "mixed": WAY_MIXED,
    "tls-copy": WAY_TLS_COPY,
}


def way_of(conn: Connection) -> int:
    return BY_PATH[conn.path]  # "" (none) whenever the reply had no body


def peer_text(peer: object) -> str:
    if isinstance(peer, tuple):
        return str(peer[0])
    return "unix:" if peer in ("", b"") else str(peer)


# What a quoted log field may hold as it is: printable ASCII but the quote and the
# backslash. The rest is escaped as Apache's mod_log_config does (\" \\ \xhh), so a
# client cannot end a field early or write control bytes into the log.
_UNSAFE = re.compile(rb"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _escape(byte: re.Match[bytes]) -> bytes:
    b = byte.group()
    return b"\\" + b if b in (b'"', b"\\") else b"\\x%02x" % b[0]


def _quoted(value: bytes | None) -> str:
    """Bytes from the client in a quoted log field, escaped; "-" when there are none."""
    if not value:
        return "-"
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub(_escape, value)
    return value.decode("ascii")


class _Clock:
    """The ``[10/Oct/2000:13:55:36 +0000]`` stamp, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        return self._text


def _request_line(conn: Connection) -> str:
    req = conn.req
    if req is None:
        # Refused before it became a request (405, 501, 505, 431, a bad field): the
        # line as it came, as nginx logs it, so an operator sees what was asked.
        return _quoted(conn.refused)
    version = "1.1" if req.version == 11 else "1.0"
    return f"{req.method} {_quoted(req.target)} HTTP/{version}"


def _refused(conn: Connection, field: int) -> str | None:
    """The method (0) or target (1) of a request line refused before it was parsed."""
    line = conn.refused
    return line.split(b" ")[field].decode("latin-1") if line else None


Formatter = Callable[["Connection", float, float, int], str]


def make_formatter(kind: str, worker: int) -> Formatter:
    """``format(conn, wall_time, duration, way) -> line`` for one of :data:`FORMATS`."""
    clock = _Clock()

    def common(conn: Connection, now: float, duration: float, way: int) -> str:
        return (
            f'{peer_text(conn.peer)} - - [{clock.stamp(now)}] "{_request_line(conn)}" '
            f"{conn.status} {conn.sent}\n"
        )

    def combined(conn: Connection, now: float, duration: float, way: int) -> str:
        headers = conn.req.headers if conn.req is not None else {}
        referer = _quoted(headers.get(b"referer"))
        agent = _quoted(headers.get(b"user-agent"))
        return f'{common(conn, now, duration, way)[:-1]} "{referer}" "{agent}"\n'

    def as_json(conn: Connection, now: float, duration: float, way: int) -> str:
        req = conn.req
        agent = req.headers.get(b"user-agent") if req is not None else None
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            "remote": peer_text(conn.peer),
            "method": req.method if req is not None else _refused(conn, 0),
            "path": req.target.decode("latin-1") if req is not None else _refused(conn, 1),
            "status": conn.status,
            "bytes": conn.sent,
            "duration": round(duration, 6),
            # UTF-8 as browsers send it; a byte that is not UTF-8 is kept as \xhh
            "user_agent": agent.decode("utf-8", "backslashreplace") if agent is not None else None,
            "worker": worker,
            "via": WAY_NAMES[way],
            # False: it ended early (logged by Connection.close), with "bytes" sent
            "complete": conn.state not in ANSWERING,
        }
        return json.dumps(record, separators=(",", ":")) + "\n"

    return {"common": common, "combined": combined, "json": as_json}[kind]


class AccessLog:
    """One worker's access log file (or stdout for ``-``), line-buffered."""

    def __init__(self, target: str, kind: str, worker: int) -> None:
        self.target = target
        self.format = make_formatter(kind, worker)
        self.file: TextIO = self._open()

    def _open(self) -> TextIO:
        if self.target == "-":
            return os.fdopen(os.dup(1), "w", buffering=1)
        return open(self.target, "a", buffering=1)

    def write(self, conn: Connection, duration: float, way: int) -> None:
        self.file.write(self.format(conn, time.time(), duration, way))

    def reopen(self) -> bool:
        """Open the path again (after logrotate renamed it); keep the old file if the
        new one cannot be opened, so no line is lost. False when it could not."""
        if self.target == "-":
            return True
        try:
            new = self._open()
        except OSError as exc:
            logging.getLogger("aws.logs").error(
                "cannot reopen access log %s: %s; still writing to the old file",
                self.target,
                exc.strerror,
            )
            return False
        old, self.file = self.file, new
        old.close()
        return True

    def close(self) -> None:
        self.file.close()


class _Tagged(logging.Formatter):
    def __init__(self, tag: str) -> None:
        # The tag goes first: "aws[PID] LEVEL name: message" stays what searches match.
        super().__init__(f"%(asctime)s {tag}aws[%(process)d] %(levelname)s %(name)s: %(message)s")


def setup_stderr(level: str) -> None:
    """Errors and warnings go to stderr, each line naming the process."""
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr)
    tag_process("")


def tag_process(tag: str) -> None:
    """Name this process in every stderr line from now on (``worker 2 ``)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_Tagged(f"[{tag}] " if tag else ""))
