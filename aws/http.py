"""HTTP/1.1 request parsing (RFC 9112) and response heads: bytes in, bytes out.

The parser is strict on purpose: anything that could be read two ways by two parsers
(whitespace before a colon, obs-fold, bare CR, duplicate framing headers) is refused,
because a file server sitting behind a proxy must not become a request-smuggling vector.
It knows nothing of sockets or files.
"""

from __future__ import annotations

import re
from email.utils import formatdate
from time import time
from urllib.parse import unquote_to_bytes

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
MAX_DISCARDED_BODY = 1024 * 1024

SERVER = b"aws"
SERVED_METHODS = frozenset({"GET", "HEAD"})
ALLOW = b"GET, HEAD, OPTIONS"
KNOWN_METHODS = frozenset({"POST", "PUT", "DELETE", "CONNECT", "TRACE", "PATCH"})

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

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_FIELD = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*"
)
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ABSOLUTE_FORM = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://[^/?#]*")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")


class HttpError(Exception):
    """A request the server answers with an error status.

    ``close`` says the connection cannot be reused: after it, where the next request
    starts is unknown (or the client is hostile), so we stop reading.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        close: bool = False,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(f"{status} {REASONS.get(status, '')}: {detail}")
        self.status = status
        self.detail = detail
        self.close = close
        self.headers = headers


class Request:
    """A parsed request head. ``headers`` maps lower-case names to values."""

    __slots__ = (
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "path",
        "segments",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        version: int,
        headers: dict[bytes, bytes],
        segments: list[bytes] | None,
        content_length: int,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version  # 10 or 11
        self.headers = headers
        # Decoded path segments; a trailing "/" leaves an empty last segment.
        # None for the asterisk-form of OPTIONS.
        self.segments = segments
        self.path = b"/" + b"/".join(segments) if segments is not None else b"*"
        self.content_length = content_length
        conn = headers.get(b"connection", b"").lower()
        if version == 11:
            self.keep_alive = b"close" not in conn
        else:
            self.keep_alive = b"keep-alive" in conn


def find_head_end(buf: bytes, start: int = 0) -> int:
    """Index just past the blank line that ends the head, or -1 if not there yet.

    Raises 414/431 as soon as the buffered bytes prove a limit is exceeded.
    """
    end = buf.find(b"\r\n\r\n", start)
    if end >= 0:
        end += 4
        line_end = buf.find(b"\r\n", 0, end)
        check_limits(buf[:end], line_end)
        return end
    check_limits(buf, buf.find(b"\r\n"))
    return -1


def check_limits(head: bytes, line_end: int) -> None:
    if line_end < 0:
        if len(head) > MAX_REQUEST_LINE:
            raise HttpError(414, "request line too long", close=True)
        return
    if line_end > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long", close=True)
    if len(head) - line_end > MAX_HEADER_BYTES:
        raise HttpError(431, "header section too large", close=True)


def skip_empty_lines(buf: bytes) -> bytes:
    """RFC 9112 2.2: ignore CRLFs that precede a request line."""
    while buf.startswith(b"\r\n"):
        buf = buf[2:]
    return buf


def parse_head(head: bytes) -> Request:
    """Parse a complete head (request line to blank line, CRLFs included)."""
    lines = head[:-4].split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise HttpError(400, "malformed request line", close=True)
    method_b, target, major, minor = m.groups()
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise HttpError(431, "too many header fields", close=True)
    headers = _parse_fields(lines)
    if major != b"1" or minor not in (b"0", b"1"):
        raise HttpError(505, f"HTTP/{major.decode()}.{minor.decode()}", close=True)
    version = 11 if minor == b"1" else 10
    content_length = _framing(headers)
    if version == 11 and b"host" not in headers:
        raise HttpError(400, "HTTP/1.1 request without Host", close=True)
    method = method_b.decode("ascii")
    segments = _parse_target(method, target)
    req = Request(method, target, version, headers, segments, content_length)
    if method not in SERVED_METHODS and method != "OPTIONS":
        if method in KNOWN_METHODS:
            raise HttpError(405, f"method {method}", headers=((b"Allow", ALLOW),))
        raise HttpError(501, f"method {method}")
    return req


def _parse_fields(lines: list[bytes]) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    fullmatch = _FIELD.fullmatch
    for line in lines[1:]:
        m = fullmatch(line)
        if m is None:
            raise HttpError(400, f"invalid header field {line[:40]!r}", close=True)
        name = m.group(1).lower()
        value = m.group(2)
        old = headers.get(name)
        if old is None:
            headers[name] = value
        elif name == b"host":
            raise HttpError(400, "more than one Host", close=True)
        elif name == b"content-length":
            if old != value:
                raise HttpError(400, "conflicting Content-Length", close=True)
        else:
            headers[name] = old + b", " + value
    return headers


def _framing(headers: dict[bytes, bytes]) -> int:
    """Length of the request body; refuses anything whose framing is ambiguous."""
    cl = headers.get(b"content-length")
    if b"transfer-encoding" in headers:
        if cl is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding", close=True)
        raise HttpError(501, "request bodies with Transfer-Encoding", close=True)
    if cl is None:
        return 0
    values = {v.strip() for v in cl.split(b",")}
    if len(values) != 1:
        raise HttpError(400, "conflicting Content-Length", close=True)
    value = values.pop()
    if not _CONTENT_LENGTH.fullmatch(value):
        raise HttpError(400, "invalid Content-Length", close=True)
    return int(value)


def _parse_target(method: str, target: bytes) -> list[bytes] | None:
    if target[:1] != b"/":
        if target == b"*" and method == "OPTIONS":
            return None
        m = _ABSOLUTE_FORM.match(target)
        if m is None or method not in SERVED_METHODS:
            raise HttpError(400, "unsupported request-target form")
        target = target[m.end() :] or b"/"
        if target[:1] != b"/":
            target = b"/" + target
    if b"#" in target:
        raise HttpError(400, "fragment in request-target")
    path = target.split(b"?", 1)[0]
    return decode_path(path)


def decode_path(path: bytes) -> list[bytes]:
    """Split on "/" first, then percent-decode each segment exactly once.

    So ``%2F`` stays inside its segment (never a separator), and NUL is refused before
    it can reach the file system. Empty segments (``//``) are dropped; a trailing slash
    leaves one empty last segment.
    """
    if b"%" in path:
        if _BAD_PERCENT.search(path):
            raise HttpError(400, "invalid percent-encoding")
        raw = path.split(b"/")
        segments = [unquote_to_bytes(s) for s in raw]
        if any(b"\0" in s for s in segments):
            raise HttpError(400, "NUL in path")
    else:
        segments = path.split(b"/")
    trailing = len(segments) > 1 and segments[-1] == b""
    kept = [s for s in segments if s]
    if trailing:
        kept.append(b"")
    return kept


# -- responses ---------------------------------------------------------------------------


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
) -> bytes:
    """Head and small HTML body of an error, ready to send in one call."""
    body = error_body(status)
    fields = [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        *extra,
    ]
    head = build_head(status, date, keep_alive, fields)
    return head if head_only else head + body
