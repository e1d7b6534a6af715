"""Content-Type from the name alone: Python's table, the web types it lacks, charsets."""

from __future__ import annotations

import pytest

from aws.mime import DEFAULT, content_type


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"index.html", b"text/html; charset=utf-8"),
        (b"app.js", b"application/javascript; charset=utf-8"),  # nginx 1.22's name for it
        (b"data.json", b"application/json; charset=utf-8"),
        (b"logo.svg", b"image/svg+xml; charset=utf-8"),
        (b"photo.webp", b"image/webp"),
        (b"font.woff2", b"font/woff2"),
        (b"font.woff", b"font/woff"),
        (b"font.ttf", b"font/ttf"),
        (b"font.otf", b"font/otf"),
        (b"README.md", b"text/markdown; charset=utf-8"),
        (b"app.js.map", b"application/json; charset=utf-8"),
        (b"song.flac", b"audio/flac"),
        (b"LOGO.PNG", b"image/png"),  # extensions in any case
        (b"archive.tar.gz", DEFAULT),  # served as the bytes it is, not as a tar
        (b"noextension", DEFAULT),
        (b"caf\xc3\xa9.txt", b"text/plain; charset=utf-8"),
        (b"bad\xff.txt", b"text/plain; charset=utf-8"),  # not UTF-8: still by extension
    ],
)
def test_content_type(name: bytes, expected: bytes) -> None:
    assert content_type(name) == expected
