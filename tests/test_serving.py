"""End to end: every edge size under both prefixes, byte-identical, plain and under the shim."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    SIZES,
    DocRoot,
    RawClient,
    ServerProcess,
    file_name,
    http_get,
    start_server,
    stop_server,
)


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
@pytest.mark.parametrize("size", SIZES)
def test_sizes_byte_identical_with_requests(server: ServerProcess, prefix: str, size: int) -> None:
    path = f"/{prefix}/{file_name(size)}"
    r = requests.get(server.url + path, timeout=60)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == size
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(server.root.content(path)).digest()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_keep_alive_reuses_one_connection(server: ServerProcess, prefix: str) -> None:
    with RawClient(server.addr) as c:
        for size in (0, 4097, 1, 1024 * 1024 + 3):
            path = f"/{prefix}/{file_name(size)}"
            c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, headers, body = c.response()
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert body == server.root.content(path)


# -- shared helpers ----------------------------------------------------------------------

BIG = 1024 * 1024 + 3
HUGE = 64 * 1024 * 1024


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One whole response (the server closed after it): status, headers, body."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get_close(server: ServerProcess, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    raw = http_get(
        server.addr, f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    return parse_response(raw)


def assert_common_headers(headers: dict[str, str], body: bytes, connection: str = "close") -> None:
    assert headers["server"] == "aws"
    date = parsedate_to_datetime(headers["date"])
    assert date.tzinfo is not None
    assert abs(date.timestamp() - time.time()) < 60
    assert headers["connection"] == connection
    assert int(headers["content-length"]) == len(body)


# -- wget ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
@pytest.mark.parametrize("size", SIZES)
def test_sizes_byte_identical_with_wget(
    server: ServerProcess, prefix: str, size: int, tmp_path: Path
) -> None:
    path = f"/{prefix}/{file_name(size)}"
    out = tmp_path / "out.bin"
    proc = subprocess.run(
        [
            "wget", "--no-config", "--no-proxy", "-q", "-O", str(out),
            "--tries=1", "--timeout=30", server.url + path,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == size
    want = hashlib.sha256(server.root.content(path)).hexdigest()
    with out.open("rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == want


# -- what is served and what is not -------------------------------------------------------

NOT_FOUND = [
    "/static/missing.bin",
    "/dynamic/missing.bin",
    "/static/sub/missing.bin",
    "/",
    "/secret.txt",
    "/other/x",
    "/static/.hidden",
    "/dynamic/.hidden",
    "/static/.git/config",
    "/dynamic/.git/config",
    "/static/link-out",
    "/dynamic/link-out",
    "/static/dir-out/passwd",
    "/dynamic/dir-out/passwd",
    "/static/empty-dir/",
    "/dynamic/empty-dir/",
    "/static/%2e%2e/secret.txt",
    "/static/../secret.txt",
    "/static/%2ehidden",
    "/dynamic/sub/%2e%2e/%2e%2e/secret.txt",
    "/static/hello.txt/",
]


@pytest.mark.parametrize("path", NOT_FOUND)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_not_found(server: ServerProcess, path: str, method: str) -> None:
    status, headers, body = get_close(server, path, method)
    assert status == 404
    assert headers["content-type"].startswith("text/html")
    if method == "GET":
        assert_common_headers(headers, body)
        assert 0 < len(body) < 1024
        assert b"404" in body
        assert b"<html" in body.lower()
        assert b"secret" not in body and b"root:x" not in body
    else:
        assert body == b""
        assert 0 < int(headers["content-length"]) < 1024


SERVED = {  # URL -> the file it names (by its docroot key)
    "/static/link-in": "/static/link-in",
    "/dynamic/link-in": "/dynamic/link-in",
    "/static/": "/static/",
    "/dynamic/": "/dynamic/",
    "/static/sub/": "/static/sub/",
    "/dynamic/sub/": "/dynamic/sub/",
    "/static/hello.txt": "/static/hello.txt",
    "/dynamic/a%20b%25.txt": "/dynamic/a%20b%25.txt",
    "/static/hello.txt?x=1&y=%2F": "/static/hello.txt",
    "/dynamic//sub/": "/dynamic/sub/",
}


@pytest.mark.parametrize("path", SERVED)
def test_served(server: ServerProcess, path: str) -> None:
    status, headers, body = get_close(server, path)
    assert status == 200
    assert body == server.root.content(SERVED[path])
    assert_common_headers(headers, body)
    if SERVED[path].endswith("/"):
        assert headers["content-type"].startswith("text/html")
    elif SERVED[path].endswith(".txt"):
        assert headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
@pytest.mark.parametrize("size", [0, 4097])
def test_ok_headers(server: ServerProcess, prefix: str, size: int) -> None:
    path = f"/{prefix}/{file_name(size)}"
    status, headers, body = get_close(server, path)
    assert status == 200
    assert body == server.root.content(path)
    assert_common_headers(headers, body)
    assert headers["content-type"]  # .bin: a generic type, but always one
    status, headers, body = get_close(server, path, "HEAD")
    assert status == 200
    assert body == b""
    assert int(headers["content-length"]) == size
    assert headers["content-type"]


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_directory_without_slash_redirects(server: ServerProcess, prefix: str) -> None:
    for path in (f"/{prefix}/sub", f"/{prefix}"):
        status, headers, body = get_close(server, path)
        assert status == 301
        assert headers["location"] == path + "/"
        # Date, Server, Connection, Content-Length (a bodiless 301 needs no Content-Type)
        assert_common_headers(headers, body)
    # and requests follows it to the index
    r = requests.get(f"{server.url}/{prefix}/sub", timeout=10)
    assert r.status_code == 200
    assert r.url == f"{server.url}/{prefix}/sub/"
    assert r.content == server.root.content(f"/{prefix}/sub/")
    assert [h.status_code for h in r.history] == [301]
    # the query goes along, as nginx's static module keeps it
    status, headers, _ = get_close(server, f"/{prefix}/sub?a=1&b=%20x")
    assert (status, headers["location"]) == (301, f"/{prefix}/sub/?a=1&b=%20x")
    status, headers, _ = get_close(server, f"/{prefix}/sub?")
    assert (status, headers["location"]) == (301, f"/{prefix}/sub/?")


# -- many clients at once ----------------------------------------------------------------

CLIENTS = 200


def _one_client(
    server: ServerProcess, path: str, barrier: threading.Barrier
) -> tuple[str, int, str, str]:
    with socket.create_connection(server.addr, timeout=60) as s:
        barrier.wait(timeout=60)  # every client is connected before any asks
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    status, headers, body = parse_response(b"".join(chunks))
    return path, status, headers["content-length"], hashlib.sha256(body).hexdigest()


def test_200_clients_at_once(server: ServerProcess) -> None:
    names = [*(file_name(s) for s in SIZES if s <= BIG), "hello.txt", "link-in", ""]
    paths = [
        f"/{('static', 'dynamic')[i % 2]}/{names[i // 2 % len(names)]}" for i in range(CLIENTS)
    ]
    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_one_client, server, p, barrier) for p in paths]
        results = [f.result(timeout=120) for f in futures]
    assert len(results) == CLIENTS
    for path, status, length, digest in results:
        want = server.root.content(path)
        assert (path, status, int(length)) == (path, 200, len(want))
        assert digest == hashlib.sha256(want).hexdigest(), path


# -- keep-alive and closing ----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_http10_closes_by_default(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/{file_name(4097)}"
    with RawClient(server.addr) as c:
        c.send(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        status, headers, body = c.response()
        assert status == 200
        assert headers["connection"] == "close"
        assert body == server.root.content(path)
        assert c.closed_by_peer()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_http10_keep_alive_on_request(server: ServerProcess, prefix: str) -> None:
    with RawClient(server.addr) as c:
        for size in (4097, 0, BIG, 1):
            path = f"/{prefix}/{file_name(size)}"
            c.send(f"GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            status, headers, body = c.response()
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert body == server.root.content(path)
        c.send(f"GET /{prefix}/hello.txt HTTP/1.0\r\n\r\n".encode())  # this one does not ask
        status, headers, body = c.response()
        assert (status, headers["connection"], body) == (200, "close", b"hello\n")
        assert c.closed_by_peer()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_http11_connection_close(server: ServerProcess, prefix: str) -> None:
    with RawClient(server.addr) as c:
        path = f"/{prefix}/{file_name(1)}"
        c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, headers, body = c.response()
        assert (status, headers["connection"]) == (200, "keep-alive")
        assert body == server.root.content(path)
        path = f"/{prefix}/{file_name(BIG)}"
        c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        status, headers, body = c.response()
        assert status == 200
        assert headers["connection"] == "close"
        assert body == server.root.content(path)
        assert c.buf == b""
        assert c.closed_by_peer()


# -- pipelining ------------------------------------------------------------------------------

PIPELINE_10 = [
    "/static/f4097.bin",
    "/dynamic/f1048579.bin",
    "/dynamic/f0.bin",
    "/static/f1.bin",
    "/static/f1048579.bin",
    "/dynamic/f4096.bin",
    "/static/f0.bin",
    "/dynamic/f1.bin",
    "/static/f4095.bin",
    "/dynamic/f4097.bin",
]


@pytest.mark.parametrize(
    "paths",
    [
        ["/static/f4097.bin", "/dynamic/f1048579.bin"],
        ["/dynamic/f1.bin", "/static/f1048579.bin"],
        PIPELINE_10,
        PIPELINE_10[::-1],
    ],
    ids=["2a", "2b", "10", "10-reversed"],
)
def test_pipelined_in_one_send(server: ServerProcess, paths: list[str]) -> None:
    raw = b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in paths)
    with RawClient(server.addr, timeout=30) as c:
        c.send(raw)  # one sendall: the server sees them all at once
        for path in paths:
            status, headers, body = c.response()
            assert status == 200, path
            assert headers["connection"] == "keep-alive"
            assert len(body) == len(server.root.content(path)), path
            assert body == server.root.content(path), path
        assert c.buf == b""  # nothing more than asked for
        c.send(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert c.response()[2] == b"hello\n"


def test_many_pipelined_past_the_per_turn_and_read_ahead_limits(server: ServerProcess) -> None:
    """100 requests (~120 KiB of heads) in one send: more than the server answers per loop
    turn, and more pipelined bytes than it buffers while a dynamic response is in flight."""
    names = ["hello.txt", file_name(4097), file_name(0), file_name(BIG), file_name(1)]
    paths = [f"/{('dynamic', 'static')[i % 3 == 0]}/{names[i % 5]}" for i in range(100)]
    pad = "x" * 1100
    raw = b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n".encode() for p in paths)
    assert len(raw) > 100 * 1024
    with RawClient(server.addr, timeout=30) as c:
        sender = threading.Thread(target=c.send, args=(raw,), daemon=True)
        sender.start()  # the client reads while it sends: no deadlock on full buffers
        for i, path in enumerate(paths):
            status, _, body = c.response()
            assert status == 200, (i, path)
            assert body == server.root.content(path), (i, path)
        sender.join(10)
        assert not sender.is_alive()
        assert c.buf == b""


def test_pipelined_with_errors_and_head(server: ServerProcess) -> None:
    reqs = [
        ("GET", "/dynamic/f4097.bin", 200),
        ("GET", "/static/missing", 404),
        ("HEAD", "/static/f1048579.bin", 200),
        ("GET", "/static/sub", 301),
        ("GET", "/static/f1048579.bin", 200),
        ("HEAD", "/dynamic/missing", 404),
        ("GET", "/dynamic/f4095.bin", 200),
    ]
    raw = b"".join(f"{m} {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for m, p, _ in reqs)
    with RawClient(server.addr, timeout=30) as c:
        c.send(raw)
        for method, path, want in reqs:
            status, headers, body = c.response(head_only=method == "HEAD")
            assert status == want, path
            assert headers["connection"] == "keep-alive", path
            if want == 200 and method == "GET":
                assert body == server.root.content(path)
            if method == "HEAD":
                assert body == b""
        assert c.buf == b""


# -- workers and CPUs ----------------------------------------------------------------------


def _affinities(srv: ServerProcess, count: int) -> list[set[int]]:
    """Each worker's CPU set, once every worker has pinned itself (it does so at start)."""
    deadline = time.monotonic() + 10
    while True:
        pids = srv.worker_pids()
        sets = []
        for pid in pids:
            try:
                sets.append(os.sched_getaffinity(pid))
            except ProcessLookupError:
                sets = []
                break
        if len(sets) == count and all(len(s) == 1 for s in sets):
            return sets
        assert time.monotonic() < deadline, f"workers {pids} not pinned: {sets}"
        time.sleep(0.05)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_two_workers_pinned_to_different_cpus(docroot: DocRoot) -> None:
    srv = start_server(docroot.path, docroot=docroot, workers=2)
    try:
        sets = _affinities(srv, 2)
        assert sets[0] != sets[1]
        assert sets[0] | sets[1] <= os.sched_getaffinity(0)
        assert len(set(srv.worker_pids())) == 2
        assert srv.proc.pid not in srv.worker_pids()
        status, _, body = get_close(srv, "/dynamic/hello.txt")
        assert (status, body) == (200, b"hello\n")
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


# -- graceful stop ---------------------------------------------------------------------------


class SlowDownload:
    """A GET whose body is read (and hashed) a little at a time."""

    def __init__(self, addr: tuple[str, int], path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.settimeout(30)
        self.sock.connect(addr)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            assert chunk, "closed before the head"
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 "), head
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert m is not None
        self.length = int(m.group(1))
        self.got = len(rest)
        self.sha = hashlib.sha256(rest)

    def read(self, limit: int) -> None:
        """Read until ``limit`` body bytes arrived (or the server closed)."""
        buf = bytearray(1 << 20)
        while self.got < limit:
            n = self.sock.recv_into(buf, min(len(buf), limit - self.got))
            if not n:
                return
            self.sha.update(memoryview(buf)[:n])
            self.got += n

    def close(self) -> None:
        self.sock.close()


def _refused(addr: tuple[str, int], within: float) -> bool:
    """True once a new connection is refused (a listener closing may still take one)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(addr, timeout=2) as s:
                s.settimeout(2)
                s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                with contextlib.suppress(OSError):
                    s.recv(1)
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["plain", "shim"])
def test_sigterm_lets_downloads_finish(
    docroot: DocRoot, shim_so: Path, tmp_path: Path, mode: str
) -> None:
    srv = start_server(
        docroot.path, docroot=docroot, mode=mode, shim=shim_so, stats_path=tmp_path / "stats"
    )
    downloads: list[SlowDownload] = []
    try:
        for prefix in ("static", "dynamic"):
            d = SlowDownload(srv.addr, f"/{prefix}/{file_name(HUGE)}")
            downloads.append(d)
            assert d.length == HUGE
            d.read(1 << 20)
            assert d.got >= 1 << 20  # part of the body is in
        srv.proc.send_signal(signal.SIGTERM)
        assert _refused(srv.addr, within=10), "new connections still accepted after SIGTERM"
        assert srv.proc.poll() is None  # still busy with the two transfers
        time.sleep(0.3)  # a slow reader
        for d in downloads:
            d.read(HUGE)
            assert d.got == HUGE
            assert d.sha.hexdigest() == hashlib.sha256(docroot.content(d.path)).hexdigest()
            # the connection ends after the response: the server is draining
            assert d.sock.recv(1) == b""
        assert srv.proc.wait(30) == 0, srv.log()
    finally:
        for d in downloads:
            d.close()
        stop_server(srv.proc)


# -- memory --------------------------------------------------------------------------------

MEM_CLIENTS = 16
MEM_FILE = 256 * 1024 * 1024
MEM_LIMIT_KIB = 96 * 1024


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _stream_client(addr: tuple[str, int], barrier: threading.Barrier) -> tuple[int, int, str]:
    with socket.create_connection(addr, timeout=60) as s:
        barrier.wait(timeout=60)
        s.sendall(b"GET /dynamic/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            assert chunk, "closed before the head"
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        sha = hashlib.sha256(rest)
        count = len(rest)
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := s.recv_into(buf):
            sha.update(view[:n])
            count += n
    return status, count, sha.hexdigest()


# Plain mode only: the bar is about what the worker buffers per transfer (a fixed number
# of AIO buffers per connection), which the shim does not change; the shim only splits the
# same sends in more calls, and would double the run time of 4 GiB of traffic.
def test_memory_bar_16_clients_256mib(docroot: DocRoot, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dynamic").mkdir(parents=True)
    (root / "static").mkdir()
    sha = hashlib.sha256()
    with open(root / "dynamic" / "big.bin", "wb") as fh:
        for _ in range(MEM_FILE // (16 << 20)):
            block = os.urandom(16 << 20)
            sha.update(block)
            fh.write(block)
    want = sha.hexdigest()
    del block
    srv = start_server(root, docroot=docroot, workers=1)
    try:
        [worker] = srv.worker_pids()
        before = _vm_kib(worker, "VmHWM")
        # VmHWM is the kernel's own peak; sampling VmRSS too guards against a peak the
        # kernel's lazily updated high-water mark might not have folded in.
        sampled = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                sampled[0] = max(sampled[0], _vm_kib(worker, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        barrier = threading.Barrier(MEM_CLIENTS)
        try:
            with ThreadPoolExecutor(MEM_CLIENTS) as pool:
                futures = [
                    pool.submit(_stream_client, srv.addr, barrier) for _ in range(MEM_CLIENTS)
                ]
                results = [f.result(timeout=120) for f in futures]
        finally:
            done.set()
            sampler.join(5)
        peak = max(_vm_kib(worker, "VmHWM"), sampled[0])
        assert results == [(200, MEM_FILE, want)] * MEM_CLIENTS
        assert sampled[0] > before  # the sampler saw the worker at work
        print(f"worker peak RSS {peak} KiB (before: {before} KiB)")
        assert peak < MEM_LIMIT_KIB, f"worker peak RSS {peak} KiB (before: {before} KiB)"
    finally:
        assert stop_server(srv.proc) == 0, srv.log()
