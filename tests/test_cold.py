"""A loop that never waits on the disk: page-cache probes, the mixed path (a cold range
of a /static/ body read by AIO and sent from buffers), and fair turns.

Files live under /var/tmp: a real disk, where ``posix_fadvise(DONTNEED)`` after an
``fsync`` really evicts (tmpfs pages never leave memory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import aiobind
from aiobind.pagecache import pages
from aws import transfer
from aws.loop import Loop
from aws.metrics import Shared, WorkerCounters, render
from aws.warming import Warmer, _own_description
from tests.conftest import DocRoot, make_content, start_server, stop_server
from tests.test_connection_states import Harness, RecordingConnection

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert aiobind.cachestat(fd, 0, 0).cache == 0, "the page cache kept the file"
    finally:
        os.close(fd)


def warm(path: Path, length: int) -> None:
    with open(path, "rb") as f:
        f.read(length)


@pytest.fixture
def cold_root() -> Iterator[DocRoot]:
    base = Path(tempfile.mkdtemp(prefix="aws-cold-", dir="/var/tmp"))
    root = DocRoot(base)
    try:
        for prefix in ("static", "dynamic"):
            (base / prefix).mkdir()
            for name, size in (("big.bin", 12 * MiB + 5), ("small.bin", 20_000)):
                data = make_content(size)[::-1]
                (base / prefix / name).write_bytes(data)
                root.contents[f"/{prefix}/{name}"] = data
        yield root
    finally:
        shutil.rmtree(base)


# -- the probes ------------------------------------------------------------------------


def test_cachestat_sees_eviction_and_reads(cold_root: DocRoot) -> None:
    path = cold_root.path / "static" / "big.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        # A RWF_NOWAIT miss starts readahead. On this VM's disk (the host caches it) that
        # read can complete before the probe looks again, if the vCPU is held off in
        # between (steal): the page is then readable, and the probe rightly says so. So
        # a probe that found it already read is tried again on a fresh eviction.
        for _ in range(3):
            evict(path)
            assert aiobind.cachestat(fd, 0, 0).cache == 0
            if not aiobind.uptodate_at(fd, 0):
                break
        else:
            raise AssertionError("an evicted page was readable without waiting, 3 times")
        evict(path)
        assert transfer.warm_until(fd, 0, 12 * MiB) == 0
        os.pread(fd, 5 * MiB, 0)
        assert aiobind.cachestat(fd, 0, 5 * MiB).cache == 5 * MiB // aiobind.PAGE_SIZE
        assert aiobind.uptodate_at(fd, 5 * MiB - 1)
        # warm for the first 4 MiB span; well past the 5 MiB read (and its readahead), cold
        assert transfer.warm_until(fd, 0, 12 * MiB) == transfer.PROBE_SPAN
        assert transfer.warm_until(fd, 10 * MiB, 12 * MiB) == 10 * MiB  # past readahead
    finally:
        os.close(fd)


def _cached_but(path: Path, *holes: tuple[int, int]) -> None:
    """The first 13 MiB of ``path`` in the page cache but for ``holes`` (offset, length):
    a cached file that lost a few pages. Read with readahead off, so that no large folio
    spans a hole (an fadvise DONTNEED could not take part of one out)."""
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for pos in range(0, 13 * MiB, 64 * 1024):
            if not any(off <= pos < off + length for off, length in holes):
                os.pread(fd, 64 * 1024, pos)
        for off, length in holes:
            assert aiobind.cachestat(fd, off, length).cache == 0, "a hole was read"
    finally:
        os.close(fd)


def test_a_cold_range_ends_where_the_page_cache_has_the_file_again(cold_root: DocRoot) -> None:
    path = cold_root.path / "static" / "big.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        evict(path)
        assert transfer.cold_until(fd, 0, 3 * MiB) == 3 * MiB  # all cold: one call
        _cached_but(path, (2 * MiB, 64 * 1024), (4 * MiB, 256 * 1024))
        assert transfer.cold_until(fd, 2 * MiB, 5 * MiB) == 2 * MiB + 64 * 1024
        # from inside the hole, not on a span boundary: to the same end
        assert transfer.cold_until(fd, 2 * MiB + 5000, 5 * MiB) == 2 * MiB + 64 * 1024
        # a span with a single cached page is not warm: the hole goes on through it
        os.pread(fd, 4096, 4 * MiB + 200 * 1024)
        assert transfer.cold_until(fd, 4 * MiB, 8 * MiB) == 4 * MiB + 256 * 1024
        assert transfer.cold_until(fd, 4 * MiB, 4 * MiB + 100) == 4 * MiB + 100  # the limit
    finally:
        os.close(fd)


# -- the mixed path, in-process --------------------------------------------------------


@pytest.fixture
def harness(cold_root: DocRoot) -> Iterator[Harness]:
    h = Harness(cold_root)
    yield h
    h.close()


def _get(h: Harness, path: str) -> bytes:
    h.client.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    [(status, body)] = h.responses(1)
    assert status == 200
    return body


def test_a_cold_static_body_goes_out_by_aio_without_sendfile_waiting(
    harness: Harness, cold_root: DocRoot
) -> None:
    evict(cold_root.path / "static" / "big.bin")
    assert _get(harness, "/static/big.bin") == cold_root.content("/static/big.bin")
    names = [s.name for s in harness.conn.trace]
    assert names[:4] == ["READ_HEAD", "SEND_HEAD", "SEND_FILE", "AIO_WAIT"], names
    assert "SEND_BUFFER" in names
    assert harness.conn.path == "mixed"  # sendfile and AIO
    assert harness.conn.body is None and harness.conn.res is None
    assert not harness.server.turns and not harness.conn.queued  # it left the line


def test_a_body_cold_at_the_start_goes_back_to_sendfile_where_it_is_warm(
    harness: Harness, cold_root: DocRoot
) -> None:
    path = cold_root.path / "static" / "big.bin"
    evict(path)
    with open(path, "rb") as f:  # only the tail in the page cache
        f.seek(9 * MiB)
        f.read()
    assert _get(harness, "/static/big.bin") == cold_root.content("/static/big.bin")
    names = " ".join(s.name for s in harness.conn.trace)
    assert names.startswith("READ_HEAD SEND_HEAD SEND_FILE AIO_WAIT SEND_BUFFER"), names
    # the AIO reads (O_DIRECT) leave no readahead behind: cold up to the tail, then
    # sendfile again for the part that is in the page cache
    assert "SEND_BUFFER SEND_FILE" in names and names.endswith("SEND_FILE DONE READ_HEAD")
    assert not harness.server.turns


def _lost_elsewhere(path: Path, hole: tuple[int, int]) -> bool:
    """Whether the page cache lost pages of ``path`` outside ``hole`` (this VM's kernel
    reclaims on its own, and a full suite on two cores leaves it little to spare)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        off, length = hole
        for start, stop in ((0, off), (off + length, size)):
            if aiobind.cachestat(fd, start, stop - start).cache < pages(start, stop - start):
                return True
        return False
    finally:
        os.close(fd)


def _warm_but(path: Path, hole: tuple[int, int]) -> None:
    """Read back what reclaim took, leaving ``hole`` as it is."""
    off, length = hole
    with open(path, "rb") as f:
        f.read(off)
        f.seek(off + length)
        f.read()


def test_a_small_hole_is_read_alone_and_asked_back_into_the_page_cache(
    harness: Harness, cold_root: DocRoot
) -> None:
    """A cached file that lost a few pages (reclaim): AIO reads only the hole, sendfile
    the rest, and the hole is asked back so the next download stays on sendfile. A run
    during which the kernel reclaimed other pages of the file is run again (3 times at
    most): those would be holes too, and read by AIO as they should."""
    path = cold_root.path / "static" / "big.bin"
    hole = (6 * MiB, 64 * 1024)
    for _ in range(3):
        _cached_but(path, hole)
        harness.conn.trace.clear()
        assert _get(harness, "/static/big.bin") == cold_root.content("/static/big.bin")
        names = " ".join(s.name for s in harness.conn.trace)
        if names.count("AIO_WAIT") == 1 or not _lost_elsewhere(path, hole):
            break
    assert "SEND_FILE AIO_WAIT SEND_BUFFER SEND_FILE" in names, names
    assert names.count("AIO_WAIT") == 1 and harness.conn.path == "mixed", names
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + 10
        while aiobind.cachestat(fd, 6 * MiB, 64 * 1024).cache < 16:  # WILLNEED's reads
            assert time.monotonic() < deadline, "the hole was not read back in"
            time.sleep(0.01)
    finally:
        os.close(fd)
    for _ in range(3):
        harness.conn.trace.clear()
        assert _get(harness, "/static/big.bin") == cold_root.content("/static/big.bin")
        names = " ".join(s.name for s in harness.conn.trace)
        if "AIO_WAIT" not in names or not _lost_elsewhere(path, hole):
            break
        _warm_but(path, hole)
    assert "AIO_WAIT" not in names, names


def test_a_warm_body_never_leaves_sendfile(harness: Harness, cold_root: DocRoot) -> None:
    path = cold_root.path / "static" / "big.bin"
    warm(path, 13 * MiB)
    assert _get(harness, "/static/big.bin") == cold_root.content("/static/big.bin")
    names = [s.name for s in harness.conn.trace]
    assert names == ["READ_HEAD", "SEND_HEAD", "SEND_FILE", "DONE", "READ_HEAD"], names


def test_a_cold_small_dynamic_file_is_read_direct(harness: Harness, cold_root: DocRoot) -> None:
    """Below --directio, reads are buffered and io_submit would read a cold file inside
    the call: the first request after a revalidation asks, and goes O_DIRECT if cold."""
    evict(cold_root.path / "dynamic" / "small.bin")
    assert _get(harness, "/dynamic/small.bin") == cold_root.content("/dynamic/small.bin")
    cache = harness.server.dynamic
    [res] = cache.entries.values()
    assert res.direct_fd() >= 0  # opened for the cold read
    assert not res.probe  # asked once; the next request within the interval does not


def _client(h: Harness, name: str) -> tuple[socket.socket, RecordingConnection]:
    """Another client of the harness's server, over its own socketpair."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    conn = RecordingConnection(h.server, ours, name)
    h.server.conns.add(conn)
    conn.start()
    return theirs, conn


def _drain(sock: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 20):
            out += chunk
    return out


def test_long_transfers_take_one_budget_a_turn_in_line(cold_root: DocRoot) -> None:
    """Two downloads: each turn one of them moves the whole budget (one sendfile call,
    not two half ones), and they take turns."""
    warm(cold_root.path / "static" / "big.bin", 13 * MiB)
    budget = 64 * 1024
    h = Harness(cold_root, sendfile_chunk=budget)
    try:
        other, second = _client(h, "second")
        h.client.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        other.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        h.loop.run_once()  # both heads out, both in line
        movers = []
        for _ in range(12):
            before = (h.conn.sent, second.sent)
            h.loop.run_once()
            h._read_client()
            _drain(other)
            moved = (h.conn.sent - before[0], second.sent - before[1])
            assert sum(moved) <= budget, moved
            movers.append("".join(n for n, m in zip("ab", moved, strict=True) if m))
        assert set(movers) <= {"a", "b"} and "aa" not in "".join(movers), movers
        assert movers.count("a") >= 4 and movers.count("b") >= 4, movers
    finally:
        other.close()
        h.close()


def test_a_small_request_is_answered_before_long_transfers_move(cold_root: DocRoot) -> None:
    warm(cold_root.path / "static" / "big.bin", 13 * MiB)
    h = Harness(cold_root)
    try:
        hot, _ = _client(h, "small")
        h.client.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        h.loop.run_once()
        h._read_client()
        assert h.conn.queued or h.conn.mask  # the download is in line or waits for room
        seen: list[tuple[str, int]] = []
        h.server.on_response = lambda conn: seen.append((conn.peer, h.conn.sent))
        hot.sendall(b"GET /static/small.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(50):
            at_start = h.conn.sent
            h.loop.run_once()
            h._read_client()
            if seen:
                break
        # answered in its turn before the download moved, and the download moved after
        assert seen == [("small", at_start)], (seen, at_start)
        assert h.conn.sent > at_start
        assert cold_root.content("/static/small.bin") in _drain(hot)
    finally:
        hot.close()
        h.close()


# -- end to end ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "shim"])
def test_cold_files_are_served_byte_identical(
    cold_root: DocRoot, mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path / "stats"
    srv = start_server(
        cold_root.path, docroot=cold_root, mode=mode, shim=shim, stats_path=stats, workers=1
    )
    try:
        with requests.Session() as http:
            for _ in range(2):
                for prefix in ("static", "dynamic"):
                    for name in ("big.bin", "small.bin"):
                        evict(cold_root.path / prefix / name)
                        url = f"{srv.url}/{prefix}/{name}"
                        resp = http.get(url, timeout=30)
                        assert resp.status_code == 200
                        assert resp.content == cold_root.content(f"/{prefix}/{name}")
                        ranged = http.get(url, headers={"Range": "bytes=4097-"}, timeout=30)
                        assert ranged.status_code == 206
                        assert ranged.content == cold_root.content(f"/{prefix}/{name}")[4097:]
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def test_the_path_each_response_took_is_recorded(harness: Harness, cold_root: DocRoot) -> None:
    """What the access log and the metrics report: sendfile, mixed, aio-direct, aio-buffered."""
    warm(cold_root.path / "static" / "big.bin", 13 * MiB)
    _get(harness, "/static/big.bin")
    assert harness.conn.path == "sendfile"
    harness.received.clear()
    warm(cold_root.path / "dynamic" / "small.bin", 1 << 20)
    _get(harness, "/dynamic/small.bin")  # below --directio, warm: buffered
    assert harness.conn.path == "aio-buffered"
    harness.received.clear()
    _get(harness, "/dynamic/big.bin")  # above --directio: O_DIRECT
    assert harness.conn.path == "aio-direct"


def test_a_long_body_socket_holds_little_unsent() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as tcp,
    ):
        transfer.hold_unsent(tcp)
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == transfer.UNSENT_MAX
    a, b = socket.socketpair()  # no such option on a Unix socket: nothing raised
    with a, b:
        transfer.hold_unsent(a)


def test_a_download_whose_client_hangs_up_while_in_line_ends(cold_root: DocRoot) -> None:
    warm(cold_root.path / "static" / "big.bin", 13 * MiB)
    h = Harness(cold_root, sendfile_chunk=64 * 1024)
    try:
        other, second = _client(h, "second")
        h.client.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        other.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(3):
            h.loop.run_once()
            h._read_client()
            _drain(other)
        waiting = second if second.queued else h.conn
        assert waiting.queued and waiting.mask == 0  # in line, not asking epoll for room
        (other if waiting is second else h.client).close()
        for _ in range(20):
            h.loop.run_once()
            if waiting.state.name == "CLOSED":
                break
            if waiting is second:
                h._read_client()
            else:
                _drain(other)
        assert waiting.state.name == "CLOSED" and not waiting.queued
        assert waiting not in h.server.turns.line
    finally:
        with contextlib.suppress(OSError):
            other.close()
        h.close()


def test_the_line_is_a_gauge(cold_root: DocRoot) -> None:
    warm(cold_root.path / "static" / "big.bin", 13 * MiB)
    shared = Shared(1)
    slot = shared.claim(0)
    assert slot is not None
    shared.bind(slot, os.getpid())
    counters = WorkerCounters(shared.live(slot))
    h = Harness(cold_root, counters=counters, sendfile_chunk=64 * 1024)
    try:
        other, _ = _client(h, "second")
        h.client.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        other.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        h.loop.run_once()
        h.loop.run_once()
        waiting = len(h.server.turns)
        assert waiting >= 1  # one budget a turn: the other download waits its turn
        counters.sample()
        families = {f.name: f for f in text_string_to_metric_families(render(shared.snapshot()))}
        [sample] = families["aws_transfers_in_line"].samples
        assert sample.labels == {"worker": "0"} and sample.value == waiting
        other.close()
    finally:
        h.close()


# -- --static-cold cache: cold ranges read into the page cache by the warming threads --


def _links_to(path: Path) -> int:
    """This process's descriptors open on ``path``."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            count += os.readlink(fds / fd) == str(path)
    return count


def _cached_but_reclaimed(path: Path) -> int:
    """The whole file went into the page cache: every page is there but those the kernel
    took back on its own since (this VM reclaims page cache: at most 1% here, counted by
    cachestat as evicted). Returns how many it took back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        stat = aiobind.cachestat(fd, 0, 0)
    finally:
        os.close(fd)
    total = pages(0, path.stat().st_size)
    assert stat.cache + stat.evicted >= total and stat.cache >= total * 0.99, stat
    return total - stat.cache


def test_cache_mode_reads_a_cold_body_into_the_page_cache_and_sendfiles_it(
    cold_root: DocRoot,
) -> None:
    path = cold_root.path / "static" / "big.bin"
    h = Harness(cold_root, static_cold="cache")
    try:
        evict(path)
        assert _get(h, "/static/big.bin") == cold_root.content("/static/big.bin")
        names = [s.name for s in h.conn.trace]
        assert names[:5] == ["READ_HEAD", "SEND_HEAD", "SEND_FILE", "AIO_WAIT", "SEND_FILE"]
        assert "SEND_BUFFER" not in names  # no AIO buffer: every byte went by sendfile
        assert h.conn.path == "mixed"
        missing = _cached_but_reclaimed(path)  # left in the page cache for the next request
    finally:
        h.close()
    again = Harness(cold_root, static_cold="cache")
    try:  # the next client finds it cached: sendfile alone, but for what the kernel took
        assert _get(again, "/static/big.bin") == cold_root.content("/static/big.bin")
        assert [s.name for s in again.conn.trace].count("AIO_WAIT") <= missing
        assert again.conn.path in (("sendfile", "mixed") if missing else ("sendfile",))
    finally:
        again.close()


def test_cache_mode_a_client_gone_mid_read_leaves_no_descriptor(cold_root: DocRoot) -> None:
    """The warming thread reads through a descriptor of its own and closes it when its
    range is in, even for a transfer that ended meanwhile; the response is logged."""
    path = cold_root.path / "static" / "big.bin"
    h = Harness(cold_root, static_cold="cache")
    try:
        evict(path)
        h.client.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        h.pump_until(lambda: h.conn.state.name == "AIO_WAIT")
        h.client.shutdown(socket.SHUT_RDWR)  # gone: the next send after the read fails
        h.pump_until(lambda: h.conn.state.name == "CLOSED")
        deadline = time.monotonic() + 10
        while _links_to(path) > 1 and time.monotonic() < deadline:  # 1: the open-file cache's
            h.loop.run_once()
        assert _links_to(path) <= 1
        assert h.conn.res is None and h.conn.path == "mixed"
    finally:
        h.close()


def test_cache_mode_a_range_gone_again_before_it_was_sent_is_read_again(
    cold_root: DocRoot,
) -> None:
    """The kernel may take back what the threads read before the transfer gets there
    (reclaim, another process's DONTNEED): with nothing asked still to come, the
    transfer asks again instead of waiting for a completion that will never come."""
    path = cold_root.path / "static" / "big.bin"
    h = Harness(cold_root, static_cold="cache")
    try:
        evict(path)
        h.client.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        conn = h.conn
        deadline = time.monotonic() + 10  # the client reads nothing: the socket fills
        while not (conn.state.name == "SEND_FILE" and not conn.warm_pending and conn.pos):
            assert time.monotonic() < deadline, (conn.state.name, conn.warm_pending, conn.pos)
            h.loop.run_once()
        assert conn.pos < conn.warm_ahead < conn.stop  # asked ahead, and all of it came
        conn.warm_to = conn.pos  # as at the end of a probed span: the next send asks again
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # and now it is gone
        finally:
            os.close(fd)
        [(status, body)] = h.responses(1)
        assert status == 200 and body == cold_root.content("/static/big.bin")
        assert "AIO_WAIT" in [s.name for s in conn.trace][5:]  # it waited again, and woke
    finally:
        h.close()


def test_cache_mode_a_late_completion_for_the_last_response_leaves_the_next_alone(
    cold_root: DocRoot,
) -> None:
    """A window of response 1 may come in while response 2 on the same keep-alive
    connection waits for its own: it must not count as one of response 2's."""
    path = cold_root.path / "static" / "big.bin"
    h = Harness(cold_root, static_cold="cache")
    try:
        evict(path)
        assert _get(h, "/static/big.bin") == cold_root.content("/static/big.bin")
        evict(path)
        h.received.clear()
        h.client.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        conn = h.conn
        h.pump_until(lambda: conn.state.name == "AIO_WAIT" and conn.warm_pending)
        pending = set(conn.warm_pending)
        conn._warmed(conn.requests - 1, min(pending))  # response 1's, arriving late
        assert conn.warm_pending == pending and conn.state.name == "AIO_WAIT"
        [(status, body)] = h.responses(1)
        assert status == 200 and body == cold_root.content("/static/big.bin")
    finally:
        h.close()


def test_cache_mode_a_range_the_threads_cannot_read_is_sent_anyway(cold_root: DocRoot) -> None:
    """A failed read (here: the threads' /dev/null refuses writes) is reported like a
    done one; the range is still cold, nothing more is coming, so it goes out by
    sendfile slice by slice instead of waiting."""
    path = cold_root.path / "static" / "big.bin"
    h = Harness(cold_root, static_cold="cache")
    warmer = h.server.warmer
    assert warmer is not None
    broken = os.open(os.devnull, os.O_RDONLY)
    os.close(warmer.null)
    warmer.null = broken  # sendfile to it fails with EBADF
    try:
        evict(path)
        assert _get(h, "/static/big.bin") == cold_root.content("/static/big.bin")
        assert h.conn.path == "mixed"
    finally:
        h.close()


@pytest.mark.parametrize("mode", ["plain", "shim"])
def test_cache_mode_downloads_end_to_end_leave_the_file_cached(
    cold_root: DocRoot, mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The real server with --static-cold cache: an evicted file is served byte for byte,
    in a range and whole, and the request after that finds it in the page cache."""
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path / "stats"
    log = tmp_path / "access.log"
    srv = start_server(
        cold_root.path,
        docroot=cold_root,
        mode=mode,
        shim=shim,
        stats_path=stats,
        workers=1,
        extra=["--static-cold", "cache", "--access-log", str(log), "--log-format", "json"],
    )
    path = cold_root.path / "static" / "big.bin"
    content = cold_root.content("/static/big.bin")
    try:
        evict(path)
        with requests.Session() as http:
            url = f"{srv.url}/static/big.bin"
            ranged = http.get(url, headers={"Range": "bytes=5000000-"}, timeout=30)
            assert ranged.status_code == 206 and ranged.content == content[5_000_000:]
            assert http.get(url, timeout=30).content == content  # its first part was cold
            missing = _cached_but_reclaimed(path)
            assert http.get(url, timeout=30).content == content
        deadline = time.monotonic() + 5
        while log.read_text().count("\n") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        vias = [line.split('"via":"')[1].split('"')[0] for line in log.read_text().splitlines()]
        assert vias[:2] == ["mixed", "mixed"], vias
        assert vias[2:] in ([["sendfile"], ["mixed"]] if missing else [["sendfile"]]), vias
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


class _Asker:
    """A stand-in for the connection that asked: what its failures were."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_event(self, events: int) -> None:
        pass

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)


def test_a_closed_warmer_lets_its_threads_close_the_eventfd(cold_root: DocRoot) -> None:
    """A range may finish after the server that asked for it closed: the eventfd stays
    open until the last thread is gone, so no late write lands on a reused number, and
    then it is closed (not left open)."""
    loop = Loop()
    warmer = Warmer(loop, threads=2)
    fd = os.open(cold_root.path / "static" / "big.bin", os.O_RDONLY)
    try:
        evict(cold_root.path / "static" / "big.bin")
        for start in (0, 4 * MiB, 8 * MiB):  # one per thread, and one queued
            warmer.warm(fd, start, start + 4 * MiB, _Asker(), lambda: None)
        efd = os.fstat(warmer.efd).st_ino
        warmer.close()  # at once, with reads in flight
        assert os.fstat(warmer.efd).st_ino == efd  # still open: a thread may yet write
        with pytest.raises(RuntimeError):
            warmer.warm(fd, 0, MiB, _Asker(), lambda: None)
        deadline = time.monotonic() + 10
        while warmer.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert warmer.running == 0
        assert not [t for t in threading.enumerate() if t.name.startswith("aws-warm-")]
        with contextlib.suppress(OSError):  # closed by the last thread (or the number reused)
            assert os.fstat(warmer.efd).st_ino != efd
    finally:
        os.close(fd)
        loop.close()


def test_a_failing_completion_fails_its_connection_not_the_others(cold_root: DocRoot) -> None:
    """What the transfer's callback raises closes that transfer (its on_error), as a
    failing event handler would; the next completion still runs."""
    loop = Loop()
    warmer = Warmer(loop, threads=1)
    fd = os.open(cold_root.path / "static" / "small.bin", os.O_RDONLY)
    failing, fine = _Asker(), _Asker()
    ran: list[str] = []

    def boom() -> None:
        raise ValueError("boom")

    try:
        warmer.warm(fd, 0, 20_000, failing, boom)
        warmer.warm(fd, 0, 20_000, fine, lambda: ran.append("fine"))
        deadline = time.monotonic() + 10
        while not ran and time.monotonic() < deadline:
            loop.run_once()
        assert ran == ["fine"] and not fine.errors
        assert [str(e) for e in failing.errors] == ["boom"]
    finally:
        warmer.close()
        os.close(fd)
        loop.close()


def test_a_warmer_shared_by_a_reload_closes_with_its_last_server() -> None:
    loop = Loop()
    warmer = Warmer(loop)
    try:
        assert warmer.share() is warmer
        warmer.close()
        assert not warmer.closed and warmer.efd in loop.handlers
        warmer.close()
        assert warmer.closed and warmer.efd not in loop.handlers
    finally:
        loop.close()


def test_each_window_is_read_through_a_description_of_its_own(cold_root: DocRoot) -> None:
    """Not the dup's shared readahead state: the same file opened again, the dup closed."""
    path = cold_root.path / "static" / "big.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        dup = os.dup(fd)
        own = _own_description(dup)
        try:
            assert own != fd and os.path.samestat(os.fstat(own), os.fstat(fd))
            os.lseek(own, 4096, os.SEEK_SET)
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # its own offset: its own description
            assert not os.path.exists(f"/proc/self/fd/{dup}")  # the dup is closed
        finally:
            os.close(own)
    finally:
        os.close(fd)


def test_cache_mode_survives_a_reload_in_one_process(cold_root: DocRoot, tmp_path: Path) -> None:
    """SIGHUP to the single process with --static-cold cache: the new server takes the
    warming threads over, cold files are still read into the page cache and served
    whole, and the stop after it is clean."""
    second = make_content(9 * MiB + 3)
    (cold_root.path / "static" / "big2.bin").write_bytes(second)
    cold_root.contents["/static/big2.bin"] = second
    srv = start_server(
        cold_root.path, docroot=cold_root, workers=1, extra=["--static-cold", "cache"]
    )
    try:
        for name in ("big.bin", "big2.bin"):  # one before the reload, one after
            if name == "big2.bin":
                srv.proc.send_signal(signal.SIGHUP)
                assert srv.wait_for_log("SIGHUP: reloaded the configuration", 10), srv.log()
            path = cold_root.path / "static" / name
            evict(path)
            with requests.get(f"{srv.url}/static/{name}", timeout=30) as resp:
                assert resp.content == cold_root.content(f"/static/{name}")
            _cached_but_reclaimed(path)
    finally:
        assert stop_server(srv.proc) == 0, srv.log()
