"""Conditional requests and byte ranges (RFC 9110 sections 13 and 14).

Given a request and the file's validators, decide the status and the byte range to
send. Precedence follows RFC 9110 13.2.2: If-Match, If-Unmodified-Since, If-None-Match,
If-Modified-Since, then Range (guarded by If-Range).

The file is seen only through its validators (:class:`Validators`), so this module
imports, and is tested, without the native AIO build that an open ``Resource`` needs.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import datetime
from typing import Protocol

from aws.http import Request

# -- HTTP-date (RFC 9110 5.6.7): a recipient MUST accept all three formats -----------------

_MONTHS = {
    name: number
    for number, name in enumerate(b"jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)
}
_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_NAME = rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# Case-insensitive: "recipients are encouraged to be robust in parsing timestamps".
_IMF_FIXDATE = re.compile(
    _DAY + rb", ([0-9]{2}) " + _MONTH + rb" ([0-9]{4}) " + _TIME + rb" GMT", re.IGNORECASE
)
_RFC850_DATE = re.compile(
    _DAY_NAME + rb", ([0-9]{2})-" + _MONTH + rb"-([0-9]{2}) " + _TIME + rb" GMT", re.IGNORECASE
)
_ASCTIME_DATE = re.compile(
    _DAY + rb" " + _MONTH + rb" ([ 0-9][0-9]) " + _TIME + rb" ([0-9]{4})", re.IGNORECASE
)

# -- entity tags (RFC 9110 8.8.3) ---------------------------------------------------------

_ETAG = rb'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_ETAG_ITEM = rb"(?:[ \t]*" + _ETAG + rb"[ \t]*)?"
# 1#entity-tag with the list rules of RFC 9110 5.6.1 (empty elements are tolerated).
_ETAG_LIST = re.compile(_ETAG_ITEM + rb"(?:," + _ETAG_ITEM + rb")*")
_ETAG_TAGS = re.compile(rb'(W/)?("[^"]*")')

# -- ranges (RFC 9110 14.1) ---------------------------------------------------------------

_RANGE_SPEC = re.compile(rb"([0-9]*)[ \t]*-[ \t]*([0-9]*)")
_MAX_DIGITS = 18  # longer positions are past the end of any file (and int() has limits)
_HUGE = 1 << 62


class Validators(Protocol):
    """What the decision needs to know of the file; ``aws.files.Resource`` is one.

    Read-only properties, so a frozen dataclass satisfies it as well as a plain object.
    """

    @property
    def size(self) -> int:
        """Length in bytes."""

    @property
    def mtime(self) -> int:
        """Last modification, whole seconds since the epoch (what Last-Modified says)."""

    @property
    def etag(self) -> bytes:
        """The strong entity-tag, quotes included: ``b'"..."'``."""


class Decision:
    """What to answer: ``status`` and the half-open byte range ``[start, end)``; for
    several ranges, ``parts`` holds them (sorted, merged) and ``[start, end)`` spans them."""

    __slots__ = ("end", "parts", "start", "status")

    def __init__(
        self, status: int, start: int, end: int, parts: list[tuple[int, int]] | None = None
    ) -> None:
        self.status = status
        self.start = start
        self.end = end
        self.parts = parts

    def __repr__(self) -> str:
        extra = f", {self.parts}" if self.parts is not None else ""
        return f"Decision({self.status}, {self.start}, {self.end}{extra})"


def http_date(value: bytes) -> int | None:
    """Seconds since the epoch for an HTTP-date in any of its three formats, else None."""
    m = _IMF_FIXDATE.fullmatch(value)
    if m is not None:
        day, month, year, hour, minute, second = m.groups()
        year_n = int(year)
    else:
        m = _RFC850_DATE.fullmatch(value)
        if m is not None:
            day, month, year, hour, minute, second = m.groups()
            # A two-digit year more than 50 years in the future is in the past.
            this_year = time.gmtime().tm_year
            year_n = this_year - this_year % 100 + int(year)
            if year_n > this_year + 50:
                year_n -= 100
        else:
            m = _ASCTIME_DATE.fullmatch(value)
            if m is None:
                return None
            month, day, hour, minute, second, year = m.groups()
            year_n = int(year)
    fields = (year_n, _MONTHS[month.lower()], int(day), int(hour), int(minute), int(second))
    try:
        datetime(*fields[:5], min(fields[5], 59))  # validates (second 60: a leap second)
    except ValueError:
        return None
    return calendar.timegm(fields)


def _etag_list(value: bytes) -> list[tuple[bool, bytes]]:
    """``(weak, opaque-tag)`` for each member of a valid list; [] for an invalid one."""
    if _ETAG_LIST.fullmatch(value) is None:
        return []
    return [(weak != b"", tag) for weak, tag in _ETAG_TAGS.findall(value)]


def _strong_match(value: bytes, etag: bytes) -> bool:
    """If-Match: the strong comparison (RFC 9110 8.8.3.2); "*" matches any file."""
    if value == b"*":
        return True
    return any(not weak and tag == etag for weak, tag in _etag_list(value))


def _weak_match(value: bytes, etag: bytes) -> bool:
    """If-None-Match: the weak comparison; "*" matches any file."""
    if value == b"*":
        return True
    return any(tag == etag for _, tag in _etag_list(value))


def evaluate(req: Request, res: Validators, max_ranges: int = 100) -> Decision:
    """``max_ranges``: a Range header with more ranges gets the whole file (nginx's
    ``max_ranges``); 1 allows single ranges only."""
    headers = req.headers
    size = res.size
    if_match = headers.get(b"if-match")
    if if_match is not None:
        if not _strong_match(if_match, res.etag):
            return Decision(412, 0, 0)
    else:
        ius = headers.get(b"if-unmodified-since")
        if ius is not None:
            when = http_date(ius)  # an invalid date (or a list of them) is ignored
            if when is not None and res.mtime > when:
                return Decision(412, 0, 0)
    inm = headers.get(b"if-none-match")
    if inm is not None:
        if _weak_match(inm, res.etag):
            return Decision(304, 0, 0)  # only GET and HEAD get this far
    else:
        ims = headers.get(b"if-modified-since")
        if ims is not None:
            when = http_date(ims)
            if when is not None and res.mtime <= when:
                return Decision(304, 0, 0)
    rng = headers.get(b"range")
    if rng is None or req.method != "GET":
        # RFC 9110 14.2: GET is the only method with range semantics; HEAD ignores it.
        return Decision(200, 0, size)
    if_range = headers.get(b"if-range")
    if if_range is not None and not _if_range_holds(if_range, res):
        return Decision(200, 0, size)
    return _byte_range(rng, size, max_ranges) or Decision(200, 0, size)


def _if_range_holds(value: bytes, res: Validators) -> bool:
    """RFC 9110 13.1.5: a strong entity-tag, or the exact Last-Modified date if that can
    be a strong validator (the file has not been modified in the current second)."""
    if value[:1] == b'"' or value[:2] == b"W/":
        return value == res.etag  # strong comparison: a weak tag never matches
    when = http_date(value)
    return when is not None and when == res.mtime and time.time() >= res.mtime + 1


def _position(digits: bytes) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE


def _byte_range(value: bytes, size: int, max_ranges: int = 100) -> Decision | None:
    """206 for satisfiable ranges, 416 when no range is satisfiable, None to ignore the
    header and send the whole file.

    Ignored: another unit, an invalid ranges-specifier (RFC 9110 14.2 lets a server
    ignore it, and an invalid range-spec such as ``5-4`` makes it invalid), and more
    than ``max_ranges`` ranges (a cheap request must not buy an expensive answer).
    Several ranges are sorted, and overlapping or touching ones merged (RFC 9110 14.2
    allows coalescing): what is left as one range is a plain 206, else ``parts``.
    """
    unit, eq, ranges = value.partition(b"=")
    if not eq or unit.strip(b" \t").lower() != b"bytes":
        return None
    satisfiable: list[tuple[int, int]] = []
    count = 0
    for spec in ranges.split(b","):
        spec = spec.strip(b" \t")
        if not spec:
            continue  # empty list elements are allowed (RFC 9110 5.6.1)
        m = _RANGE_SPEC.fullmatch(spec)
        if m is None:
            return None
        count += 1
        if count > max_ranges:
            return None
        first, last = m.groups()
        if first:
            start = _position(first)
            if last:
                end = _position(last) + 1
                if end <= start:
                    return None  # last-pos < first-pos: an invalid range-spec
                end = min(end, size)
            else:
                end = size
            if start < size:
                satisfiable.append((start, end))
        elif last:
            suffix = _position(last)
            if suffix and size:
                satisfiable.append((max(0, size - suffix), size))
        else:
            return None  # "-": neither position
    if not count or count > max_ranges:
        return None
    if not satisfiable:
        return Decision(416, 0, 0)
    if count == 1:
        start, end = satisfiable[0]
        return Decision(206, start, end)
    satisfiable.sort()
    merged = [satisfiable[0]]
    for start, end in satisfiable[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    if len(merged) == 1:
        return Decision(206, *merged[0])
    return Decision(206, merged[0][0], merged[-1][1], merged)
