"""Hardening, end to end: timeouts, limits, faults, signals, load and descriptor limits.

Every test here runs its own ``python -m aws`` (``start_server``) with short timeouts or
special limits, so one test's abuse never disturbs the shared ``server`` fixture. The
worker's state is read from ``/proc``: its open descriptors (``/proc/<pid>/fd``), its CPU
time (``/proc/<pid>/stat``) and its memory (``/proc/<pid>/status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import DocRoot, ServerProcess, http_get, start_server, stop_server

BIG = 32 * 1024 * 1024  # larger than every socket buffer between server and client
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- helpers -------------------------------------------------------------------------------


def worker_pid(srv: ServerProcess) -> int:
    [pid] = srv.worker_pids()
    return pid


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def wait_fds(pid: int, target: int, timeout: float = 3.0) -> int:
    """Wait until the worker holds at most ``target`` descriptors; returns the last count."""
    wait_for(lambda: fd_count(pid) <= target, timeout)
    return fd_count(pid)


def wait_log(srv: ServerProcess, needle: str, timeout: float = 3.0) -> bool:
    return wait_for(lambda: needle in srv.log(), timeout)


def get_request(path: str, *, close: bool = True, extra: str = "") -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{conn}{extra}\r\n".encode()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def fetch(addr: tuple[str, int], path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    status, _, body = parse(http_get(addr, get_request(path), timeout))
    return status, body


def open_request(
    addr: tuple[str, int], path: str, rcvbuf: int | None = None, timeout: float = 10.0
) -> socket.socket:
    """A connection that has sent ``GET path`` and read nothing yet."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(addr)
    s.sendall(get_request(path))
    return s


def read_head(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read up to the end of the head; returns (status, headers, body bytes already read)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the head: {buf[:200]!r}")
        buf += chunk
    return parse(buf)


def read_some(s: socket.socket, body: bytearray, n: int) -> None:
    while len(body) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed early")
        body += chunk


def read_to_eof(s: socket.socket, body: bytearray, limit: float = 15.0) -> bool:
    """Read until the peer closes; True if it closed (EOF or reset) within ``limit``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except ConnectionResetError:
            return True
        except TimeoutError:
            continue
        if not chunk:
            return True
        body += chunk
    return False


def reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the client vanishes mid-transfer."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Tree:
    """A mutable document root private to this module."""

    path: Path
    contents: dict[str, bytes] = field(default_factory=dict)

    def add(self, url: str, data: bytes) -> Path:
        p = self.path / url.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.contents[url] = data
        return p

    def docroot(self) -> DocRoot:
        return DocRoot(self.path, self.contents)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    t = Tree(tmp_path_factory.mktemp("hardening"))
    big = os.urandom(BIG)
    for prefix in ("static", "dynamic"):
        t.add(f"/{prefix}/hello.txt", b"hello\n")
        t.add(f"/{prefix}/big.bin", big)
        t.add(f"/{prefix}/mid.bin", big[: 3 * 1024 * 1024 + 5])
    return t


@contextlib.contextmanager
def running(root: Path, docroot: DocRoot, *flags: str, **kw: object) -> Iterator[ServerProcess]:
    srv = start_server(root, docroot=docroot, workers=1, extra=list(flags), **kw)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        stop_server(srv.proc)


@pytest.fixture(scope="module")
def short(tree: Tree) -> Iterator[ServerProcess]:
    """One worker with 1 s header, keep-alive and send timeouts."""
    flags = ("--header-timeout", "1", "--keepalive-timeout", "1", "--send-timeout", "1")
    with running(tree.path, tree.docroot(), *flags) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_aio(tree: Tree) -> Iterator[ServerProcess]:
    """An AIO context of 2 slots and 64 KiB chunks: io_submit is refused all the time."""
    flags = ("--aio-maxevents", "2", "--aio-chunk", "65536", "--send-timeout", "2")
    with running(tree.path, tree.docroot(), *flags) as srv:
        yield srv


def warm(srv: ServerProcess, *paths: str) -> int:
    """Request each path once (so the open-file cache holds it); returns the idle fd count."""
    for path in paths:
        status, body = fetch(srv.addr, path)
        assert status == 200
        assert body == srv.root.content(path)
    pid = worker_pid(srv)
    time.sleep(0.3)
    return fd_count(pid)


# -- timeouts ------------------------------------------------------------------------------


def test_slowloris_gets_408_and_is_closed(short: ServerProcess) -> None:
    slow = socket.create_connection(short.addr, timeout=5)
    silent = socket.create_connection(short.addr, timeout=5)
    start = time.monotonic()
    raw = b""
    try:
        for byte in b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n":
            slow.send(bytes([byte]))
            time.sleep(0.04)  # trickles for ~1.7 s: past the 1 s header timeout
            if time.monotonic() - start > 4:
                break
    except OSError:
        pass  # the server closed it under our feet: what we want
    with contextlib.suppress(OSError):
        while chunk := slow.recv(65536):
            raw += chunk
    took = time.monotonic() - start
    slow.close()
    assert raw.startswith(b"HTTP/1.1 408 "), raw[:100]
    assert b"Connection: close" in raw
    assert took < 4
    # A client that connects and sends nothing at all gets the same.
    data = b""
    with contextlib.suppress(OSError):
        while chunk := silent.recv(65536):
            data += chunk
    silent.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert wait_log(short, "408, no complete request")


def test_idle_keepalive_connection_is_closed(short: ServerProcess) -> None:
    with socket.create_connection(short.addr, timeout=5) as s:
        s.sendall(get_request("/static/hello.txt", close=False))
        status, headers, _body = read_head(s)
        assert status == 200 and headers["connection"] == "keep-alive"
        start = time.monotonic()
        assert s.recv(100) == b""  # closed without a word, 1 s keep-alive timeout
        assert 0.7 < time.monotonic() - start < 3


def test_partial_second_request_gets_408(short: ServerProcess) -> None:
    """The next request's first byte starts its own header clock on a kept-alive
    connection: half a head, then silence, is a slowloris too."""
    with socket.create_connection(short.addr, timeout=5) as s:
        s.sendall(get_request("/static/hello.txt", close=False))
        assert read_head(s)[0] == 200
        s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHo")
        start = time.monotonic()
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 408 ")
        assert 0.7 < time.monotonic() - start < 3


def test_second_request_within_keepalive_is_served(short: ServerProcess) -> None:
    with socket.create_connection(short.addr, timeout=5) as s:
        for _ in range(3):
            s.sendall(get_request("/static/hello.txt", close=False))
            status, _, body = read_head(s)
            assert status == 200 and body == b"hello\n"
            time.sleep(0.5)  # idle, but less than the keep-alive timeout


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_client_that_stops_reading_is_dropped(short: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/big.bin"
    pid = worker_pid(short)
    idle = warm(short, f"/{prefix}/hello.txt", path)
    s = open_request(short.addr, path, rcvbuf=16384)
    try:
        assert wait_for(lambda: fd_count(pid) > idle, 2)
        cpu0 = cpu_seconds(pid)
        # Blocked: 1 s send timeout, swept every 0.25 s. Nothing spins meanwhile.
        assert wait_fds(pid, idle, timeout=4) == idle
        assert cpu_seconds(pid) - cpu0 < 0.2
        body = bytearray()
        assert read_to_eof(s, body, 5)
        assert len(body) < BIG
    finally:
        s.close()
    assert wait_log(short, "dropped, no progress")


def test_slow_but_steady_reader_is_not_dropped(short: ServerProcess) -> None:
    """The send timeout counts time without progress, not the length of the transfer."""
    path = "/static/big.bin"
    s = open_request(short.addr, path, rcvbuf=65536)
    try:
        status, _headers, first = read_head(s)
        assert status == 200
        body = bytearray(first)
        start = time.monotonic()
        while len(body) < BIG:
            read_some(s, body, min(BIG, len(body) + 2 * 1024 * 1024))
            time.sleep(0.12)  # ~16 MiB/s: a transfer of ~2 s, twice the send timeout
        assert time.monotonic() - start > 1.2
        assert sha(body) == sha(short.root.content(path))
    finally:
        s.close()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_a_reader_too_slow_to_wake_epollout_is_not_dropped(
    short: ServerProcess, prefix: str
) -> None:
    """A client taking 16 KiB every 0.1 s frees far less than the third of a
    multi-megabyte send buffer that EPOLLOUT waits for, for many times the 1 s send
    timeout; it is reading, so it stays (the socket's queue is seen to shrink)."""
    s = open_request(short.addr, f"/{prefix}/big.bin")
    try:
        status, _headers, first = read_head(s)
        assert status == 200
        body = bytearray(first)
        time.sleep(0.5)  # the send buffer fills
        start = time.monotonic()
        while time.monotonic() - start < 4:
            chunk = s.recv(16 * 1024)
            assert chunk, "dropped while reading"
            body += chunk
            time.sleep(0.1)
        assert sha(bytes(body)) == sha(short.root.content(f"/{prefix}/big.bin")[: len(body)])
    finally:
        s.close()


# -- limits --------------------------------------------------------------------------------


def test_connection_cap_closes_new_connections_at_once(tree: Tree) -> None:
    with running(tree.path, tree.docroot(), "--max-connections", "8") as srv:
        held = []
        try:
            for _ in range(8):
                s = socket.create_connection(srv.addr, timeout=5)
                s.sendall(get_request("/static/hello.txt", close=False))
                status, _, body = read_head(s)
                assert status == 200 and body == b"hello\n"
                held.append(s)
            extra = socket.create_connection(srv.addr, timeout=5)
            start = time.monotonic()
            try:
                closed = extra.recv(100) == b""
            except ConnectionResetError:
                closed = True
            extra.close()
            assert closed and time.monotonic() - start < 1
            assert wait_log(srv, "connection limit 8 reached")
            held.pop().close()
            time.sleep(0.2)
            status, body = fetch(srv.addr, "/static/hello.txt")
            assert status == 200 and body == b"hello\n"
            for s in held:  # the 7 others were never disturbed
                s.sendall(get_request("/static/hello.txt", close=False))
                assert read_head(s)[0] == 200
        finally:
            for s in held:
                s.close()


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_fd_limit_64_with_200_clients_keeps_serving_without_spinning(tree: Tree) -> None:
    """Past EMFILE the worker stops polling its listener for a moment instead of
    spinning on it, keeps serving what it has, and every client is served in the end."""
    flags = ("--header-timeout", "30", "--keepalive-timeout", "30")
    with running(tree.path, tree.docroot(), *flags, preexec=_limit_fds) as srv:
        pid = worker_pid(srv)
        assert Path(f"/proc/{pid}/limits").read_text().count(" 64 ") >= 1
        warm(srv, "/static/hello.txt")
        clients = [socket.create_connection(srv.addr, timeout=10) for _ in range(200)]
        try:
            # Everybody connected, nobody sent anything: the worker holds all it can.
            assert wait_for(lambda: fd_count(pid) >= 60, 3), fd_count(pid)
            assert wait_log(srv, "pausing accepts")
            time.sleep(0.3)
            cpu0 = cpu_seconds(pid)
            time.sleep(2.0)
            idle_cpu = cpu_seconds(pid) - cpu0
            print(f"\n[ulimit 64] worker CPU over 2 s with 200 clients waiting: {idle_cpu:.3f} s")
            assert idle_cpu < 0.2
            assert srv.proc.poll() is None
            # The oldest connection was accepted; it asks for a file not open yet, with
            # no descriptor left to open it: 503 (and a retry later), not a crash.
            clients[0].sendall(get_request("/dynamic/hello.txt"))
            assert read_head(clients[0])[0] == 503
            results = asyncio.run(_serve_all(srv.addr, clients))
        finally:
            for s in clients:
                s.close()
        ok = sum(1 for r in results if r == "ok")
        print(f"[ulimit 64] {ok}/200 served; retries {sum(_RETRIES)}")
        assert ok == 200, [r for r in results if r != "ok"][:5]
        assert srv.alive()
        assert "Traceback" not in srv.log()


_RETRIES: list[int] = []


async def _serve_all(addr: tuple[str, int], socks: list[socket.socket]) -> list[str]:
    """Each client sends its request on its pending connection; a client whose
    connection was closed without a correct answer retries on a new one."""
    _RETRIES.clear()

    async def one(sock: socket.socket, path: str) -> str:
        tries = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                if sock is not None:
                    sock.setblocking(False)
                    reader, writer = await asyncio.open_connection(sock=sock)
                else:
                    reader, writer = await asyncio.open_connection(*addr)
                sock = None  # type: ignore[assignment]
                try:
                    writer.write(get_request(path))
                    await writer.drain()
                    raw = await asyncio.wait_for(reader.read(), 20)
                finally:
                    writer.close()
                if raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\nhello\n"):
                    return "ok"
            except (TimeoutError, OSError):
                pass
            sock = None  # type: ignore[assignment]
            tries += 1
            _RETRIES.append(1)
            await asyncio.sleep(0.05 * min(tries, 10))
        return "gave up"

    # /static/hello.txt is in the open-file cache; /dynamic/hello.txt is opened while
    # every descriptor is taken (EMFILE: 503, then a retry).
    paths = ("/static/hello.txt", "/dynamic/hello.txt")
    return await asyncio.gather(*(one(s, paths[i % 2]) for i, s in enumerate(socks)))


# -- faults: clients vanishing -------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_client_reset_mid_transfer_releases_everything(short: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/big.bin"
    pid = worker_pid(short)
    idle = warm(short, f"/{prefix}/hello.txt", path)
    rss0 = rss_kib(pid)
    for i in range(30):
        s = open_request(short.addr, path, rcvbuf=65536 if i % 2 else None)
        status, _, first = read_head(s)
        assert status == 200
        read_some(s, bytearray(first), 100_000 * (1 + i % 5))
        if i % 3 == 2:
            s.close()  # unread data: the kernel resets it too
        else:
            reset(s)
    assert wait_fds(pid, idle) == idle
    # Buffers went back to the pool (bounded), not leaked per connection.
    assert rss_kib(pid) - rss0 < 48 * 1024
    status, body = fetch(short.addr, path, timeout=30)
    assert status == 200 and sha(body) == sha(short.root.content(path))


def test_resets_with_reads_in_flight_and_queued(tiny_aio: ServerProcess) -> None:
    """With 2 AIO slots, resets leave reads in flight and in the EAGAIN backlog. Each is
    reaped before its buffer is reused: concurrent full downloads stay byte-identical,
    and afterwards nothing is held (the context would be wedged if a slot leaked)."""
    srv = tiny_aio
    pid = worker_pid(srv)
    idle = warm(srv, "/dynamic/hello.txt", "/dynamic/big.bin", "/dynamic/mid.bin")
    expected = sha(srv.root.content("/dynamic/mid.bin"))
    errors: list[str] = []

    def downloader() -> None:
        for _ in range(3):
            try:
                status, body = fetch(srv.addr, "/dynamic/mid.bin", timeout=30)
                if status != 200 or sha(body) != expected:
                    errors.append(f"status {status}, {len(body)} bytes, wrong content")
            except OSError as exc:
                errors.append(repr(exc))

    def resetter() -> None:
        for i in range(15):
            try:
                s = open_request(srv.addr, "/dynamic/big.bin")
                if i % 2:
                    read_head(s)
                reset(s)
            except OSError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=downloader) for _ in range(4)]
    threads += [threading.Thread(target=resetter) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert wait_fds(pid, idle) == idle
    status, body = fetch(srv.addr, "/dynamic/big.bin", timeout=30)
    assert status == 200 and sha(body) == sha(srv.root.content("/dynamic/big.bin"))


def test_io_submit_eagain_queues_reads_until_a_slot_frees(tiny_aio: ServerProcess) -> None:
    """16 concurrent dynamic downloads through a 2-slot context: every read that
    io_submit refuses waits in the backlog, none is lost, all bytes are right."""
    srv = tiny_aio
    results: list[tuple[int, str]] = []
    paths = ["/dynamic/mid.bin", "/dynamic/hello.txt"]

    def one(i: int) -> None:
        path = paths[i % 2]
        try:
            status, body = fetch(srv.addr, path, timeout=30)
            results.append((status, "ok" if body == srv.root.content(path) else "bad body"))
        except OSError as exc:
            results.append((0, repr(exc)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [(200, "ok")] * 16


# -- faults: files changing under a transfer -----------------------------------------------


def _start_slow_download(srv: ServerProcess, path: str) -> tuple[socket.socket, bytearray]:
    s = open_request(srv.addr, path, rcvbuf=65536)
    status, headers, first = read_head(s)
    assert status == 200
    assert int(headers["content-length"]) == 16 * 1024 * 1024
    body = bytearray(first)
    read_some(s, body, 1024 * 1024)
    return s, body


def _next_request_sees(srv: ServerProcess, path: str, want: tuple[int, bytes | None]) -> float:
    """Poll until ``path`` answers ``want``; returns how long that took."""
    start = time.monotonic()
    while True:
        status, body = fetch(srv.addr, path)
        if status == want[0] and (want[1] is None or body == want[1]):
            return time.monotonic() - start
        assert time.monotonic() - start < 3, f"still {status}, {len(body)} bytes"
        time.sleep(0.05)


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_file_truncated_during_transfer(short: ServerProcess, tree: Tree, prefix: str) -> None:
    url = f"/{prefix}/trunc-{uuid.uuid4().hex}.bin"
    data = os.urandom(16 * 1024 * 1024)
    file = tree.add(url, data)
    pid = worker_pid(short)
    s, body = _start_slow_download(short, url)
    try:
        os.truncate(file, 5000)
        start = time.monotonic()
        assert read_to_eof(s, body, 10), "the transfer hung"
        assert time.monotonic() - start < 5
        assert len(body) < len(data), "the connection should have ended early"
        assert body == data[: len(body)] or body[: 1024 * 1024] == data[: 1024 * 1024]
    finally:
        s.close()
    assert wait_log(short, "connection ended early")
    cpu0 = cpu_seconds(pid)
    # The transfer that found the file shorter had the cache re-check it: the very next
    # request sees the new file, without waiting for the 1 s revalidation.
    assert fetch(short.addr, url) == (200, data[:5000])
    time.sleep(0.5)
    assert cpu_seconds(pid) - cpu0 < 0.3  # nothing left spinning on the dead transfer
    file.unlink()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_file_replaced_during_transfer(short: ServerProcess, tree: Tree, prefix: str) -> None:
    url = f"/{prefix}/repl-{uuid.uuid4().hex}.bin"
    old = os.urandom(16 * 1024 * 1024)
    file = tree.add(url, old)
    s, body = _start_slow_download(short, url)
    try:
        new = b"the new file\n"
        tmp = file.with_suffix(".tmp")
        tmp.write_bytes(new)
        os.replace(tmp, file)
        replaced = time.monotonic()
        # The transfer in flight keeps its open file: it ends (complete, old bytes).
        assert read_to_eof(s, body, 10), "the transfer hung"
        assert len(body) == len(old) and sha(body) == sha(old)
    finally:
        s.close()
    _next_request_sees(short, url, (200, new))
    assert time.monotonic() - replaced < 1.6  # revalidated within the 1 s window
    file.unlink()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_file_deleted_during_transfer(short: ServerProcess, tree: Tree, prefix: str) -> None:
    url = f"/{prefix}/del-{uuid.uuid4().hex}.bin"
    data = os.urandom(16 * 1024 * 1024)
    file = tree.add(url, data)
    s, body = _start_slow_download(short, url)
    try:
        file.unlink()
        deleted = time.monotonic()
        assert read_to_eof(s, body, 10), "the transfer hung"
        assert len(body) <= len(data) and body == data[: len(body)]
    finally:
        s.close()
    _next_request_sees(short, url, (404, None))
    assert time.monotonic() - deleted < 1.6


# -- faults: AIO ---------------------------------------------------------------------------


def test_io_setup_failure_is_one_line_and_nonzero_exit(tree: Tree) -> None:
    """io_setup asked for more events than fs.aio-max-nr allows fails with EAGAIN: the
    same failure as an exhausted system-wide limit, without touching the global sysctl
    (other servers on this machine keep their contexts)."""
    max_nr = int(Path("/proc/sys/fs/aio-max-nr").read_text())
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "aws", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--root", str(tree.path), "--workers", "1", "--aio-maxevents", str(max_nr + 1)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "io_setup" in lines[0] and "aio-max-nr" in lines[0]
    assert "Traceback" not in proc.stderr


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[Path]:
    """A document root whose dynamic/ is a small ext4 on a loop device, to be shut down.

    Shutting an ext4 down (the ioctl xfstests uses) makes every later read of it fail
    with EIO, a real I/O error coming back in the AIO completion.
    """
    if (
        os.geteuid() != 0
        or not shutil.which("mkfs.ext4")
        or not os.path.exists("/dev/loop-control")
    ):
        pytest.skip("needs root, mkfs.ext4 and loop devices")
    root = tmp_path / "root"
    (root / "static").mkdir(parents=True)
    (root / "static" / "hello.txt").write_bytes(b"hello\n")
    mnt = root / "dynamic"
    mnt.mkdir()
    img = tmp_path / "disk.img"
    with open(img, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    done = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device: {done.stderr.decode().strip()}")
    try:
        assert os.stat(mnt).st_dev != os.stat(tmp_path).st_dev
        yield root
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_io_error_in_completion_ends_that_connection(failing_disk: Path) -> None:
    root = failing_disk
    data = os.urandom(4 * 1024 * 1024)
    (root / "dynamic" / "data.bin").write_bytes(data)
    docroot = DocRoot(root, {"/dynamic/data.bin": data, "/static/hello.txt": b"hello\n"})
    with running(root, docroot) as srv:
        status, body = fetch(srv.addr, "/dynamic/data.bin")
        assert status == 200 and body == data  # read with O_DIRECT, from the disk
        fd = os.open(root / "dynamic", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert os.fstat(fd).st_dev != os.stat(root).st_dev  # never the host's disk
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        raw = http_get(srv.addr, get_request("/dynamic/data.bin"), timeout=10)
        # The head waits for the first chunk, which failed: closed with no response.
        assert not raw.startswith(b"HTTP/1.1 200") or len(raw) < len(data)
        assert wait_log(srv, "connection ended early: reading the file failed")
        assert "Input/output error" in srv.log() or "Errno 5" in srv.log()
        status, body = fetch(srv.addr, "/static/hello.txt")
        assert status == 200 and body == b"hello\n"  # the worker serves on


# -- signals -------------------------------------------------------------------------------


class SlowReader(threading.Thread):
    """Downloads ``path`` at about ``rate`` bytes/s with a small receive buffer."""

    def __init__(self, addr: tuple[str, int], path: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.sock = open_request(addr, path, rcvbuf=65536, timeout=20)
        self.rate = rate
        self.body = bytearray()
        self.status = 0
        self.length = -1
        self.closed = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.status, headers, first = read_head(self.sock)
            self.length = int(headers["content-length"])
            self.body += first
            start = time.monotonic()
            while len(self.body) < self.length:
                chunk = self.sock.recv(256 * 1024)
                if not chunk:
                    self.closed = True
                    return
                self.body += chunk
                ahead = len(self.body) / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as exc:
            self.error = exc
        finally:
            self.sock.close()


def _refused(addr: tuple[str, int]) -> bool:
    try:
        socket.create_connection(addr, timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_drains_transfers_in_flight_then_exits_0(docroot: DocRoot, signo: int) -> None:
    big = "/static/f67108864.bin"
    dyn = "/dynamic/f67108864.bin"
    srv = start_server(docroot.path, docroot=docroot, workers=1, extra=["--drain-timeout", "20"])
    try:
        readers = [SlowReader(srv.addr, p, 24e6) for p in (big, dyn)]
        for r in readers:
            r.start()
        assert wait_for(lambda: all(len(r.body) > 1 << 20 for r in readers), 5)
        with socket.create_connection(srv.addr, timeout=5) as idle:
            idle.sendall(get_request("/static/hello.txt", close=False))
            assert read_head(idle)[0] == 200
            srv.proc.send_signal(signo)
            assert wait_for(lambda: _refused(srv.addr), 3), "still accepting"
            assert idle.recv(100) == b""  # idle keep-alive connections are closed at once
        assert srv.proc.poll() is None  # still finishing the transfers
        for r in readers:
            r.join(20)
            assert not r.is_alive() and r.error is None and not r.closed
            assert r.status == 200 and len(r.body) == r.length
        assert sha(readers[0].body) == sha(docroot.content(big))
        assert sha(readers[1].body) == sha(docroot.content(dyn))
        assert srv.proc.wait(10) == 0
    finally:
        stop_server(srv.proc)


def test_second_signal_exits_at_once(docroot: DocRoot) -> None:
    path = "/static/f67108864.bin"
    srv = start_server(docroot.path, docroot=docroot, workers=1, extra=["--drain-timeout", "60"])
    try:
        reader = SlowReader(srv.addr, path, 4e6)  # would take ~16 s
        reader.start()
        assert wait_for(lambda: len(reader.body) > 1 << 20, 5)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(5)
        assert time.monotonic() - start < 2
        reader.join(5)
        assert len(reader.body) < reader.length  # cut short, as asked
        assert "second signal" in srv.log()
    finally:
        stop_server(srv.proc)


def test_drain_timeout_cuts_transfers_and_exits_0(docroot: DocRoot) -> None:
    path = "/static/f67108864.bin"
    srv = start_server(docroot.path, docroot=docroot, workers=1, extra=["--drain-timeout", "1"])
    try:
        s = open_request(srv.addr, path, rcvbuf=16384)  # never reads
        assert read_head(s)[0] == 200
        time.sleep(0.2)
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        assert 0.8 < time.monotonic() - start < 4
        assert "drain timeout, 1 connections cut" in srv.log()
        s.close()
    finally:
        stop_server(srv.proc)


# -- load ----------------------------------------------------------------------------------


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


async def _keepalive_clients(
    addr: tuple[str, int], n: int, requests: list[tuple[bytes, bytes]], measure: Callable[[], int]
) -> tuple[int, int, int]:
    """n connections all open at once, each doing every request of ``requests`` in turn;
    returns (responses right, errors, worker fds while all were open)."""
    connect_gate = asyncio.Semaphore(128)  # do not overflow the listen backlog
    opened = 0
    all_open = asyncio.Event()
    go = asyncio.Event()
    ok = errors = 0

    async def client(i: int) -> None:
        nonlocal opened, ok, errors
        try:
            async with connect_gate:
                reader, writer = await asyncio.open_connection(*addr)
        except OSError:
            errors += 1
            opened += 1
            if opened == n:
                all_open.set()
            return
        opened += 1
        if opened == n:
            all_open.set()
        try:
            await go.wait()
            for k in range(len(requests)):
                raw, want = requests[(i + k) % len(requests)]
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers, _ = parse(head)
                body = await reader.readexactly(int(headers["content-length"]))
                if status == 200 and body == want and headers["connection"] == "keep-alive":
                    ok += 1
                else:
                    errors += 1
            await go_close.wait()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            writer.close()

    go_close = asyncio.Event()
    tasks = [asyncio.create_task(client(i)) for i in range(n)]
    await asyncio.wait_for(all_open.wait(), 60)
    await asyncio.sleep(0.5)
    fds_open = measure()
    go.set()
    while ok + errors < n * len(requests) and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    go_close.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return ok, errors, fds_open


def test_load_one_worker_2000_keepalive_and_20000_new_connections(tree: Tree) -> None:
    _raise_nofile(8192)
    with running(tree.path, tree.docroot()) as srv:
        pid = worker_pid(srv)
        paths = ["/static/hello.txt", "/dynamic/hello.txt"]
        idle = warm(srv, *paths)
        reqs = [(get_request(p, close=False), srv.root.content(p)) for p in paths]

        start = time.monotonic()
        ok, errors, fds_open = asyncio.run(
            asyncio.wait_for(
                _keepalive_clients(srv.addr, 2000, reqs * 2, lambda: fd_count(pid)), 90
            )
        )
        ka_time = time.monotonic() - start
        assert errors == 0 and ok == 2000 * 4
        assert fds_open >= idle + 2000, "the 2000 connections were not all open at once"
        ka_after = wait_fds(pid, idle, 3)

        n_threads, per_thread = 8, 2500
        done: list[int] = []
        failures: list[str] = []
        close_reqs = [(get_request(p), srv.root.content(p)) for p in paths]
        stop_at = time.monotonic() + 60

        def conn_per_request(t: int) -> None:
            count = 0
            for i in range(per_thread):
                if time.monotonic() > stop_at:
                    break
                raw, want = close_reqs[(i + t) % 2]
                try:
                    data = http_get(srv.addr, raw, timeout=10)
                    if not (
                        data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n" + want)
                    ):
                        failures.append(repr(data[:80]))
                except OSError as exc:
                    failures.append(repr(exc))
                count += 1
            done.append(count)

        start = time.monotonic()
        threads = [threading.Thread(target=conn_per_request, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        cpr_time = time.monotonic() - start
        total = sum(done)
        after = wait_fds(pid, idle, 3)
        print(
            f"\n[load] keep-alive: 2000 connections x 4 requests = {ok} in {ka_time:.2f} s "
            f"({ok / ka_time:.0f} req/s), errors {errors}, worker fds idle {idle} / "
            f"all open {fds_open} / after {ka_after}"
            f"\n[load] connection per request: {total} in {cpr_time:.2f} s "
            f"({total / cpr_time:.0f} req/s), errors {len(failures)}, worker fds after {after}"
        )
        assert failures == []
        assert total == n_threads * per_thread
        assert ka_after == idle and after == idle
        assert srv.alive()
