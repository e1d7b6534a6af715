"""Response heads: status lines, the Date cache, header blocks and error bodies.

Bytes out only; what to answer is decided in :mod:`aws.respond`.
"""

from __future__ import annotations

from email.utils import formatdate
from time import time

SERVER = b"aws"

REASONS: dict[int, str] = {
    200: "OK",
    206: "Partial Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class DateCache:
    """The ``Date`` value, formatted at most once a second (RFC 9110 IMF-fixdate)."""

    __slots__ = ("_second", "value")

    def __init__(self) -> None:
        self._second = -1
        self.value = b""
        self.refresh()

    def refresh(self) -> bool:
        """Update from the clock; True if the value changed."""
        now = time()
        second = int(now)
        if second == self._second:
            return False
        self._second = second
        self.value = formatdate(now, usegmt=True).encode("ascii")
        return True


def http_date(ts: float) -> bytes:
    return formatdate(ts, usegmt=True).encode("ascii")


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown").encode())


def build_head(
    status: int,
    date: bytes,
    keep_alive: bool,
    fields: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
) -> bytes:
    parts = [status_line(status), b"Server: ", SERVER, b"\r\nDate: ", date, b"\r\n"]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(parts)


def error_body(status: int, detail: str = "") -> bytes:
    reason = REASONS.get(status, "Error")
    return (
        f"<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>"
        f"<body><h1>{status} {reason}</h1></body></html>\n"
    ).encode()


def error_response(
    status: int,
    date: bytes,
    keep_alive: bool,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    page: bytes | None = None,
) -> bytes:
    """Head and small HTML body of an error (``page`` if given), ready to send in one call."""
    body = error_body(status) if page is None else page
    fields = [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        *extra,
    ]
    head = build_head(status, date, keep_alive, fields)
    return head if head_only else head + body
