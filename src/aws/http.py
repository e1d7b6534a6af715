"""HTTP/1.1 requests (RFC 9112): framing a byte stream into heads, and parsing them.

The parser is strict on purpose: anything that could be read two ways by two parsers
(whitespace before a colon, obs-fold, bare CR, duplicate framing headers) is refused,
because a file server sitting behind a proxy must not become a request-smuggling vector.
It knows nothing of sockets or files.
"""

from __future__ import annotations

import re

from aws.errors import HttpError
from aws.targets import PLAIN_TARGET, check_host, good_hosts, parse_target

__all__ = ["HttpError", "Request"]  # HttpError lives in aws.errors; importable from here

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
MAX_DISCARDED_BODY = 1024 * 1024
CHUNKED = -1  # Request.content_length of a chunked body: its length is in the chunks
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, or one trailer field

SERVED_METHODS = frozenset({"GET", "HEAD"})
ALLOW = b"GET, HEAD, OPTIONS"
KNOWN_METHODS = frozenset({"POST", "PUT", "DELETE", "CONNECT", "TRACE", "PATCH"})


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# OWS field-value OWS (RFC 9112 5, RFC 9110 5.5) is exactly a run of SP, HTAB, VCHAR and
# obs-text: no CTL, so no NUL, no bare CR or LF. The caller strips the OWS.
_OWS_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_LINE = rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])"
_REQUEST_LINE = re.compile(_LINE)
_FIELD = re.compile(rb"(" + _TOKEN + rb"):(" + _OWS_VALUE + rb")")
# The whole head in one C-level match: the same grammar as _REQUEST_LINE and _FIELD
# line by line, which only run (to say what is wrong) when this one fails.
_HEAD = re.compile(_LINE + rb"\r\n((?:" + _TOKEN + rb":" + _OWS_VALUE + rb"\r\n)*)\r\n")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")


_CONDITIONAL_FIELDS = frozenset(
    {
        b"range",
        b"if-range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
    }
)


class Request:
    """A parsed request head. ``headers`` maps lower-case names to values.

    Never mutated after parsing (parsed requests may be shared between connections).
    """

    __slots__ = (
        "conditional",
        "content_length",
        "headers",
        "keep_alive",
        "key",
        "method",
        "prefix",
        "raw",
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
        # Decoded, dot-normalized path segments; a trailing "/" leaves an empty last
        # segment. None for the asterisk-form of OPTIONS.
        self.segments = segments
        # Worked out once here (parsed requests are memoized) rather than per response:
        # the first segment, the rest as one open-file-cache key, and whether any header
        # can change the answer from a plain 200.
        self.prefix = segments[0] if segments else None
        self.key = b"/".join(segments[1:]) if segments else b""
        self.conditional = not _CONDITIONAL_FIELDS.isdisjoint(headers)
        self.raw: bytes | None = None  # the head's bytes, when memoized (see parse_memoized)
        self.content_length = content_length
        conn = headers.get(b"connection")
        if conn is None:
            self.keep_alive = version == 11
            return
        conn = conn.lower()
        if conn == b"close":
            self.keep_alive = False
        elif conn == b"keep-alive":
            self.keep_alive = True
        else:  # a list of options (RFC 9110 7.6.1)
            options = {o.strip(b" \t") for o in conn.split(b",")}
            self.keep_alive = b"close" not in options and (
                version == 11 or b"keep-alive" in options
            )

    @property
    def path(self) -> bytes:
        """The decoded path ("*" for the asterisk-form)."""
        segments = self.segments
        return b"/" + b"/".join(segments) if segments is not None else b"*"


def find_head_end(buf: bytes, start: int = 0) -> int:
    """Index just past the blank line that ends the head, or -1 if not there yet.

    Raises 414/431 as soon as the buffered bytes prove a limit is exceeded, and 400 as
    soon as they hold a bare LF or CR (such a head would never end with CRLFCRLF).
    """
    end = buf.find(b"\r\n\r\n", start)
    if end >= 0:
        end += 4
        line_end = buf.find(b"\r\n", 0, end)
        if line_end > MAX_REQUEST_LINE:
            raise HttpError(414, "request line too long", close=True)
        if end - line_end > MAX_HEADER_BYTES:
            raise HttpError(431, "header section too large", close=True)
        return end
    check_limits(buf, buf.find(b"\r\n"))
    crlf = buf.count(b"\r\n")
    if buf.count(b"\n") != crlf or buf.count(b"\r") - (buf[-1:] == b"\r") != crlf:
        raise HttpError(400, "bare LF or CR in the head", close=True)
    return -1


def check_limits(head: bytes, line_end: int) -> None:
    """414/431 for a (possibly partial) head whose first CRLF is at ``line_end``."""
    if line_end < 0:
        # No CRLF yet: the line is at least this long (less a CR that may be half a CRLF).
        if len(head) - (head[-1:] == b"\r") > MAX_REQUEST_LINE:
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
    """Parse a complete head (request line to blank line, CRLFs included).

    Checks, in order: request-line syntax (400), version (505), number of fields (431),
    field syntax (400), framing (400/501), Host (400), method (405/501), target (400).
    """
    m = _HEAD.fullmatch(head)
    if m is None:
        return _parse_slowly(head)
    method_b, target, major, minor, block = m.groups()
    try:
        version = 11 if minor == b"1" and major == b"1" else _version(major, minor)
        headers: dict[bytes, bytes] = {}
        if block:
            lines = block.split(b"\r\n")
            lines.pop()  # after the last CRLF
            if len(lines) > MAX_HEADER_FIELDS:
                raise HttpError(431, "too many header fields", close=True)
            for line in lines:
                name, _, value = line.partition(b":")
                name = name.lower()
                value = value.strip(b" \t")
                if name in headers:
                    _repeat(headers, name, value)
                else:
                    headers[name] = value
        return _request(method_b.decode("ascii"), target, version, headers)  # token: ASCII
    except HttpError as exc:
        exc.method = method_b.decode("ascii")
        exc.line = head.split(b"\r\n", 1)[0]
        raise


def _parse_slowly(head: bytes) -> Request:
    """The same grammar line by line, to find what is wrong (or, in theory, nothing)."""
    lines = head[:-4].split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise HttpError(400, "malformed request line", close=True)
    method_b, target, major, minor = m.groups()
    try:
        version = _version(major, minor)
        if len(lines) - 1 > MAX_HEADER_FIELDS:
            raise HttpError(431, "too many header fields", close=True)
        headers: dict[bytes, bytes] = {}
        fullmatch = _FIELD.fullmatch
        for line in lines[1:]:
            fm = fullmatch(line)
            if fm is None:
                raise HttpError(400, f"invalid header field {line[:40]!r}", close=True)
            name = fm.group(1).lower()
            value = fm.group(2).strip(b" \t")
            if name in headers:
                _repeat(headers, name, value)
            else:
                headers[name] = value
        return _request(method_b.decode("ascii"), target, version, headers)
    except HttpError as exc:
        exc.method = method_b.decode("ascii")
        exc.line = head.split(b"\r\n", 1)[0]
        raise


def _version(major: bytes, minor: bytes) -> int:
    # RFC 9112 2.3: a minor version above ours is processed as the highest we speak, so a
    # client that says HTTP/1.2 is served as HTTP/1.1 (and answered as 1.1), as nginx
    # does. Another major version is not this protocol at all (an HTTP/2 preface, 0.9).
    if major == b"1":
        return 10 if minor == b"0" else 11
    raise HttpError(505, f"HTTP/{major.decode()}.{minor.decode()}", close=True)


def _repeat(headers: dict[bytes, bytes], name: bytes, value: bytes) -> None:
    """A field line whose name was already seen: combine, or refuse (RFC 9110 5.3)."""
    if name == b"host":
        raise HttpError(400, "more than one Host", close=True)
    old = headers[name]
    if name == b"content-length":
        if old != value:
            raise HttpError(400, "conflicting Content-Length", close=True)
        return
    headers[name] = old + b", " + value


def _request(method: str, target: bytes, version: int, headers: dict[bytes, bytes]) -> Request:
    if b"content-length" in headers or b"transfer-encoding" in headers:
        content_length = _framing(headers, version)
    else:
        content_length = 0
    host = headers.get(b"host")
    if host is None:
        if version == 11:
            raise HttpError(400, "HTTP/1.1 request without Host", close=True)
    elif host not in good_hosts:
        check_host(host)
    if method not in SERVED_METHODS and method != "OPTIONS":
        # Framing is known, but the connection will not wait for a body it refuses.
        close = content_length != 0
        if method in KNOWN_METHODS:
            raise HttpError(405, f"method {method}", close, ((b"Allow", ALLOW),))
        raise HttpError(501, f"method {method}", close)
    m = PLAIN_TARGET.fullmatch(target)
    if m is not None:
        segments: list[bytes] | None = m.group(1)[1:].split(b"/")
    else:
        segments = parse_target(method, target)
    return Request(method, target, version, headers, segments, content_length)


def _framing(headers: dict[bytes, bytes], version: int) -> int:
    """Length of the request body; refuses anything whose framing is ambiguous."""
    cl = headers.get(b"content-length")
    te = headers.get(b"transfer-encoding")
    if te is not None:
        # RFC 9112 6.1 and 6.3: all of these leave the body length in doubt, or we
        # cannot decode it, so the connection cannot go on after the answer.
        if cl is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding", close=True)
        if version == 10:
            raise HttpError(400, "Transfer-Encoding in HTTP/1.0", close=True)
        if te.rsplit(b",", 1)[-1].strip(b" \t").lower() != b"chunked":
            raise HttpError(400, "chunked is not the final transfer coding", close=True)
        if te.strip(b" \t").lower() != b"chunked":
            # As nginx: chunked alone is read (and dropped); another coding under it is not.
            raise HttpError(501, "a transfer coding other than chunked", close=True)
        return CHUNKED
    if cl is None:
        return 0
    if _CONTENT_LENGTH.fullmatch(cl) is not None:
        return int(cl)
    values = {v.strip(b" \t") for v in cl.split(b",")}  # "5, 5" is one length
    if len(values) != 1:
        raise HttpError(400, "conflicting Content-Length", close=True)
    value = values.pop()
    if _CONTENT_LENGTH.fullmatch(value) is None:
        raise HttpError(400, "invalid Content-Length", close=True)
    return int(value)


# -- framing: a client's byte stream into requests -----------------------------------------

# Parsing is a pure function of the head's bytes and clients repeat their heads (same
# browser, same crawler, same load generator): remember the last few hundred results.
# Requests are never mutated after parsing, so sharing one is safe.
PARSE_MEMO_SIZE = 512
PARSE_MEMO_HEAD = 2048  # longer heads are rare and would make the memo large
_parsed: dict[bytes, Request] = {}


def parse_memoized(head: bytes) -> Request:
    req = _parsed.get(head)
    if req is None:
        req = parse_head(head)
        if len(head) <= PARSE_MEMO_HEAD:
            if len(_parsed) >= PARSE_MEMO_SIZE:
                _parsed.clear()
            req.raw = head  # before it is shared: what a replayed request must equal
            _parsed[head] = req
    return req


# chunk-size [ chunk-ext ] (RFC 9112 7.1.1): extensions are ; name [= token or
# quoted-string], with BWS around ; and =; nothing else (no CTL, no bare CR), so that
# no proxy before us can frame the body otherwise.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = (
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})" + _CHUNK_EXT)
MAX_CHUNKS = 16384  # per body: each costs a few us of the loop, whatever its size
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class Chunks:
    """Where a chunked request body being dropped is (RFC 9112 7.1, which every
    recipient MUST be able to parse): sizes read, data skipped, trailer fields skipped."""

    __slots__ = ("chunks", "left", "line", "req", "state", "total")

    def __init__(self, req: Request) -> None:
        self.req = req
        self.state = _SIZE
        self.left = 0  # data bytes left in this chunk
        self.line = b""  # a size line or trailer field cut by the end of what arrived
        self.total = 0  # bytes on the wire, framing included: the limit is on those
        self.chunks = 0

    def skip(self, data: bytes) -> int:
        """Drop the body's bytes from ``data``: the index just past its end, or -1 when
        it goes on in what is still to come. Raises HttpError (400, 413)."""
        i, n = 0, len(data)
        while i < n:
            if self.state == _DATA:
                take = min(self.left, n - i)
                i += take
                self.left -= take
                if not self.left:
                    self.state = _DATA_END
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                self._check(len(self.line))
                return -1
            line, self.line, i = self.line + data[i : j + 1], b"", j + 1
            self.total += len(line)
            self._check(len(line))
            if line[-2:-1] != b"\r":
                raise self._bad("a bare LF in the chunked body")
            line = line[:-2]
            if self.state == _DATA_END:
                if line:
                    raise self._bad("chunk data longer than its size")
                self.state = _SIZE
            elif self.state == _SIZE:
                m = _CHUNK_LINE.fullmatch(line)  # extensions are read, and ignored
                if m is None:
                    raise self._bad("invalid chunk size or extension")
                self.left = int(m.group(1), 16)
                self.total += self.left
                self.chunks += 1
                if self.chunks > MAX_CHUNKS:
                    raise self._bad(f"more than {MAX_CHUNKS} chunks")
                self._check(0)
                self.state = _DATA if self.left else _TRAILER
            elif not line:
                return i  # the empty line after the trailer: the body is over
            elif _FIELD.fullmatch(line) is None:
                raise self._bad("invalid trailer field")
        return -1

    def _check(self, line: int) -> None:
        if line > MAX_CHUNK_LINE:
            raise self._bad("chunk-size line or trailer field too long")
        if self.total > MAX_DISCARDED_BODY:
            raise HttpError(
                413, "request body too large", close=True, method=self.req.method, request=self.req
            )

    def _bad(self, why: str) -> HttpError:
        return HttpError(400, why, close=True, method=self.req.method, request=self.req)


class Framer:
    """Cuts one connection's input into requests, pipelined or in fragments.

    ``buf`` holds what arrived and is not yet a request; ``discard`` counts the bytes of
    a request body still to come (a GET may carry one: it is read and dropped), or is
    ``CHUNKED`` while ``chunks`` reads a chunked one.
    """

    __slots__ = ("buf", "chunks", "discard", "scan")

    def __init__(self) -> None:
        self.buf = b""
        self.scan = 0  # where to resume looking for the end of a partial head
        self.discard = 0
        self.chunks: Chunks | None = None

    def drop_body(self) -> None:
        """Read no more of this request: what follows is drained, not parsed."""
        self.buf, self.discard, self.chunks = b"", 0, None

    def feed(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive.

        When the request's body has not all arrived, ``discard`` says how much is still
        to come; feed it to :meth:`skip_body`. Raises :class:`HttpError` for a head that
        is malformed or over a limit, or a body over ``MAX_DISCARDED_BODY`` (413).
        """
        buf = self.buf
        if buf[:2] == b"\r\n":
            buf = self.buf = skip_empty_lines(buf)
        if not buf:
            return None
        end = buf.find(b"\r\n\r\n", self.scan)
        if 0 <= end < MAX_REQUEST_LINE:
            end += 4  # a head this short is within every limit
        else:
            end = find_head_end(buf, self.scan)
        if end < 0:
            self.scan = max(0, len(buf) - 3)
            return None
        self.scan = 0
        rest = self.buf = buf[end:]
        head = buf[:end]
        req = _parsed.get(head) or parse_memoized(head)  # a memo hit costs no call
        length = req.content_length
        if length == 0:
            return req  # the common case: no body
        if length == CHUNKED:
            chunks = Chunks(req)
            end = chunks.skip(rest)
            if end < 0:
                self.discard, self.chunks, self.buf = CHUNKED, chunks, b""
            else:
                self.buf = rest[end:]
        else:
            if length > MAX_DISCARDED_BODY:
                raise HttpError(
                    413, "request body too large", close=True, method=req.method, request=req
                )
            if len(rest) < length:
                self.discard = length - len(rest)
                self.buf = b""
            else:
                self.buf = rest[length:]
        return req

    def skip_body(self, data: bytes) -> bool:
        """Drop body bytes; True once the body is gone (what follows it stays in ``buf``).
        Raises HttpError for a chunked body that is malformed or too large."""
        chunks = self.chunks
        if chunks is not None:
            end = chunks.skip(data)
            if end < 0:
                return False
            self.discard, self.chunks, self.buf = 0, None, data[end:]
            return True
        n = min(self.discard, len(data))
        self.discard -= n
        if self.discard:
            return False
        self.buf = data[n:]
        return True
