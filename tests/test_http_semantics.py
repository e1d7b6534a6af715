"""End to end: every status code the server sends, over raw sockets, requests, curl and
wget, for /static/ (sendfile) and /dynamic/ (AIO), plain and under the splitting shim."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import urllib3

from tests.conftest import RawClient, ServerProcess, http_get

PREFIXES = ["static", "dynamic"]
SIZE_4097 = 4097
SIZE_1M = 1024 * 1024 + 3
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d{2}:\d{2}:\d{2} GMT"
)
ALLOW = "GET, HEAD, OPTIONS"
CURL = shutil.which("curl")
WGET = shutil.which("wget")

Headers = dict[str, str]


def req(method: str, path: str, *fields: str, version: str = "1.1", host: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/{version}"]
    if host:
        lines.append("Host: 127.0.0.1")
    lines += fields
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ask(
    c: RawClient, method: str, path: str, *fields: str, version: str = "1.1"
) -> tuple[int, Headers, bytes]:
    c.send(req(method, path, *fields, version=version))
    return c.response(head_only=method == "HEAD")


def one(server: ServerProcess, raw: bytes) -> tuple[int, Headers, bytes, bytes]:
    """Send raw bytes, read until the server closes: status, headers, body, what followed
    (for a HEAD or a closing error: nothing may follow the declared body)."""
    data = http_get(server.addr, raw)
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data[:200]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    is_head = raw.startswith(b"HEAD ")
    body = b"" if is_head or status == 304 else rest[:length]
    return status, headers, body, rest[len(body) :]


def common(headers: Headers) -> None:
    assert headers["server"]
    assert IMF_FIXDATE.fullmatch(headers["date"]), headers["date"]


def error_page(status: int, headers: Headers, body: bytes) -> None:
    common(headers)
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(body) > 0
    assert str(status).encode() in body and b"<html" in body.lower()


# -- 200 and HEAD --------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_200_headers(server: ServerProcess, prefix: str) -> None:
    with RawClient(server.addr) as c:
        for name, ctype in (
            ("f4097.bin", "application/octet-stream"),
            ("hello.txt", "text/plain; charset=utf-8"),
            ("", "text/html; charset=utf-8"),
        ):
            path = f"/{prefix}/{name}"
            status, headers, body = ask(c, "GET", path)
            assert status == 200
            assert body == server.root.content(path)
            common(headers)
            assert headers["content-type"] == ctype
            assert int(headers["content-length"]) == len(body)
            assert headers["accept-ranges"] == "bytes"
            assert re.fullmatch(r'"[!#-~]+"', headers["etag"]), headers["etag"]  # strong
            assert IMF_FIXDATE.fullmatch(headers["last-modified"])
            assert headers["connection"] == "keep-alive"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("size", [0, 1, SIZE_4097, SIZE_1M])
def test_head_is_get_without_body(server: ServerProcess, prefix: str, size: int) -> None:
    path = f"/{prefix}/f{size}.bin"
    with RawClient(server.addr) as c:
        status, get_headers, body = ask(c, "GET", path)
        assert (status, body) == (200, server.root.content(path))
        status, head_headers, body = ask(c, "HEAD", path)
        assert (status, body) == (200, b"")
        get_headers.pop("date")
        head_headers.pop("date")
        assert head_headers == get_headers
        # no stray body bytes: the next response on the connection parses right
        status, _, body = ask(c, "GET", "/static/hello.txt")
        assert (status, body) == (200, b"hello\n")
        # a HEAD on a missing file: the error's head only
        status, headers, body = ask(c, "HEAD", f"/{prefix}/missing")
        assert (status, body) == (404, b"")
        assert int(headers["content-length"]) > 0
        status, _, body = ask(c, "GET", f"/{prefix}/hello.txt")
        assert (status, body) == (200, b"hello\n")


def test_head_error_from_the_parser_has_no_body(server: ServerProcess) -> None:
    status, headers, body, after = one(server, b"HEAD /static/hello.txt HTTP/1.1\r\n\r\n")
    assert status == 400
    assert int(headers["content-length"]) > 0
    assert (body, after) == (b"", b"")


def test_http10(server: ServerProcess) -> None:
    status, headers, body, _ = one(server, req("GET", "/static/hello.txt", version="1.0"))
    assert (status, body) == (200, b"hello\n")
    assert headers["connection"] == "close"
    with RawClient(server.addr) as c:
        for _ in range(2):
            status, headers, body = ask(
                c, "GET", "/dynamic/hello.txt", "Connection: keep-alive", version="1.0"
            )
            assert (status, body, headers["connection"]) == (200, b"hello\n", "keep-alive")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_later_http1_minor_version_is_served_as_http11(
    server: ServerProcess, prefix: str
) -> None:
    # RFC 9112 2.3: HTTP/1.2 is processed (and answered) as 1.1, keep-alive included.
    with RawClient(server.addr) as c:
        for _ in range(2):
            c.send(req("GET", f"/{prefix}/hello.txt", version="1.2"))
            status, headers, body = c.response()
            assert (status, body) == (200, b"hello\n")
            assert headers.get("connection") != "close"
    raw = http_get(
        server.addr, req("GET", f"/{prefix}/hello.txt", "Connection: close", version="1.9")
    )
    assert raw.startswith(b"HTTP/1.1 200 ")


# -- 206 and 416 ---------------------------------------------------------------------------------

RANGES = {
    SIZE_4097: [
        ("0-0", 0, 1),
        ("0-4095", 0, 4096),
        ("4095-4096", 4095, 4097),  # across the block boundary, to the last byte
        ("4096-", 4096, 4097),  # the last, partial block only
        ("4096-4096", 4096, 4097),
        ("1-4094", 1, 4095),
        ("100-5000", 100, 4097),  # past the end: clamped
        ("-1", 4096, 4097),
        ("-2", 4095, 4097),
        ("-4097", 0, 4097),
        ("-9999", 0, 4097),
        ("0-", 0, 4097),
    ],
    SIZE_1M: [
        ("4095-4096", 4095, 4097),
        ("4095-8192", 4095, 8193),
        ("8191-12289", 8191, 12290),
        ("1048575-", 1048575, SIZE_1M),  # crosses into the last partial block
        ("1048576-", 1048576, SIZE_1M),  # the last partial block alone
        ("-3", 1048576, SIZE_1M),
        ("-4099", SIZE_1M - 4099, SIZE_1M),
        ("123456-654321", 123456, 654322),
        ("1000-1048577", 1000, 1048578),
        ("500000-2000000", 500000, SIZE_1M),
        ("0-", 0, SIZE_1M),
    ],
}


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("size", [SIZE_4097, SIZE_1M])
def test_206_byte_exact(server: ServerProcess, prefix: str, size: int) -> None:
    path = f"/{prefix}/f{size}.bin"
    content = server.root.content(path)
    with RawClient(server.addr) as c:
        _, full, _ = ask(c, "HEAD", path)
        for spec, start, end in RANGES[size]:
            status, headers, body = ask(c, "GET", path, f"Range: bytes={spec}")
            assert status == 206, spec
            assert headers["content-range"] == f"bytes {start}-{end - 1}/{size}", spec
            assert int(headers["content-length"]) == end - start
            assert body == content[start:end], spec
            for name in ("etag", "last-modified", "content-type", "accept-ranges"):
                assert headers[name] == full[name]
            common(headers)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_416(server: ServerProcess, prefix: str) -> None:
    with RawClient(server.addr) as c:
        for size, spec in (
            (SIZE_4097, "4097-"),
            (SIZE_4097, "5000-6000"),
            (SIZE_4097, "-0"),
            (SIZE_4097, "9000-,10000-"),
            (0, "0-"),
            (0, "-1"),
            (1, "1-1"),
        ):
            status, headers, body = ask(c, "GET", f"/{prefix}/f{size}.bin", f"Range: bytes={spec}")
            assert status == 416, spec
            assert headers["content-range"] == f"bytes */{size}"
            error_page(416, headers, body)
        # the connection goes on
        status, _, body = ask(c, "GET", f"/{prefix}/f1.bin", "Range: bytes=0-0")
        assert (status, body) == (206, server.root.content(f"/{prefix}/f1.bin"))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_ranges_answered_with_the_whole_file(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/f4097.bin"
    with RawClient(server.addr) as c:
        for spec in ("bytes=5-4", "items=0-1", "bytes=x-y", "bytes=-", "bytes=0-1,5-4"):
            status, headers, body = ask(c, "GET", path, f"Range: {spec}")
            assert status == 200, spec
            assert "content-range" not in headers
            assert body == server.root.content(path)
        # HEAD ignores Range (RFC 9110 14.2: range semantics are defined for GET only)
        status, headers, _ = ask(c, "HEAD", path, "Range: bytes=0-0")
        assert (status, headers["content-length"]) == (200, "4097")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_if_range(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/f4097.bin"
    content = server.root.content(path)
    mtime = (server.root.path / prefix / "f4097.bin").stat().st_mtime
    time.sleep(max(0.0, mtime + 1.1 - time.time()))  # a date validator needs 1 s of age
    with RawClient(server.addr) as c:
        _, headers, _ = ask(c, "HEAD", path)
        etag, last_modified = headers["etag"], headers["last-modified"]
        rng = "Range: bytes=10-19"
        for if_range, status, body in (
            (etag, 206, content[10:20]),
            (last_modified, 206, content[10:20]),
            ('"stale"', 200, content),
            ("W/" + etag, 200, content),
            ("Sun, 06 Nov 1994 08:49:37 GMT", 200, content),
        ):
            got = ask(c, "GET", path, rng, f"If-Range: {if_range}")
            assert (got[0], got[2]) == (status, body), if_range


# -- 304 and 412 -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_304(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/f4097.bin"
    with RawClient(server.addr) as c:
        _, headers, _ = ask(c, "GET", path)
        etag, last_modified = headers["etag"], headers["last-modified"]
        for method in ("GET", "HEAD"):
            for fields in (
                (f"If-None-Match: {etag}",),
                (f'If-None-Match: "other", {etag}',),
                (f"If-None-Match: W/{etag}",),  # weak comparison
                ("If-None-Match: *",),
                (f"If-Modified-Since: {last_modified}",),
                ("If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT",),
                (f"If-None-Match: {etag}", "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"),
                (f"If-None-Match: {etag}", "Range: bytes=0-0"),
            ):
                status, got, body = ask(c, method, path, *fields)
                assert (status, body) == (304, b""), fields
                assert got["etag"] == etag
                assert got["last-modified"] == last_modified
                assert "content-length" not in got  # no body, no length to trip a client
                common(got)
        # misses: the whole file
        for fields in (
            ('If-None-Match: "other"',),
            ("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",),
            ("If-Modified-Since: not a date",),
            ('If-None-Match: "other"', f"If-Modified-Since: {last_modified}"),  # INM first
        ):
            status, _, body = ask(c, "GET", path, *fields)
            assert (status, body) == (200, server.root.content(path)), fields


@pytest.mark.parametrize("prefix", PREFIXES)
def test_412(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/f4097.bin"
    with RawClient(server.addr) as c:
        _, headers, _ = ask(c, "GET", path)
        etag, last_modified = headers["etag"], headers["last-modified"]
        for fields in (
            ('If-Match: "other"',),
            (f"If-Match: W/{etag}",),  # strong comparison
            ("If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT",),
            ('If-Match: "other"', f"If-None-Match: {etag}"),  # If-Match first
            ('If-Match: "other"', "Range: bytes=0-0"),
        ):
            status, got, body = ask(c, "GET", path, *fields)
            assert status == 412, fields
            error_page(412, got, body)
            status, got, body = ask(c, "HEAD", path, *fields)
            assert (status, body) == (412, b"")
        for fields in (
            (f"If-Match: {etag}",),
            ("If-Match: *",),
            (f"If-Unmodified-Since: {last_modified}",),
            (f"If-Match: {etag}", "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT"),
        ):
            status, _, body = ask(c, "GET", path, *fields)
            assert (status, body) == (200, server.root.content(path)), fields


# -- methods, versions, OPTIONS ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
def test_405(server: ServerProcess, method: str) -> None:
    for prefix in PREFIXES:
        status, headers, body, _ = one(server, req(method, f"/{prefix}/hello.txt"))
        assert status == 405
        assert headers["allow"] == ALLOW
        error_page(405, headers, body)


def test_405_with_a_body(server: ServerProcess) -> None:
    raw = req("POST", "/static/hello.txt", "Content-Length: 5") + b"hello"
    status, headers, _, _ = one(server, raw)
    assert (status, headers["allow"]) == (405, ALLOW)


@pytest.mark.parametrize("method", ["BREW", "get", "PROPFIND"])
def test_501(server: ServerProcess, method: str) -> None:
    status, headers, body, _ = one(server, req(method, "/static/hello.txt"))
    assert status == 501
    error_page(501, headers, body)


@pytest.mark.parametrize("version", ["2.0", "3.0", "0.9"])
def test_505(server: ServerProcess, version: str) -> None:
    status, headers, body, _ = one(server, req("GET", "/static/hello.txt", version=version))
    assert status == 505
    error_page(505, headers, body)


def test_options(server: ServerProcess) -> None:
    with RawClient(server.addr) as c:
        for target in ("*", "/static/hello.txt", "/dynamic/"):
            status, headers, body = ask(c, "OPTIONS", target)
            assert (status, body) == (200, b"")
            assert headers["allow"] == ALLOW
            assert headers["content-length"] == "0"
            common(headers)


# -- 400, 414, 431: and the connection closes ------------------------------------------------

BAD_REQUESTS = {
    "no Host in HTTP/1.1": b"GET /static/hello.txt HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "invalid Host": b"GET /static/hello.txt HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "space before colon": b"GET /static/hello.txt HTTP/1.1\r\nHost : a\r\n\r\n",
    "obs-fold": b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
    "bare CR": b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n",
    "bare LF": b"GET /static/hello.txt HTTP/1.1\nHost: a\n\n",
    "name not a token": b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nX[1]: b\r\n\r\n",
    "NUL in a value": b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    "CL and TE": (
        b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two Content-Lengths": (
        b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\nxx"
    ),
    "Content-Length list": (
        b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nxx"
    ),
    "bad Content-Length": (
        b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"
    ),
    "TE not chunked": (
        b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"
    ),
    "request line": b"GET  /static/hello.txt HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case version": b"GET /static/hello.txt http/1.1\r\nHost: a\r\n\r\n",
    "encoded slash": b"GET /static/sub%2F..%2F.hidden HTTP/1.1\r\nHost: a\r\n\r\n",
    "encoded NUL": b"GET /static/hello.txt%00.bin HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad escape": b"GET /static/hello%zz.txt HTTP/1.1\r\nHost: a\r\n\r\n",
    "above the root": b"GET /static/../../secret.txt HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragment": b"GET /static/hello.txt#x HTTP/1.1\r\nHost: a\r\n\r\n",
    "userinfo": b"GET http://u@a/static/hello.txt HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk GET": b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("why", list(BAD_REQUESTS))
def test_400_closes_the_connection(server: ServerProcess, why: str) -> None:
    # A valid request pipelined behind the bad one must not be answered.
    raw = BAD_REQUESTS[why] + b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\n\r\n"
    status, headers, body, after = one(server, raw)
    assert status == 400, why
    error_page(400, headers, body)
    assert headers["connection"] == "close"
    assert after == b"", why
    assert b"secret" not in body


def test_errors_that_leave_framing_unknown_close(server: ServerProcess) -> None:
    follow = b"GET /static/hello.txt HTTP/1.1\r\nHost: a\r\n\r\n"
    for raw, expected in (
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /static/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 17000 + b"\r\n\r\n", 431),
    ):
        status, headers, _, after = one(server, raw + follow)
        assert (status, headers["connection"], after) == (expected, "close", b"")


def test_errors_that_keep_the_connection(server: ServerProcess) -> None:
    with RawClient(server.addr) as c:
        for fields, path, expected in (
            ((), "/static/missing", 404),
            (('If-Match: "x"',), "/static/hello.txt", 412),
            (("Range: bytes=99-",), "/dynamic/hello.txt", 416),
            ((), "/static/.hidden", 404),
            ((), "/static/%2e%2e/secret.txt", 404),
        ):
            status, headers, body = ask(c, "GET", path, *fields)
            assert status == expected
            assert headers["connection"] == "keep-alive"
            error_page(expected, headers, body)
        assert ask(c, "GET", "/static/hello.txt")[2] == b"hello\n"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_414(server: ServerProcess, prefix: str) -> None:
    long_path = f"/{prefix}/" + "a" * 8200
    status, headers, body, _ = one(server, req("GET", long_path))
    assert status == 414
    error_page(414, headers, body)
    # and at once, without waiting for the end of the line
    with RawClient(server.addr, timeout=5) as c:
        c.send(b"GET /" + b"a" * 9000)
        status, headers, body = c.response()
        assert status == 414
        assert c.closed_by_peer()


def test_request_line_at_the_limit_is_not_414(server: ServerProcess) -> None:
    target = "/static/" + "a" * (8192 - len("GET /static/ HTTP/1.1"))
    raw = req("GET", target, "Connection: close")
    assert raw.index(b"\r\n") == 8192
    assert one(server, raw)[0] == 404


def test_431(server: ServerProcess) -> None:
    big = [f"X-Pad-{i}: " + "p" * 1000 for i in range(17)]
    status, headers, body, _ = one(server, req("GET", "/static/hello.txt", *big))
    assert status == 431
    error_page(431, headers, body)
    many = [f"X-{i}: v" for i in range(100)]
    status, headers, body, _ = one(server, req("GET", "/static/hello.txt", *many))
    assert status == 431
    # 100 fields in all, about 15 KiB: fine
    ok = ["Connection: close"] + [f"X-{i}: " + "v" * 140 for i in range(98)]
    status, _, body, _ = one(server, req("GET", "/static/hello.txt", *ok))
    assert (status, body) == (200, b"hello\n")


# -- request bodies on GET and pipelining -----------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_get_with_a_body_then_a_pipelined_request(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/f4097.bin"
    content = server.root.content(path)
    first = req("GET", f"/{prefix}/hello.txt", "Content-Length: 11") + b"hello world"
    second = req("GET", path, "Range: bytes=4090-")
    third = req("HEAD", path)
    with RawClient(server.addr) as c:
        c.send(first + second + third)  # all at once
        assert c.response()[::2] == (200, b"hello\n")
        assert c.response()[::2] == (206, content[4090:])
        assert c.response(head_only=True)[::2] == (200, b"")
        # the body in pieces, the next request glued to its end
        c.send(req("GET", f"/{prefix}/hello.txt", "Content-Length: 1000"))
        time.sleep(0.05)
        c.send(b"x" * 600)
        time.sleep(0.05)
        c.send(b"y" * 400 + req("GET", path))
        assert c.response()[::2] == (200, b"hello\n")
        assert c.response()[::2] == (200, content)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_chunked_body_is_dropped_and_the_connection_goes_on(
    server: ServerProcess, prefix: str
) -> None:
    """RFC 9112 7.1: a recipient MUST be able to parse chunked (nginx reads and drops
    it); in pieces, with extensions and a trailer, then a pipelined request."""
    path = f"/{prefix}/f4097.bin"
    with RawClient(server.addr) as c:
        c.send(req("GET", f"/{prefix}/hello.txt", "Transfer-Encoding: chunked") + b"4\r\nab")
        time.sleep(0.05)
        c.send(b"cd\r\n10;x=y\r\n" + b"q" * 16 + b"\r\n0\r\nX-Trailer: t\r\n")
        time.sleep(0.05)
        c.send(b"\r\n" + req("GET", path, "Range: bytes=4090-"))
        assert c.response()[::2] == (200, b"hello\n")
        assert c.response()[::2] == (206, server.root.content(path)[4090:])


def test_a_malformed_chunked_body_is_400_and_closes(server: ServerProcess) -> None:
    raw = req("GET", "/static/hello.txt", "Transfer-Encoding: chunked") + b"zz\r\n"
    status, headers, _, after = one(server, raw + req("GET", "/static/hello.txt"))
    assert (status, headers["connection"], after) == (400, "close", b"")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_expect_100_continue_is_answered_at_once(server: ServerProcess, prefix: str) -> None:
    """RFC 9110 10.1.1: the status is known from the head alone, so the final answer
    comes without waiting for a body the client holds back; then the body may come or
    not, and the connection closes after it."""
    path = f"/{prefix}/hello.txt"
    with RawClient(server.addr, timeout=3) as c:  # well under the 10 s header timeout
        c.send(req("GET", path, "Expect: 100-Continue", "Content-Length: 5"))
        status, headers, body = c.response()
        assert (status, body, headers["connection"]) == (200, b"hello\n", "close")
        c.send(b"12345" + req("GET", path))  # the body after all, and one more request
        assert c.closed_by_peer()  # drained, not answered


def test_expect_100_continue_with_an_error_also_closes(server: ServerProcess) -> None:
    """A 404 decided from the head goes at once too, and closes: the bytes that follow
    may be the body, and must never be read as a request (a desync behind a proxy)."""
    smuggled = req("GET", "/static/hello.txt")
    with RawClient(server.addr, timeout=3) as c:
        c.send(
            req("GET", "/static/nope", "Expect: 100-continue", f"Content-Length: {len(smuggled)}")
        )
        status, headers, _ = c.response()
        assert (status, headers["connection"]) == (404, "close")
        c.send(smuggled)
        assert c.closed_by_peer()  # drained, not answered


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_expect_100_continue_from_curl(server: ServerProcess) -> None:
    curl = CURL
    assert curl is not None
    began = time.monotonic()
    out = subprocess.run(
        [
            curl,
            "-s",
            "-X",
            "GET",
            "--data-binary",
            "x" * 2048,
            "--expect100-timeout",
            "5",
            "-H",
            "Expect: 100-continue",
            "-w",
            "%{http_code}",
            f"{server.url}/static/hello.txt",
        ],
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout
    assert out == b"hello\n200"
    assert time.monotonic() - began < 4  # not curl's 5 s wait for a 100


def test_expect_in_http10_is_ignored(server: ServerProcess) -> None:
    """RFC 9110 10.1.1: a 1.0 request's 100-continue means nothing; the body is read."""
    raw = req(
        "GET", "/static/hello.txt", "Expect: 100-continue", "Content-Length: 3", version="1.0"
    )
    status, _, body, after = one(server, raw + b"abc")
    assert (status, body, after) == (200, b"hello\n", b"")


def test_body_over_the_limit_is_413_and_closes(server: ServerProcess) -> None:
    raw = req("GET", "/static/hello.txt", "Content-Length: 2000000") + b"x" * 1000
    status, headers, _, after = one(server, raw)
    assert (status, headers["connection"], after) == (413, "close", b"")


def test_leading_empty_lines_are_ignored(server: ServerProcess) -> None:
    with RawClient(server.addr) as c:
        c.send(b"\r\n\r\n" + req("GET", "/static/hello.txt"))
        assert c.response()[::2] == (200, b"hello\n")


def test_absolute_form(server: ServerProcess) -> None:
    with RawClient(server.addr) as c:
        for method in ("GET", "HEAD"):
            status, _, body = ask(c, method, "http://elsewhere.example/dynamic/hello.txt?x=1")
            assert (status, body) == (200, b"hello\n" if method == "GET" else b"")


def test_dot_segments_are_resolved(server: ServerProcess) -> None:
    with RawClient(server.addr) as c:
        for path in ("/static/sub/../hello.txt", "/dynamic/./sub/%2E%2e/hello.txt"):
            assert ask(c, "GET", path)[::2] == (200, b"hello\n"), path


# -- with requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_with_requests(server: ServerProcess, prefix: str) -> None:
    url = f"{server.url}/{prefix}/f4097.bin"
    content = server.root.content(f"/{prefix}/f4097.bin")
    with requests.Session() as s:
        r = s.get(url, timeout=10)
        assert (r.status_code, r.content) == (200, content)
        assert r.headers["Accept-Ranges"] == "bytes"
        etag, last_modified = r.headers["ETag"], r.headers["Last-Modified"]

        h = s.head(url, timeout=10)
        assert (h.status_code, h.content) == (200, b"")
        assert {k: v for k, v in h.headers.items() if k != "Date"} == {
            k: v for k, v in r.headers.items() if k != "Date"
        }

        r = s.get(url, headers={"Range": "bytes=100-5000"}, timeout=10)
        assert (r.status_code, r.content) == (206, content[100:])
        assert r.headers["Content-Range"] == "bytes 100-4096/4097"
        r = s.get(url, headers={"Range": "bytes=-100"}, timeout=10)
        assert (r.status_code, r.content) == (206, content[-100:])

        r = s.get(url, headers={"Range": "bytes=5000-"}, timeout=10)
        assert (r.status_code, r.headers["Content-Range"]) == (416, "bytes */4097")

        assert s.get(url, headers={"If-None-Match": etag}, timeout=10).status_code == 304
        r = s.get(url, headers={"If-Modified-Since": last_modified}, timeout=10)
        assert (r.status_code, r.content) == (304, b"")
        assert s.get(url, headers={"If-Match": '"nope"'}, timeout=10).status_code == 412
        old = "Sun, 06 Nov 1994 08:49:37 GMT"
        assert s.get(url, headers={"If-Unmodified-Since": old}, timeout=10).status_code == 412
        r = s.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}, timeout=10)
        assert (r.status_code, r.content) == (206, content[:10])

        r = s.get(url, data=b"a small body on a GET", timeout=10)
        assert (r.status_code, r.content) == (200, content)

        r = s.options(url, timeout=10)
        assert (r.status_code, r.headers["Allow"]) == (200, ALLOW)
        r = s.get(f"{server.url}/{prefix}/missing", timeout=10)
        assert r.status_code == 404
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"

    # These close the connection: one session each.
    for method, expected in (("POST", 405), ("PUT", 405), ("DELETE", 405), ("BREW", 501)):
        r = requests.request(method, url, timeout=10)
        assert r.status_code == expected, method
        if expected == 405:
            assert r.headers["Allow"] == ALLOW
    assert requests.get(url + "?" + "q" * 9000, timeout=10).status_code == 414
    big = {f"X-Big-{i}": "v" * 1000 for i in range(20)}
    assert requests.get(url, headers=big, timeout=10).status_code == 431


def test_400_and_505_with_requests(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{server.url}/static/hello.txt"
    r = requests.get(url, headers={"Host": "a/b"}, timeout=10)
    assert (r.status_code, r.headers["Connection"]) == (400, "close")
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    # http.client only speaks HTTP/1.1: make it claim another version
    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_http_vsn_str", "HTTP/2.0")
    r = requests.get(url, timeout=10)
    assert (r.status_code, r.headers["Connection"]) == (505, "close")


# -- curl and wget -------------------------------------------------------------------------------


def _run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


@pytest.mark.skipif(CURL is None, reason="curl not installed")
@pytest.mark.parametrize("prefix", PREFIXES)
def test_curl_range(server: ServerProcess, prefix: str, tmp_path: Path) -> None:
    for name, spec, start, end in (
        ("f1048579.bin", "100-5000", 100, 5001),
        ("f1048579.bin", "1048000-2000000", 1048000, SIZE_1M),  # across the end
        ("f4097.bin", "4000-9999", 4000, 4097),
    ):
        path = f"/{prefix}/{name}"
        out = tmp_path / f"{name}.{spec}"
        assert CURL is not None
        _run([CURL, "-sS", "--fail", "--noproxy", "*", "--range", spec, "-o", str(out),
              server.url + path])  # fmt: skip
        assert out.read_bytes() == server.root.content(path)[start:end], spec


@pytest.mark.skipif(WGET is None, reason="wget not installed")
@pytest.mark.parametrize("prefix", PREFIXES)
def test_wget_continue(server: ServerProcess, prefix: str, tmp_path: Path) -> None:
    for name, have in (("f1048579.bin", 300001), ("f1048579.bin", 4096), ("f4097.bin", 4096)):
        path = f"/{prefix}/{name}"
        content = server.root.content(path)
        d = tmp_path / f"{name}-{have}"
        d.mkdir()
        (d / name).write_bytes(content[:have])
        assert WGET is not None
        _run([WGET, "--no-config", "--no-proxy", "-q", "-c", "--tries=1", "--timeout=30",
              "-P", str(d), server.url + path])  # fmt: skip
        assert (d / name).read_bytes() == content, (name, have)
    # already complete: wget gets a 416 and leaves the file alone
    d = tmp_path / "complete"
    d.mkdir()
    content = server.root.content(f"/{prefix}/f4097.bin")
    (d / "f4097.bin").write_bytes(content)
    assert WGET is not None
    proc = subprocess.run(
        [WGET, "--no-config", "--no-proxy", "-q", "-c", "--tries=1", "-P", str(d),
         f"{server.url}/{prefix}/f4097.bin"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (d / "f4097.bin").read_bytes() == content
    assert sorted(os.listdir(d)) == ["f4097.bin"]
