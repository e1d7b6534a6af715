"""The C fast path for a repeated keep-alive request (``Connection._replay``).

In-process first: a real Connection over a socketpair (the state-recording harness of
``test_connection_states``) shows when the fast path answers (no state is entered in
Python) and every reason it must not (the file changed, the Date second turned, a
drain, other bytes, the socket filled up). Then end to end: the same conversation with
a server on the fast path and one with ``--no-fast-path``, plain and under the shim,
over HTTP and over HTTPS, must get the same bytes back (apart from the Date header).
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aws.logs import WAY_AIO_BUFFERED, WAY_SENDFILE
from aws.metrics import (
    BUCKETS,
    BYTES,
    HIST,
    REQUESTS,
    RESPONSES,
    Shared,
    Snapshot,
    WorkerCounters,
)
from tests.conftest import DocRoot, file_name, stop_server
from tests.ops import mode_of, start_in
from tests.test_connection_states import Harness
from tests.test_loop import FakeClock
from tests.tls_helpers import Certs, make_certs, start_https

SMALL = b"<p>small</p>\n" * 100  # within the fast path's body limit
MID = os.urandom(60 * 1024)  # within it too, but more than a small socket buffer


@pytest.fixture
def site(tmp_path: Path) -> DocRoot:
    root = DocRoot(tmp_path / "root")
    for prefix in ("static", "dynamic"):
        d = root.path / prefix
        d.mkdir(parents=True)
        for name, data in (("small.html", SMALL), ("mid.bin", MID), ("other.txt", b"other\n")):
            (d / name).write_bytes(data)
            root.contents[f"/{prefix}/{name}"] = data
    return root


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def h(site: DocRoot, clock: FakeClock) -> Iterator[Harness]:
    harness = Harness(site, clock=clock)
    yield harness
    harness.close()


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def _ask(h: Harness, raw: bytes, count: int = 1) -> list[tuple[int, bytes]]:
    h.received.clear()
    h.client.sendall(raw)
    return h.responses(count)


def _warm(h: Harness, raw: bytes) -> None:
    """Twice: the second answer is the one that can be given again."""
    _ask(h, raw)
    _ask(h, raw)
    assert h.conn.again is not None


def _states(h: Harness) -> int:
    return len(h.conn.trace)


def test_a_repeated_request_is_answered_without_entering_a_state(h: Harness) -> None:
    # The first answer of a file just opened asks the page cache about it (not served
    # lately): that one is not replayed, the next one is.
    assert _ask(h, _get("/static/small.html")) == [(200, SMALL)]
    assert h.conn.again is None
    assert _ask(h, _get("/static/small.html")) == [(200, SMALL)]
    assert h.conn.again is not None
    first = bytes(h.received)
    seen = _states(h)
    hits = h.server.static.hits
    for _ in range(3):
        assert _ask(h, _get("/static/small.html")) == [(200, SMALL)]
        assert bytes(h.received) == first  # the same head, byte for byte
    assert _states(h) == seen  # answered in C: no move of the Python machine
    assert h.conn.requests == 5
    assert h.server.static.hits == hits + 3  # counted as the open-file cache hits they are
    assert h.conn.state.name == "READ_HEAD" and h.conn.res is None


def test_off_it_takes_the_python_path_every_time(site: DocRoot, clock: FakeClock) -> None:
    h = Harness(site, clock=clock, fast_path=False)
    try:
        for _ in range(3):
            assert _ask(h, _get("/static/small.html")) == [(200, SMALL)]
        assert [s.name for s in h.conn.trace].count("SEND_FILE") == 3
        assert h.conn.again is None
    finally:
        h.close()


def test_only_short_bodies_sent_whole_or_as_one_range_are_replayed(
    site: DocRoot, clock: FakeClock
) -> None:
    h = Harness(site, clock=clock, directio=0)  # every /dynamic/ read is O_DIRECT
    try:
        _ask(h, _get("/dynamic/small.html"))
        _ask(h, _get("/dynamic/small.html"))
        assert h.conn.again is None  # an O_DIRECT read: never (it may wait for the disk)
    finally:
        h.close()
    h = Harness(site, clock=clock)
    try:
        _warm(h, _get("/dynamic/small.html"))  # a buffered AIO read: yes
        _warm(h, _get("/static/small.html", "Range: bytes=0-9\r\n"))  # a short range: yes
        _ask(h, _get("/static/small.html", "Range: bytes=0-9,20-29\r\n"))  # multipart: no
        assert h.conn.again is None
        _ask(h, b"HEAD /static/small.html HTTP/1.1\r\nHost: t\r\n\r\n", 0)  # no body: no
        assert h.conn.again is None
    finally:
        h.close()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_each_prefix_replays_with_its_own_way_out(h: Harness, prefix: str) -> None:
    _warm(h, _get(f"/{prefix}/small.html"))
    seen = _states(h)
    for _ in range(3):
        assert _ask(h, _get(f"/{prefix}/small.html")) == [(200, SMALL)]
    assert _states(h) == seen
    assert h.conn.path == ("sendfile" if prefix == "static" else "aio-buffered")
    assert h.server.aio.ctx.in_flight == 0


def test_a_precompressed_variant_is_replayed_until_its_sibling_goes(
    h: Harness, site: DocRoot, clock: FakeClock
) -> None:
    gz = site.path / "static" / "small.html.gz"
    gz.write_bytes(b"pretend-gzip")
    later = time.time() + 10  # newer than small.html: a sibling older than x is ignored
    os.utime(gz, (later, later))
    clock.advance(h.server.config.open_file_valid)  # the cache looks at the folder again
    ask = _get("/static/small.html", "Accept-Encoding: gzip\r\n")
    _warm(h, ask)
    seen = _states(h)
    for _ in range(2):
        assert _ask(h, ask) == [(200, b"pretend-gzip")]
        assert b"Content-Encoding: gzip" in bytes(h.received)
    assert _states(h) == seen
    gz.unlink()
    os.utime(gz.parent, (later + 1, later + 1))
    clock.advance(h.server.config.open_file_valid)
    assert _ask(h, ask) == [(200, SMALL)]  # decided again: the variant is gone
    assert _states(h) > seen


def test_a_range_and_a_conditional_request_repeat_exactly(h: Harness) -> None:
    ranged = _get("/static/small.html", "Range: bytes=10-19\r\n")
    _warm(h, ranged)
    seen = _states(h)
    assert _ask(h, ranged) == [(206, SMALL[10:20])]
    assert _states(h) == seen


def test_a_changed_file_is_seen_once_the_cache_would_look_again(
    h: Harness, site: DocRoot, clock: FakeClock
) -> None:
    path = site.path / "static" / "small.html"
    _warm(h, _get("/static/small.html"))
    new = SMALL.upper()
    path.write_bytes(new)
    os.utime(path, (time.time() + 5, time.time() + 5))
    clock.advance(h.server.config.open_file_valid)  # the cache's revalidation interval
    seen = _states(h)
    assert _ask(h, _get("/static/small.html")) == [(200, new)]
    assert _states(h) > seen  # decided in Python again (a stat, a new descriptor)


def test_a_removed_file_is_a_404_once_the_cache_would_look_again(
    h: Harness, site: DocRoot, clock: FakeClock
) -> None:
    _warm(h, _get("/static/other.txt"))
    (site.path / "static" / "other.txt").unlink()
    clock.advance(h.server.config.open_file_valid)
    [(status, _)] = _ask(h, _get("/static/other.txt"))
    assert status == 404


def test_a_new_date_second_is_decided_again(h: Harness) -> None:
    _warm(h, _get("/static/small.html"))
    seen = _states(h)
    h.server.date.refresh()
    h.server.date.value = bytes(bytearray(h.server.date.value))  # another second's value
    _ask(h, _get("/static/small.html"))
    assert _states(h) > seen


def test_a_drain_answers_with_close_from_python(h: Harness) -> None:
    _warm(h, _get("/static/small.html"))
    h.server.draining = True
    h.received.clear()
    h.client.sendall(_get("/static/small.html"))
    h.pump_until(lambda: h.client_eof)
    assert b"Connection: close" in bytes(h.received)
    assert bytes(h.received).endswith(SMALL)


def test_other_bytes_and_pipelined_ones_go_the_python_way(h: Harness) -> None:
    _warm(h, _get("/static/small.html"))
    assert _ask(h, _get("/static/other.txt")) == [(200, b"other\n")]
    assert _ask(h, _get("/static/small.html")) == [(200, SMALL)]
    two = _get("/static/small.html") * 2
    assert _ask(h, two, 2) == [(200, SMALL), (200, SMALL)]
    half = _get("/static/small.html")
    h.received.clear()
    h.client.sendall(half[:10])  # a fragment: kept, then completed
    for _ in range(3):
        h.loop.run_once()
    h.client.sendall(half[10:])
    assert h.responses(1) == [(200, SMALL)]


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_a_full_socket_hands_the_rest_to_the_python_machine(h: Harness, prefix: str) -> None:
    _warm(h, _get(f"/{prefix}/mid.bin"))
    seen = _states(h)
    filler = 0  # the server's socket is full before the request comes
    while True:
        try:
            filler += h.conn.sock.send(b"\0" * 65536)
        except BlockingIOError:
            break
    h.client.sendall(_get(f"/{prefix}/mid.bin"))
    h.loop.run_once()
    assert h.conn.state.name == "SEND_HEAD"  # the C call could send nothing: Python goes on
    drained = 0
    while drained < filler:
        try:
            drained += len(h.client.recv(min(1 << 16, filler - drained)))
        except BlockingIOError:
            h.loop.run_once()
    h.received.clear()
    assert h.responses(1) == [(200, MID)]
    names = [s.name for s in h.conn.trace[seen:]]
    if prefix == "static":
        assert names == ["SEND_HEAD", "SEND_FILE", "DONE", "READ_HEAD"], names
    else:  # the body read already: the rest goes as bytes after the head
        assert names == ["SEND_HEAD", "DONE", "READ_HEAD"], names
    assert h.conn.res is None and h.conn.requests == 3
    for res in h.server.caches[prefix.encode()].entries.values():
        assert res.refs == 0  # the reference taken for the Python half was given back


def test_a_client_gone_mid_answer_closes_and_leaks_nothing(h: Harness) -> None:
    _warm(h, _get("/static/small.html"))
    h.client.sendall(_get("/static/small.html"))
    h.client.close()
    for _ in range(5):
        h.loop.run_once()
    assert h.conn.state.name == "CLOSED"
    for res in h.server.static.entries.values():
        assert res.refs == 0


@pytest.mark.parametrize("log", [True, False])
def test_replayed_responses_are_counted_once_and_logged(
    site: DocRoot, clock: FakeClock, tmp_path: Path, log: bool
) -> None:
    """Counted by the C call itself (no Python hook at all with the log off), in the
    same cells the Python path's tallies go to: each response once, either way."""
    path = tmp_path / "access.log"
    counters = WorkerCounters(Shared(1).live(0))
    options = {"access_log": str(path), "log_format": "json"} if log else {}
    h = Harness(site, clock=clock, counters=counters, **options)
    try:
        assert (h.server.on_replay is None) is not log
        for prefix in ("static", "dynamic"):
            for _ in range(5):
                _ask(h, _get(f"/{prefix}/small.html"))
        _ask(h, _get("/static/nope"))
        counters.sample()  # publishes the Python path's tallies
        snap = Snapshot(False)
        snap.add(0, counters.cells, live=True)
        assert snap.total(REQUESTS + 2 * 3 + 0) == 5  # 2xx, static
        assert snap.total(REQUESTS + 2 * 3 + 1) == 5  # 2xx, dynamic
        assert snap.total(REQUESTS + 4 * 3 + 0) == 1  # the 404
        assert snap.total(RESPONSES + WAY_SENDFILE) == 5
        assert snap.total(RESPONSES + WAY_AIO_BUFFERED) == 5
        assert snap.total(BYTES + WAY_SENDFILE) == 5 * len(SMALL)
        assert snap.total(BYTES + WAY_AIO_BUFFERED) == 5 * len(SMALL)
        assert sum(snap.total(HIST + i) for i in range(len(BUCKETS) + 1)) == 11
        if log:
            h.server.access_log.file.flush()  # type: ignore[union-attr]
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            assert len(lines) == 11
            vias = [line["via"] for line in lines[:10]]
            assert vias == ["sendfile"] * 5 + ["aio_buffered"] * 5
            assert all(line["bytes"] == len(SMALL) for line in lines[:10])
    finally:
        h.close()


# -- end to end: the same answers either way ----------------------------------------------


@pytest.fixture(params=["plain", "shim"])
def mode(request: pytest.FixtureRequest) -> str:
    return mode_of(request)


CONVERSATION = [
    _get("/static/hello.txt"),
    _get("/static/hello.txt"),
    _get("/static/hello.txt"),
    _get("/static/f4097.bin"),
    _get("/static/f4097.bin", "Range: bytes=100-199\r\n"),
    _get("/static/f4097.bin", "Range: bytes=100-199\r\n"),
    _get("/static/f4097.bin", "If-None-Match: *\r\n"),
    _get("/static/f4097.bin", "If-None-Match: *\r\n"),
    b"HEAD /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    _get("/static/nope"),
    _get("/static/nope"),
    _get("/dynamic/hello.txt"),
    _get("/dynamic/hello.txt"),
    _get("/dynamic/hello.txt"),
    _get("/dynamic/f4097.bin", "Range: bytes=4000-\r\n"),
    _get("/dynamic/f4097.bin", "Range: bytes=4000-\r\n"),
    _get("/dynamic/f4097.bin", "Range: bytes=4000-\r\n"),
    _get("/static/hello.txt") * 3,
    _get("/static/f4096.bin"),
    _get("/static/f4096.bin"),
    _get("/static/hello.txt", "Connection: close\r\n"),
]


def _converse(connect: Callable[[], socket.socket]) -> list[bytes]:
    """Each request in turn on one connection; each answer with its Date taken out."""
    out = []
    with connect() as s:
        for raw in CONVERSATION:
            s.sendall(raw)
            want = raw.count(b"HTTP/1.1\r\n")
            got = b""
            while got.count(b"HTTP/1.1 ") < want or not _complete(got, raw):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            out.append(re.sub(rb"(?m)^Date: [^\r]*\r\n", b"", got))
    return out


def _complete(got: bytes, raw: bytes) -> bool:
    """Every response in ``got`` has its head and its whole body."""
    heads_only = raw.startswith(b"HEAD ")
    rest = got
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            return False
        m = re.search(rb"(?im)^content-length: *(\d+)", rest[:end])
        length = 0 if heads_only or m is None else int(m.group(1))
        if rest[:12].endswith(b"304"):
            length = 0
        if len(rest) < end + 4 + length:
            return False
        rest = rest[end + 4 + length :]
    return True


def test_the_fast_path_answers_exactly_as_the_python_path(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    answers = {}
    for label, extra in (("fast", []), ("reference", ["--no-fast-path"])):
        srv = start_in(mode, request, tmp_path / label, docroot, workers=1, extra=extra)
        try:
            answers[label] = _converse(functools.partial(socket.create_connection, srv.addr, 10))
        finally:
            assert stop_server(srv.proc) == 0, srv.log()
    _same_answers(answers, docroot)


def _same_answers(answers: dict[str, list[bytes]], docroot: DocRoot) -> None:
    assert len(answers["fast"]) == len(CONVERSATION)
    for i, (fast, ref) in enumerate(zip(answers["fast"], answers["reference"], strict=True)):
        assert fast == ref, f"request {i}: {CONVERSATION[i]!r}"
    assert answers["fast"][1].endswith(b"\r\n\r\nhello\n")
    assert answers["fast"][20].endswith(docroot.content(f"/static/{file_name(4096)}"))
    assert answers["fast"][17].endswith(docroot.content(f"/dynamic/{file_name(4097)}")[4000:])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_over_tls_the_fast_path_answers_exactly_as_the_python_path(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot, certs: Certs
) -> None:
    """The replay through the SSL object (``Replay.serve_tls``) against the Python path,
    over HTTPS: under the shim, SSL's own reads and writes are split too."""
    answers = {}
    for label, extra in (("fast", []), ("reference", ["--no-fast-path"])):
        kwargs: dict[str, object] = {"workers": 1, "mode": mode}
        if mode == "shim":
            kwargs.update(shim=request.getfixturevalue("shim_so"), stats_path=tmp_path / label)
        https = start_https(docroot.path, docroot=docroot, certs=certs, extra=extra, **kwargs)
        try:
            answers[label] = _converse(https.connect)
            log = https.srv.log()
        finally:
            assert stop_server(https.srv.proc) == 0, https.srv.log()
        assert "no fast path" not in log
    _same_answers(answers, docroot)
