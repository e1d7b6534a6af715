"""The decision layer alone: a parsed request and the open-file caches in, a Reply out.

No socket and no server: ``respond.answer`` runs over real files in a temporary root.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aws import respond
from aws.files import FileCache
from aws.heads import DateCache
from aws.http import HttpError, parse_head

DATE = DateCache().value


@pytest.fixture
def caches(tmp_path: Path) -> Iterator[dict[bytes | None, FileCache]]:
    for prefix in ("static", "dynamic"):
        (tmp_path / prefix / "dir").mkdir(parents=True)
        (tmp_path / prefix / "ten.txt").write_bytes(b"0123456789")
        (tmp_path / prefix / "empty").write_bytes(b"")
    made = {
        b"static": FileCache(str(tmp_path), "static", direct=False, way=respond.SENDFILE),
        b"dynamic": FileCache(str(tmp_path), "dynamic", direct=False, way=respond.AIO),
    }
    yield made  # type: ignore[misc]
    for cache in made.values():
        cache.close()


def ask(
    caches: dict[bytes | None, FileCache], line: str, *fields: str, keep: bool = True
) -> respond.Reply:
    head = f"{line} HTTP/1.1\r\nHost: t\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n"
    return respond.answer(parse_head(head.encode()), caches, 0.0, DATE, keep)


def done(reply: respond.Reply) -> None:
    if reply.res is not None:
        reply.res.release()


@pytest.mark.parametrize(("prefix", "way"), [("static", "sendfile"), ("dynamic", "aio")])
def test_a_plain_get_is_the_whole_file_by_the_prefix_way(
    caches: dict[bytes | None, FileCache], prefix: str, way: str
) -> None:
    reply = ask(caches, f"GET /{prefix}/ten.txt")
    assert (reply.status, reply.start, reply.stop, reply.way) == (200, 0, 10, way)
    assert reply.res is not None and reply.res.size == 10
    assert reply.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 10\r\n" in reply.head
    assert reply.head.endswith(b"Connection: keep-alive\r\n\r\n")
    done(reply)


def test_close_is_in_the_head_when_asked(caches: dict[bytes | None, FileCache]) -> None:
    reply = ask(caches, "GET /static/ten.txt", keep=False)
    assert reply.head.endswith(b"Connection: close\r\n\r\n")
    done(reply)


def test_head_and_empty_files_carry_no_body(caches: dict[bytes | None, FileCache]) -> None:
    head = ask(caches, "HEAD /static/ten.txt")
    assert head.res is None and b"Content-Length: 10\r\n" in head.head
    empty = ask(caches, "GET /dynamic/empty")
    assert empty.res is None and b"Content-Length: 0\r\n" in empty.head


def test_a_range_is_a_206_of_that_range(caches: dict[bytes | None, FileCache]) -> None:
    reply = ask(caches, "GET /dynamic/ten.txt", "Range: bytes=2-4")
    assert (reply.status, reply.start, reply.stop) == (206, 2, 5)
    assert b"Content-Range: bytes 2-4/10\r\n" in reply.head
    assert b"Content-Length: 3\r\n" in reply.head
    done(reply)


def test_unsatisfiable_range_and_not_modified(caches: dict[bytes | None, FileCache]) -> None:
    r416 = ask(caches, "GET /static/ten.txt", "Range: bytes=50-")
    assert r416.status == 416 and r416.res is None
    assert b"Content-Range: bytes */10\r\n" in r416.head
    plain = ask(caches, "GET /static/ten.txt")
    assert plain.res is not None
    etag = plain.res.etag.decode()
    done(plain)
    r304 = ask(caches, "GET /static/ten.txt", f"If-None-Match: {etag}")
    assert r304.status == 304 and r304.res is None
    assert f"ETag: {etag}".encode() in r304.head and b"Content-Length" not in r304.head


def test_a_directory_without_slash_is_a_redirect(caches: dict[bytes | None, FileCache]) -> None:
    for line, location in (("GET /static/dir", b"/static/dir/"), ("GET /static", b"/static/")):
        reply = ask(caches, line)
        assert reply.status == 301 and reply.res is None
        assert b"Location: " + location + b"\r\n" in reply.head


def test_options_names_the_methods(caches: dict[bytes | None, FileCache]) -> None:
    reply = ask(caches, "OPTIONS *")
    assert reply.status == 200 and b"Allow: GET, HEAD, OPTIONS\r\n" in reply.head


@pytest.mark.parametrize(
    "line", ["GET /elsewhere/ten.txt", "GET /static/missing", "GET /static/.hidden"]
)
def test_what_is_not_there_raises_404(caches: dict[bytes | None, FileCache], line: str) -> None:
    with pytest.raises(HttpError) as info:
        ask(caches, line)
    assert info.value.status == 404


def test_error_replies_give_a_head_only_to_head() -> None:
    req = parse_head(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = respond.error(HttpError(404, "x"), req, DATE, True)
    assert reply.status == 404 and reply.head.endswith(b"\r\n\r\n")
    assert b"<html" not in reply.head
    body = respond.error(HttpError(404, "x"), None, DATE, False)
    assert b"<h1>404 Not Found</h1>" in body.head


def test_an_error_reply_knows_its_pages_length_for_the_log() -> None:
    get = parse_head(b"GET /static/x HTTP/1.1\r\nHost: t\r\n\r\n")
    head = parse_head(b"HEAD /static/x HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = respond.error(HttpError(404, "nope"), get, DATE, True)
    assert reply.res is None and reply.stop == len(reply.head.partition(b"\r\n\r\n")[2]) > 0
    assert respond.error(HttpError(404, "nope"), head, DATE, True).stop == 0  # no body sent


def test_a_416_knows_its_pages_length(
    caches: dict[bytes | None, FileCache],
) -> None:
    reply = ask(caches, "GET /static/ten.txt", "Range: bytes=100-200")
    assert reply.status == 416 and reply.stop == len(reply.head.partition(b"\r\n\r\n")[2]) > 0
    assert ask(caches, "HEAD /static/ten.txt", "Range: bytes=100-200").stop == 0
