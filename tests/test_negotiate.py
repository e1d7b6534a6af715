"""Accept-Encoding alone: q-values, ``*``, identity, aliases and malformed members."""

from __future__ import annotations

import pytest

from aws import negotiate

ALL = (b"br", b"zstd", b"gzip")


@pytest.mark.parametrize(
    ("header", "available", "chosen"),
    [
        (None, ALL, None),
        (b"", ALL, None),
        (b"gzip, deflate, br, zstd", ALL, b"br"),
        (b"gzip, deflate, br, zstd", (b"zstd", b"gzip"), b"zstd"),
        (b"GZIP", ALL, b"gzip"),
        (b"x-gzip", (b"gzip",), b"gzip"),
        (b"br;q=0.2, gzip;q=0.8", ALL, b"gzip"),
        (b"br; q=0.2 , gzip ;Q=0.8", ALL, b"gzip"),
        (b"*", ALL, b"br"),
        (b"*;q=0", ALL, None),
        (b"br;q=0, *", ALL, b"zstd"),
        (b"identity;q=0", ALL, None),  # nothing acceptable: the file itself, not a 406
        (b"gzip;q=0.5, identity;q=0.9", ALL, None),
        (b"gzip;q=0.9, identity;q=0.5", ALL, b"gzip"),
        (b"gzip;q=2, br;q=abc, zstd", ALL, b"zstd"),  # out of range and garbage: skipped
        (b",,gzip,,", ALL, b"gzip"),
        (b"deflate", ALL, None),
    ],
)
def test_choose(header: bytes | None, available: tuple[bytes, ...], chosen: bytes | None) -> None:
    assert negotiate.choose(header, available) == chosen


def test_the_memo_is_bounded() -> None:
    for i in range(3 * 256):
        negotiate.parse(b"gzip;q=0.%d" % (i % 10) + b" " * i)
    assert len(negotiate._memo) <= 256
