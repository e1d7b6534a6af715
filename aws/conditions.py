"""Conditional requests and byte ranges (RFC 9110 sections 13 and 14).

Given a request and the file's validators, decide the status and the byte range to
send. Precedence follows RFC 9110 13.2.2: If-Match, If-Unmodified-Since, If-None-Match,
If-Modified-Since, then Range (guarded by If-Range).
"""

from __future__ import annotations

import re
from email.utils import mktime_tz, parsedate_tz

from aws.files import Resource
from aws.http import Request

_RANGE = re.compile(rb"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")


class Decision:
    """What to answer: ``status`` and the half-open byte range ``[start, end)``."""

    __slots__ = ("end", "start", "status")

    def __init__(self, status: int, start: int, end: int) -> None:
        self.status = status
        self.start = start
        self.end = end


def _http_date(value: bytes) -> int | None:
    parsed = parsedate_tz(value.decode("latin-1"))
    if parsed is None:
        return None
    try:
        return mktime_tz(parsed)
    except (OverflowError, ValueError):
        return None


def _etags(value: bytes) -> list[bytes]:
    return [tag.strip() for tag in value.split(b",") if tag.strip()]


def _strong_match(value: bytes, etag: bytes) -> bool:
    if value.strip() == b"*":
        return True
    return any(tag == etag for tag in _etags(value) if not tag.startswith(b"W/"))


def _weak_match(value: bytes, etag: bytes) -> bool:
    if value.strip() == b"*":
        return True
    return any(tag.removeprefix(b"W/") == etag for tag in _etags(value))


def evaluate(req: Request, res: Resource) -> Decision:
    headers = req.headers
    size = res.size
    full = Decision(200, 0, size)
    if len(headers) <= 2 and b"range" not in headers and not _has_conditions(headers):
        return full
    if_match = headers.get(b"if-match")
    if if_match is not None:
        if not _strong_match(if_match, res.etag):
            return Decision(412, 0, 0)
    else:
        ius = headers.get(b"if-unmodified-since")
        if ius is not None:
            when = _http_date(ius)
            if when is not None and res.mtime > when:
                return Decision(412, 0, 0)
    inm = headers.get(b"if-none-match")
    if inm is not None:
        if _weak_match(inm, res.etag):
            return Decision(304, 0, 0)
    else:
        ims = headers.get(b"if-modified-since")
        if ims is not None:
            when = _http_date(ims)
            if when is not None and res.mtime <= when:
                return Decision(304, 0, 0)
    rng = headers.get(b"range")
    if rng is None or req.method != "GET":
        return full
    if_range = headers.get(b"if-range")
    if if_range is not None and not _if_range_holds(if_range, res):
        return full
    return _byte_range(rng, size) or full


def _has_conditions(headers: dict[bytes, bytes]) -> bool:
    return (
        b"if-match" in headers
        or b"if-none-match" in headers
        or b"if-modified-since" in headers
        or b"if-unmodified-since" in headers
    )


def _if_range_holds(value: bytes, res: Resource) -> bool:
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return value == res.etag  # a weak tag never matches (strong comparison)
    when = _http_date(value)
    return when is not None and when == res.mtime


def _byte_range(value: bytes, size: int) -> Decision | None:
    """One ``bytes=`` range as 206/416; None to ignore the header (serve the whole file).

    Several ranges are answered with the whole file, as RFC 9110 14.2 allows.
    """
    m = _RANGE.fullmatch(value)
    if m is None:
        return None
    first, last = m.groups()
    if first:
        start = int(first)
        if last:
            end = int(last) + 1
            if end <= start:
                return None  # invalid range-spec: ignore the header
            end = min(end, size)
        else:
            end = size
        if start >= size:
            return Decision(416, 0, 0)
        return Decision(206, start, end)
    if not last:
        return None
    suffix = int(last)
    if suffix == 0 or size == 0:
        return Decision(416, 0, 0)
    return Decision(206, max(0, size - suffix), size)
