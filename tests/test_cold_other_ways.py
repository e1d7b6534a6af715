"""The loop never waits on the disk in the other ways a file body goes out either:
multipart/byteranges (its parts by sendfile, or by AIO), and ``/static/`` over TLS
without kernel TLS (read into a buffer, then SSL_write). A cold range is read by AIO
(or, with ``--static-cold cache``, into the page cache) instead of by a ``sendfile``,
``preadv`` or buffered ``io_submit`` that would wait for the disk on the loop.

Files live under /var/tmp, as in :mod:`tests.test_cold`: a real disk, where
``posix_fadvise(DONTNEED)`` really evicts.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import aiobind
from aws.resource import Resource
from aws.sending import Sending
from aws.tls_connection import TlsConnection
from tests.conftest import DocRoot, stop_server
from tests.test_cold import (
    MiB,
    _cached_but,
    _cached_but_reclaimed,
    cold_root,  # noqa: F401  (a fixture)
    evict,
    warm,
)
from tests.test_connection_states import Harness
from tests.test_multipart import boundary_of, expected_body
from tests.test_tls_connection import TlsHarness
from tests.tls_helpers import Certs, make_certs, start_https

pytestmark = pytest.mark.timeout(60)

TWO = [(100, 200), (6 * MiB + 100, 6 * MiB + 300)]  # far apart: two parts, not merged


def _ranges(ranges: list[tuple[int, int]]) -> str:
    return "bytes=" + ",".join(f"{a}-{b - 1}" for a, b in ranges)


def _multipart(h: Harness, path: str, ranges: list[tuple[int, int]]) -> tuple[str, bytes]:
    """One multi-range GET on the harness's connection: (Content-Type, body)."""
    h.received.clear()
    h.conn.trace.clear()
    h.client.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nRange: {_ranges(ranges)}\r\n\r\n".encode())
    [(status, body)] = h.responses(1)
    assert status == 206
    head = bytes(h.received[: h.received.find(b"\r\n\r\n")]).decode("latin-1")
    [ctype] = re.findall(r"(?im)^content-type: (.*)$", head)
    return ctype.strip(), body


def _names(h: Harness | TlsHarness) -> str:
    return " ".join(s.name for s in h.conn.trace)


@pytest.fixture
def harness(cold_root: DocRoot) -> Iterator[Harness]:  # noqa: F811
    h = Harness(cold_root)
    yield h
    h.close()


# -- multipart/byteranges on /static/: each part by sendfile over what is cached --------


def test_a_cold_part_of_a_static_multipart_body_is_read_by_aio(
    harness: Harness,
    cold_root: DocRoot,  # noqa: F811
) -> None:
    evict(cold_root.path / "static" / "big.bin")
    ctype, body = _multipart(harness, "/static/big.bin", TWO)
    assert body == expected_body(boundary_of(ctype), cold_root.content("/static/big.bin"), TWO)
    names = _names(harness)
    # both parts cold: each read by AIO, and the parts go on by sendfile after each
    assert names.count("SEND_FILE AIO_WAIT") == 2, names
    assert "SEND_BUFFER SEND_FILE" in names and names.endswith("DONE READ_HEAD"), names
    assert harness.conn.path == "mixed"
    assert harness.conn.parts is None and harness.conn.body is None


def test_a_multipart_body_cold_in_one_part_sends_the_other_by_sendfile(
    harness: Harness,
    cold_root: DocRoot,  # noqa: F811
) -> None:
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    hole = (6 * MiB, 64 * 1024)  # the second part's range, and no other page
    for _ in range(3):  # the kernel may reclaim another page meanwhile: a second wait
        _cached_but(path, hole)
        ctype, body = _multipart(harness, "/static/big.bin", TWO)
        assert body == expected_body(boundary_of(ctype), content, TWO)
        names = _names(harness)
        if names.count("AIO_WAIT") == 1:
            break
    assert names.count("AIO_WAIT") == 1, names
    assert harness.conn.path == "mixed"


def test_a_cached_multipart_body_never_leaves_sendfile(
    harness: Harness,
    cold_root: DocRoot,  # noqa: F811
) -> None:
    warm(cold_root.path / "static" / "big.bin", 13 * MiB)
    ctype, body = _multipart(harness, "/static/big.bin", TWO)
    assert body == expected_body(boundary_of(ctype), cold_root.content("/static/big.bin"), TWO)
    assert "AIO_WAIT" not in _names(harness) and harness.conn.path == "sendfile"


def test_a_long_cold_part_is_read_in_aio_depth_pieces(
    harness: Harness,
    cold_root: DocRoot,  # noqa: F811
) -> None:
    """One part longer than the AIO reads kept in flight: read body after body, each
    sent, never more than aio_depth buffers at once; then the closing delimiter."""
    ranges = [(0, 10), (MiB, 9 * MiB)]
    evict(cold_root.path / "static" / "big.bin")
    h = harness
    h.conn.trace.clear()
    request = f"GET /static/big.bin HTTP/1.1\r\nHost: t\r\nRange: {_ranges(ranges)}\r\n\r\n"
    h.client.sendall(request.encode())
    pool = h.server.aio.pool
    peak = 0

    def closed() -> bool:
        nonlocal peak
        peak = max(peak, pool.outstanding)
        return h.received.endswith(b"--\r\n")

    h.pump_until(closed)
    assert peak <= h.server.config.aio_depth
    head = bytes(h.received[: h.received.find(b"\r\n\r\n")]).decode("latin-1")
    [ctype] = re.findall(r"(?im)^content-type: (.*)$", head)
    body = bytes(h.received[len(head) + 4 :])
    content = cold_root.content("/static/big.bin")
    assert body == expected_body(boundary_of(ctype.strip()), content, ranges)
    # 8 MiB in bodies of aio_depth (3) 1 MiB reads, and the first part's
    assert _names(h).count("SEND_FILE AIO_WAIT") >= 4, _names(h)


# -- multipart/byteranges by AIO: a buffered io_submit would read a cold part in the call --


def test_a_cold_part_of_a_buffered_dynamic_file_is_read_with_o_direct(
    harness: Harness,
    cold_root: DocRoot,  # noqa: F811
) -> None:
    ranges = [(0, 100), (15_000, 15_100)]
    path = cold_root.path / "dynamic" / "small.bin"
    content = cold_root.content("/dynamic/small.bin")
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:  # the first part cached, the second cold: one page read, no readahead
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        os.pread(fd, 4096, 0)
        assert aiobind.cachestat(fd, 12_288, 8192).cache == 0, "readahead took the rest"
    finally:
        os.close(fd)
    ctype, body = _multipart(harness, "/dynamic/small.bin", ranges)
    assert body == expected_body(boundary_of(ctype), content, ranges)
    assert harness.conn.path == "aio-direct"
    [res] = harness.server.dynamic.entries.values()
    assert res.direct_fd() >= 0
    warm(path, len(content))
    ctype, body = _multipart(harness, "/dynamic/small.bin", ranges)
    assert body == expected_body(boundary_of(ctype), content, ranges)
    assert harness.conn.path == "aio-buffered"  # all in the page cache: read from it


# -- /static/ over TLS without kernel TLS: preadv would wait for a cold chunk -------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _tls_get(h: TlsHarness, path: str, length: int, extra: str = "") -> bytes:
    h.conn.trace.clear()
    h.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
    return h.body_of(length)


@contextlib.contextmanager
def _tls(root: DocRoot, certs: Certs, **options: object) -> Iterator[TlsHarness]:
    """A TLS harness; after the test's requests, its buffers are all back."""
    h = TlsHarness(root, certs, **options)
    try:
        yield h
        for _ in range(5):
            h.loop.run_once()
        assert h.conn.stage is None and h.conn.body is None
        assert h.server.tls is not None and h.server.tls.buffers.outstanding == 0
    finally:
        h.close()


def test_a_cold_static_body_over_tls_is_read_by_aio(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
) -> None:
    """Evicted: the head waited in the stage for the first chunk, which is cold, so it
    goes ahead of the AIO buffers; the rest by AIO, back to SSL_write where cached."""
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    with _tls(cold_root, certs) as h:
        assert not h.conn.ktls  # a socketpair: never kernel TLS
        evict(path)
        with open(path, "rb") as f:  # the tail cached, past what AIO reads at once
            f.seek(10 * MiB)
            f.read()
        assert _tls_get(h, "/static/big.bin", len(content)) == content
        names = _names(h)
        assert "SEND_HEAD SEND_FILE AIO_WAIT SEND_BUFFER" in names, names
        assert "SEND_BUFFER SEND_FILE" in names, names  # the cached tail by SSL_write
        assert h.conn.path == "mixed"


def test_a_cached_static_body_over_tls_never_waits(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
) -> None:
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    with _tls(cold_root, certs) as h:
        warm(path, len(content))
        assert _tls_get(h, "/static/big.bin", len(content)) == content
        assert "AIO_WAIT" not in _names(h) and h.conn.path == "tls-copy"


def test_a_static_body_over_tls_with_a_cold_hole_reads_only_the_hole_by_aio(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    hole = 6 * MiB
    cold_at: list[int] = []
    read_cold = TlsConnection._read_cold

    def recording(conn: TlsConnection) -> None:
        cold_at.append(conn.pos)
        read_cold(conn)

    monkeypatch.setattr(TlsConnection, "_read_cold", recording)
    with _tls(cold_root, certs) as h:
        for _ in range(3):  # reclaim may make a second hole: a second wait, still right
            _cached_but(path, (hole, 64 * 1024))
            cold_at.clear()
            assert _tls_get(h, "/static/big.bin", len(content)) == content
            if cold_at == [hole]:
                break
        assert cold_at == [hole]  # the head and 6 MiB by SSL_write from the page cache
        names = _names(h)
        assert "SEND_FILE AIO_WAIT SEND_BUFFER SEND_FILE DONE" in names, names
        assert h.conn.path == "mixed"


def test_a_range_over_tls_of_a_cold_file_is_read_by_aio(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
) -> None:
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    with _tls(cold_root, certs) as h:
        evict(path)
        got = _tls_get(h, "/static/big.bin", 1000, "Range: bytes=5000000-5000999\r\n")
        assert got == content[5_000_000:5_001_000]
        assert "AIO_WAIT" in _names(h) and h.conn.path == "mixed"


def test_cache_mode_over_tls_reads_a_cold_body_into_the_page_cache(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
) -> None:
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    with _tls(cold_root, certs, static_cold="cache") as h:
        evict(path)
        assert _tls_get(h, "/static/big.bin", len(content)) == content
        names = _names(h)
        assert "SEND_FILE AIO_WAIT SEND_FILE" in names and "SEND_BUFFER" not in names, names
        assert h.conn.path == "mixed"
        _cached_but_reclaimed(path)


def test_a_cold_multipart_body_over_tls_is_read_with_o_direct(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
) -> None:
    """Without kTLS the parts of a /static/ file go by AIO into buffers: a cold one with
    O_DIRECT, not by a buffered io_submit that would read it inside the call."""
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    with _tls(cold_root, certs) as h:
        evict(path)
        h.send(f"GET /static/big.bin HTTP/1.1\r\nHost: t\r\nRange: {_ranges(TWO)}\r\n\r\n".encode())
        h.pump_until(lambda: h.received.find(b"\r\n\r\n") >= 0)
        head = bytes(h.received[: h.received.find(b"\r\n\r\n")]).decode("latin-1")
        [ctype] = re.findall(r"(?im)^content-type: (.*)$", head)
        want = expected_body(boundary_of(ctype.strip()), content, TWO)
        assert h.body_of(len(want)) == want
        assert h.conn.path == "aio-direct"


# -- end to end: the installed server, as users start it -----------------------------------


def _vias(log: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while log.read_text().count("\n") < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [line.split('"via":"')[1].split('"')[0] for line in log.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["plain", "shim"])
def test_end_to_end_cold_multipart_and_https_bodies_are_served_and_logged_mixed(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
    tmp_path: Path,
    mode: str,
    request: pytest.FixtureRequest,
) -> None:
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path / "stats"
    log = tmp_path / "access.log"
    https = start_https(
        cold_root.path,
        docroot=cold_root,
        certs=certs,
        mode=mode,
        shim=shim,
        stats_path=stats,
        workers=1,
        extra=["--access-log", str(log), "--log-format", "json"],
    )
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    try:
        with requests.Session() as http:
            evict(path)
            resp = http.get(
                f"{https.srv.url}/static/big.bin", headers={"Range": _ranges(TWO)}, timeout=30
            )
            assert resp.status_code == 206
            want = expected_body(boundary_of(resp.headers["Content-Type"]), content, TWO)
            assert resp.content == want
            evict(path)
            got = http.get(f"{https.url}/static/big.bin", verify=str(certs.ca), timeout=30)
            assert got.status_code == 200 and got.content == content
        assert _vias(log, 2) == ["mixed", "mixed"]
    finally:
        assert stop_server(https.srv.proc) == 0, https.srv.log()


def test_a_long_part_of_a_buffered_file_is_read_with_o_direct_even_when_cached(
    cold_root: DocRoot,  # noqa: F811
    certs: Certs,
) -> None:
    """Asking costs a probe per 256 KiB where cachestat is refused, so a part longer
    than one body's reads in flight is not asked about: it is read with O_DIRECT."""
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    warm(path, len(content))
    with _tls(cold_root, certs) as h:  # no kTLS: /static/ parts go by buffered AIO
        long = [(0, 10), (MiB, 5 * MiB)]
        h.send(
            f"GET /static/big.bin HTTP/1.1\r\nHost: t\r\nRange: {_ranges(long)}\r\n\r\n".encode()
        )
        h.pump_until(lambda: h.received.endswith(b"--\r\n"))
        head = bytes(h.received[: h.received.find(b"\r\n\r\n")]).decode("latin-1")
        [ctype] = re.findall(r"(?im)^content-type: (.*)$", head)
        assert bytes(h.received[len(head) + 4 :]) == expected_body(
            boundary_of(ctype.strip()), content, long
        )
        assert h.conn.path == "aio-direct"
        h.received.clear()
        h.send(f"GET /static/big.bin HTTP/1.1\r\nHost: t\r\nRange: {_ranges(TWO)}\r\n\r\n".encode())
        h.pump_until(lambda: h.received.endswith(b"--\r\n"))
        assert h.conn.path == "aio-buffered"  # short parts, cached: from the page cache


def test_without_o_direct_a_cold_part_is_sent_by_sendfile(
    harness: Harness,
    cold_root: DocRoot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file system that refuses O_DIRECT: the cold part cannot be read by AIO, so it
    goes by sendfile as it would with no probe (waiting if it must), and all is sent."""
    monkeypatch.setattr(Resource, "direct_fd", lambda self: -1)
    evict(cold_root.path / "static" / "big.bin")
    ctype, body = _multipart(harness, "/static/big.bin", TWO)
    assert body == expected_body(boundary_of(ctype), cold_root.content("/static/big.bin"), TWO)
    assert "AIO_WAIT" not in _names(harness) and harness.conn.path == "sendfile"


def test_without_o_direct_many_cold_parts_go_by_sendfile_in_one_pass(
    cold_root: DocRoot,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where O_DIRECT is refused, the first cold part turns the asking off for the rest
    of the body. Asking each part, finding it cold and sending it by a nested turn took
    6 frames a part: 600 small parts raised RecursionError and closed the connection."""
    monkeypatch.setattr(Resource, "direct_fd", lambda self: -1)
    cold_parts = 0
    read_cold_part = Sending._read_cold_part

    def counted(self: Sending) -> None:
        nonlocal cold_parts
        cold_parts += 1
        read_cold_part(self)

    monkeypatch.setattr(Sending, "_read_cold_part", counted)
    ranges = [(i * 20_000, i * 20_000 + 10) for i in range(600)]
    h = Harness(cold_root, max_ranges=600)
    # Room for all 1,200 small sends (a TCP socket would coalesce them), so the sending
    # is not cut into turns by a full socket; capped by net.core.wmem_max.
    h.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
    try:
        evict(cold_root.path / "static" / "big.bin")
        ctype, body = _multipart(h, "/static/big.bin", ranges)
        content = cold_root.content("/static/big.bin")
        assert body == expected_body(boundary_of(ctype), content, ranges)
        assert cold_parts == 1 and h.conn.path == "sendfile"
    finally:
        h.close()
