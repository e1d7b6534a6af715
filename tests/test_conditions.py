"""conditions.evaluate as a pure function: a request head and three validators in, a
Decision out. No file, no server, no native build.

tests/test_http_parser.py already walks each header alone (range grammar, If-Match,
If-None-Match, If-Modified-Since, IMF-fixdate parsing); this file covers what those do
not: that the validators are all evaluate reads, the RFC 9110 13.2.2 order as a matrix
of headers that disagree, If-Range with every date format, the RFC 850 century rule,
and multi-range corner cases.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest

from aws.conditions import Decision, Validators, evaluate, http_date
from aws.http import parse_head

MTIME = 1_600_000_000  # Sun, 13 Sep 2020 12:26:40 GMT
SIZE = 10_000
ETAG = b'"5f5e-1f4-2710"'
OTHER = b'"nope"'


@dataclass(frozen=True, slots=True)
class File:
    """Exactly the Validators protocol: slots, so reading anything else would raise."""

    size: int = SIZE
    mtime: int = MTIME
    etag: bytes = ETAG


def imf(t: int) -> bytes:
    return formatdate(t, usegmt=True).encode()


def rfc850(t: int) -> bytes:
    return time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(t)).encode()


def asctime(t: int) -> bytes:
    # asctime pads a one-digit day with a space: "Sun Nov  6 08:49:37 1994"
    return time.asctime(time.gmtime(t)).encode()


Format = Callable[[int], bytes]
LM, BEFORE = imf(MTIME), imf(MTIME - 1)


def decide(*fields: bytes, method: bytes = b"GET", res: Validators | None = None) -> Decision:
    head = b"\r\n".join([method + b" /static/f HTTP/1.1", b"Host: x", *fields]) + b"\r\n\r\n"
    return evaluate(parse_head(head), res if res is not None else File())


def span(d: Decision) -> tuple[int, int, int]:
    return (d.status, d.start, d.end)


# -- the seam -------------------------------------------------------------------------------


def test_imports_and_decides_without_the_native_build(tmp_path: Path) -> None:
    # The child makes aiobind's cffi extension unimportable before anything else runs, so
    # any path from aws.conditions to aiobind (directly or through aws.files) fails.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["aiobind._native"] = None  # "import aiobind._native" -> ImportError
        from dataclasses import dataclass
        from aws.conditions import evaluate
        from aws.http import parse_head

        @dataclass(frozen=True)
        class File:
            size: int
            mtime: int
            etag: bytes

        head = b'GET /f HTTP/1.1\\r\\nHost: x\\r\\nIf-Match: "a"\\r\\nRange: bytes=2-4\\r\\n\\r\\n'
        d = evaluate(parse_head(head), File(10, 0, b'"a"'))
        loaded = sorted(
            name
            for name, module in sys.modules.items()
            if module is not None and (name.split(".")[0] == "aiobind" or name == "aws.files")
        )
        print(d.status, d.start, d.end, loaded)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(maxsplit=3) == ["206", "2", "5", "[]\n"]


def test_the_blocker_in_that_child_does_block_the_native_build(tmp_path: Path) -> None:
    # Without this, the test above could pass only because the blocker is a no-op.
    script = 'import sys; sys.modules["aiobind._native"] = None; import aws.files'
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "aiobind._native" in out.stderr


def test_evaluate_reads_nothing_but_the_validators() -> None:
    # File has __slots__ and no __dict__: one more attribute read would be AttributeError.
    heavy = (
        b"If-Match: " + ETAG,
        b"If-Unmodified-Since: " + LM,
        b'If-None-Match: "x"',
        b"If-Modified-Since: " + BEFORE,
        b"Range: bytes=1-2",
        b"If-Range: " + LM,
    )
    assert span(decide(*heavy)) == (206, 1, 3)
    assert span(decide(b"If-Range: " + ETAG, b"Range: bytes=-3")) == (206, SIZE - 3, SIZE)


# -- RFC 9110 13.2.2: the order, when the headers disagree ----------------------------------

IM_OK, IM_FAIL = b"If-Match: " + ETAG, b"If-Match: " + OTHER
IUS_OK, IUS_FAIL, IUS_BAD = (
    b"If-Unmodified-Since: " + LM,
    b"If-Unmodified-Since: " + BEFORE,
    b"If-Unmodified-Since: soon",
)
INM_HIT, INM_MISS = b"If-None-Match: " + ETAG, b"If-None-Match: " + OTHER
IMS_HIT, IMS_MISS = b"If-Modified-Since: " + LM, b"If-Modified-Since: " + BEFORE
R_OK, R_416, R_MANY = b"Range: bytes=10-19", b"Range: bytes=20000-", b"Range: bytes=0-1,5-6"


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        # step 1 decides: a failed If-Match beats every later 304, 416 or 206
        ((IM_FAIL, INM_HIT), 412),
        ((IM_FAIL, IMS_HIT), 412),
        ((IM_FAIL, R_416), 412),
        ((IM_FAIL, IUS_OK), 412),
        # step 2 runs only without If-Match: a passed If-Match hides a failing date
        ((IM_OK, IUS_FAIL, R_OK), 206),
        ((IUS_FAIL, INM_HIT), 412),
        ((IUS_FAIL, IMS_HIT), 412),
        ((IUS_FAIL, R_416), 412),
        ((IUS_BAD, INM_HIT), 304),  # an unparsable date is as if absent
        # step 3: If-None-Match, and If-Modified-Since is then not looked at
        ((IM_OK, INM_HIT), 304),
        ((b"If-Match: *", b"If-None-Match: *"), 304),
        ((IUS_OK, INM_HIT, R_416), 304),  # a 304 comes before the range is judged
        ((INM_MISS, IMS_HIT), 200),
        ((INM_MISS, IMS_HIT, R_OK), 206),
        ((INM_MISS, R_416), 416),
        # step 4
        ((IUS_OK, IMS_HIT, R_OK), 304),
        ((IMS_MISS, R_416), 416),
        ((IMS_MISS, R_MANY), 206),  # several ranges: multipart
        # step 5: If-Range only guards Range, it is no precondition of its own
        ((b"If-Range: " + OTHER,), 200),
        ((IM_FAIL, b"If-Range: " + ETAG, R_OK), 412),
        ((INM_HIT, b"If-Range: " + OTHER, R_OK), 304),
    ],
)
def test_precedence_matrix(fields: tuple[bytes, ...], status: int) -> None:
    assert decide(*fields).status == status
    # the order of the fields in the head plays no part
    assert decide(*reversed(fields)).status == status


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ((INM_HIT,), 304),
        ((IMS_HIT,), 304),
        ((IM_FAIL,), 412),
        ((IUS_FAIL,), 412),
        ((R_OK,), 200),  # HEAD has no range semantics
        ((R_416,), 200),
    ],
)
def test_head_gets_the_same_preconditions_but_no_range(
    fields: tuple[bytes, ...], status: int
) -> None:
    assert decide(*fields, method=b"HEAD").status == status


def test_non_range_answers_cover_the_whole_file_or_nothing() -> None:
    assert span(decide(INM_MISS)) == (200, 0, SIZE)
    assert span(decide(INM_HIT)) == (304, 0, 0)
    assert span(decide(IM_FAIL)) == (412, 0, 0)
    assert span(decide(R_416)) == (416, 0, 0)


def test_an_empty_entity_tag_list_matches_nothing() -> None:
    # "If-None-Match:" with an empty value: a valid empty list, so no 304
    assert decide(b"If-None-Match:").status == 200
    assert decide(b"If-Match:").status == 412


# -- If-Range ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [imf, rfc850, asctime], ids=["imf", "rfc850", "asctime"])
def test_if_range_accepts_every_date_format(fmt: Format) -> None:
    assert span(decide(R_OK, b"If-Range: " + fmt(MTIME))) == (206, 10, 20)
    assert span(decide(R_OK, b"If-Range: " + fmt(MTIME - 1))) == (200, 0, SIZE)
    assert span(decide(R_OK, b"If-Range: " + fmt(MTIME + 3600))) == (200, 0, SIZE)


def test_if_range_with_a_one_digit_asctime_day() -> None:
    t = 784111777  # Sun Nov  6 08:49:37 1994
    assert asctime(t) == b"Sun Nov  6 08:49:37 1994"
    assert span(decide(R_OK, b"If-Range: " + asctime(t), res=File(mtime=t))) == (206, 10, 20)


@pytest.mark.parametrize(
    "value",
    [
        b"W/" + ETAG,  # weak: never for If-Range
        ETAG + b", " + OTHER,  # If-Range takes one validator, not a list
        ETAG[1:-1],  # unquoted
        b"*",
        b"",
    ],
)
def test_if_range_values_that_never_hold(value: bytes) -> None:
    assert span(decide(R_OK, b"If-Range: " + value)) == (200, 0, SIZE)


def test_if_range_date_of_a_file_that_may_still_change_this_second_is_weak() -> None:
    # A date is a strong validator only once the second it names is over (RFC 9110 8.8.2.2)
    future = int(time.time()) + 3600
    assert span(decide(R_OK, b"If-Range: " + imf(future), res=File(mtime=future))) == (
        200,
        0,
        SIZE,
    )
    assert span(decide(R_OK, b"If-Range: " + imf(0), res=File(mtime=0))) == (206, 10, 20)


# -- HTTP-date ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [imf, rfc850, asctime], ids=["imf", "rfc850", "asctime"])
# 2000-02-29, 2020-09-13, 2033-05-18: within 50 years of now, where RFC 850's two-digit
# year is unambiguous
@pytest.mark.parametrize("t", [951782400, 1_600_000_000, 2_000_000_000])
def test_http_date_round_trips_every_format(fmt: Format, t: int) -> None:
    assert http_date(fmt(t)) == t


def test_the_epoch_in_the_four_digit_year_formats() -> None:
    assert http_date(imf(0)) == 0
    assert http_date(asctime(0)) == 0


def test_if_modified_since_in_each_format() -> None:
    for fmt in (imf, rfc850, asctime):
        assert decide(b"If-Modified-Since: " + fmt(MTIME)).status == 304
        assert decide(b"If-Modified-Since: " + fmt(MTIME - 1)).status == 200
        assert decide(b"If-Unmodified-Since: " + fmt(MTIME - 1)).status == 412


def test_rfc850_two_digit_years_stay_within_50_years_of_now() -> None:
    this_year = time.gmtime().tm_year
    ahead = this_year + 51  # "more than 50 years in the future": the past century's
    date = f"Monday, 01-Jan-{ahead % 100:02d} 00:00:00 GMT".encode()
    parsed = http_date(date)
    assert parsed is not None
    assert time.gmtime(parsed).tm_year == ahead - 100
    date = f"Monday, 01-Jan-{this_year % 100:02d} 00:00:00 GMT".encode()
    parsed = http_date(date)
    assert parsed is not None
    assert time.gmtime(parsed).tm_year == this_year


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Sat, 31 Dec 2016 23:59:60 GMT", 1483228800),  # a leap second: the next one
        (b"Thu, 29 Feb 2024 00:00:00 GMT", 1709164800),
        (b"Wed, 29 Feb 2023 00:00:00 GMT", None),
        (b"Sat, 01 Jan 0000 00:00:00 GMT", None),  # no year 0
        (b"Sun, 06 Nov 1994 08:60:37 GMT", None),
        (b"Sun, 06 Nov 1994 08:49:37 UTC", None),
        (b"Sun, 06 Nov 1994 08:49:37 GMT ", None),  # fullmatch: nothing after
        (b"Sun, 06 Nov 94 08:49:37 GMT", None),  # IMF-fixdate needs four digits
        (b"Sunday, 06-Nov-1994 08:49:37 GMT", None),  # RFC 850 needs two
        (b"Sun Nov 06 08:49:37 1994", 784111777),  # asctime tolerates a zero pad
        (b"Sun Nov  6 08:49:37 1994 GMT", None),
    ],
)
def test_http_date_edges(value: bytes, expected: int | None) -> None:
    assert http_date(value) == expected


# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "spec", "expected"),
    [
        (1, b"bytes=-1", (206, 0, 1)),
        (1, b"bytes=-5", (206, 0, 1)),
        (4097, b"bytes=-4096", (206, 1, 4097)),
        (SIZE, b"bytes= -5", (206, SIZE - 5, SIZE)),
        (SIZE, b"bytes=, ,-5", (206, SIZE - 5, SIZE)),  # empty elements do not count
        (0, b"bytes=-0", (416, 0, 0)),
    ],
)
def test_suffix_ranges(size: int, spec: bytes, expected: tuple[int, int, int]) -> None:
    assert span(decide(b"Range: " + spec, res=File(size=size))) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (b"bytes=0-5,3-8", (206, 0, 9, None)),  # overlapping: merged into one range
        (b"bytes=0-0,0-0", (206, 0, 1, None)),  # the same range twice
        (b"bytes=0-4,5-9", (206, 0, 10, None)),  # touching: merged
        (b"bytes=0-0,-1", (206, 0, SIZE, [(0, 1), (SIZE - 1, SIZE)])),  # first and last
        (b"bytes=9990-,-5", (206, 9990, SIZE, None)),  # the suffix lies inside the first
        (b"bytes=0-1,20000-", (206, 0, 2, None)),  # an unsatisfiable one is dropped
        (b"bytes=20000-,0-1", (206, 0, 2, None)),
        (b"bytes=50-59,0-9,20-29", (206, 0, 60, [(0, 10), (20, 30), (50, 60)])),  # sorted
        (b"bytes=0-9,5-14,30-39", (206, 0, 40, [(0, 15), (30, 40)])),
    ],
)
def test_several_ranges_are_sorted_merged_and_sent_as_parts(
    spec: bytes, expected: tuple[int, int, int, list[tuple[int, int]] | None]
) -> None:
    d = decide(b"Range: " + spec)
    assert (d.status, d.start, d.end, d.parts) == expected


def test_more_ranges_than_allowed_get_the_whole_file() -> None:
    head = b"GET /static/f HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0,2-2,4-4\r\n\r\n"
    assert span(evaluate(parse_head(head), File(), max_ranges=2)) == (200, 0, SIZE)
    assert evaluate(parse_head(head), File(), max_ranges=3).parts == [(0, 1), (2, 3), (4, 5)]
    one = b"GET /static/f HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n"
    assert span(evaluate(parse_head(one), File(), max_ranges=1)) == (206, 0, 1)


def test_an_invalid_spec_voids_the_header_even_after_unsatisfiable_ones() -> None:
    # The header is ignored as a whole (200), not answered 416 for its valid part.
    assert span(decide(b"Range: bytes=20000-,5-4")) == (200, 0, SIZE)
    assert span(decide(b"Range: bytes=5-4,20000-")) == (200, 0, SIZE)
    assert span(decide(b"Range: bytes=20000-,30000-")) == (416, 0, 0)


def test_a_range_right_at_the_size_boundary() -> None:
    assert span(decide(b"Range: bytes=9999-", res=File(size=SIZE))) == (206, SIZE - 1, SIZE)
    assert span(decide(b"Range: bytes=10000-", res=File(size=SIZE))) == (416, 0, 0)
    assert span(decide(b"Range: bytes=0-", res=File(size=1))) == (206, 0, 1)
