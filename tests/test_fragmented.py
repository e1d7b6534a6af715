"""Fragmented I/O from the client side: requests arriving in pieces, and heads that never end.

The server side of fragmentation (every send/recv/sendfile split in half) is the shim run
of the ``server`` fixture; :func:`test_shim_was_splitting` proves the shim was active.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    SIZES,
    DocRoot,
    RawClient,
    ServerProcess,
    file_name,
    start_server,
    stop_server,
)

Response = tuple[int, dict[str, str], bytes]


class NoDelayClient(RawClient):
    """A RawClient whose every send leaves at once, in its own segment."""

    def __init__(self, addr: tuple[str, int], timeout: float = 10.0) -> None:
        super().__init__(addr, timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_pieces(self, pieces: list[bytes], pause: float) -> None:
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(pause)
            self.sock.sendall(piece)


def _without_date(resp: Response) -> Response:
    status, headers, body = resp
    assert "date" in headers
    return status, {k: v for k, v in headers.items() if k != "date"}, body


def fetch(
    addr: tuple[str, int], pieces: list[bytes], pause: float, head_only: bool = False
) -> Response:
    """Send ``pieces`` as separate writes on a fresh connection; the one response, no Date."""
    with NoDelayClient(addr) as c:
        c.send_pieces(pieces, pause)
        resp = c.response(head_only=head_only)
        assert c.buf == b""  # exactly one response, nothing more
    return _without_date(resp)


def _request(method: str, path: str, extra: tuple[str, ...] = ()) -> bytes:
    fields = "".join(f"{h}\r\n" for h in extra)
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{fields}\r\n".encode()


# -- one byte at a time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/static/f4097.bin"),
        ("GET", "/dynamic/f4097.bin"),
        ("HEAD", "/dynamic/f1048579.bin"),
        ("GET", "/static/missing"),
    ],
)
def test_one_byte_at_a_time(server: ServerProcess, method: str, path: str) -> None:
    raw = _request(method, path, ("User-Agent: bytewise/1.0", "Accept: */*"))
    head_only = method == "HEAD"
    whole = fetch(server.addr, [raw], 0, head_only)
    pieces = [raw[i : i + 1] for i in range(len(raw))]
    assert len(pieces) > 50
    split = fetch(server.addr, pieces, 0.002, head_only)
    assert split == whole
    if path == "/static/missing":
        assert whole[0] == 404
    else:
        assert whole[0] == 200
        assert int(whole[1]["content-length"]) == len(server.root.content(path))
        if not head_only:
            assert whole[2] == server.root.content(path)


def test_one_byte_at_a_time_keep_alive(server: ServerProcess) -> None:
    """Byte-wise requests on one kept-alive connection, the next one right after."""
    paths = ["/static/f1.bin", "/dynamic/f4095.bin", "/static/f0.bin", "/dynamic/hello.txt"]
    with NoDelayClient(server.addr) as c:
        for path in paths:
            raw = _request("GET", path)
            c.send_pieces([raw[i : i + 1] for i in range(len(raw))], 0.001)
            status, headers, body = c.response()
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert body == server.root.content(path)


# -- split at random points (hypothesis) --------------------------------------------------

FILES = [
    *(f"/{p}/{file_name(s)}" for p in ("static", "dynamic") for s in SIZES),
    "/static/",
    "/dynamic/sub/",
    "/static/hello.txt",
    "/dynamic/a%20b%25.txt",
]
EXTRA_HEADERS = [
    "User-Agent: hypothesis",
    "Accept: */*",
    "Accept-Encoding: gzip, deflate",
    "X-Padding: " + "x" * 300,
    "Range: bytes=1-4000",
    'If-None-Match: "nope"',
    "Connection: keep-alive",
]


@st.composite
def split_requests(draw: st.DrawFn) -> tuple[str, str, bytes, list[int]]:
    method = draw(st.sampled_from(["GET", "HEAD"]))
    path = draw(st.sampled_from(FILES))
    if method == "GET" and path.endswith(file_name(max(SIZES))):
        method = "HEAD"  # 64 MiB bodies per example would dominate the run time
    extra = draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=3, unique=True))
    raw = _request(method, path, tuple(extra))
    cuts = draw(
        st.lists(st.integers(1, len(raw) - 1), min_size=1, max_size=2, unique=True).map(sorted)
    )
    return method, path, raw, cuts


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=split_requests())
def test_split_request_same_response(
    server: ServerProcess, case: tuple[str, str, bytes, list[int]]
) -> None:
    method, path, raw, cuts = case
    bounds = [0, *cuts, len(raw)]
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    assert b"".join(pieces) == raw and len(pieces) == len(cuts) + 1
    head_only = method == "HEAD"
    whole = fetch(server.addr, [raw], 0, head_only)
    split = fetch(server.addr, pieces, 0.01, head_only)
    assert split == whole
    status, headers, body = whole
    content = server.root.content(path)
    assert status in (200, 206, 416)
    if status == 200:
        assert int(headers["content-length"]) == len(content)
        assert body == (b"" if head_only else content)
    elif status == 206:
        assert headers["content-range"] == f"bytes 1-{min(4000, len(content) - 1)}/{len(content)}"
        assert body == (b"" if head_only else content[1:4001])
    else:
        assert len(content) <= 1  # only a range past the end is unsatisfiable


# -- a head that never completes ------------------------------------------------------------


def _download(addr: tuple[str, int], path: str) -> tuple[int, str]:
    """GET with Connection: close; the body is hashed as it streams in (64 MiB files)."""
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"closed before a full head: {buf[:200]!r}"
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        sha = hashlib.sha256(rest)
        got = len(rest)
        block = bytearray(1 << 20)
        view = memoryview(block)
        while n := s.recv_into(block):
            sha.update(view[:n])
            got += n
    assert got == length, f"{path}: {got} of {length} bytes"
    return status, sha.hexdigest()


@pytest.mark.parametrize("mode", ["plain", "shim"])
def test_incomplete_head_does_not_hold_the_worker(
    docroot: DocRoot, shim_so: Path, tmp_path: Path, mode: str
) -> None:
    srv = start_server(
        docroot.path,
        docroot=docroot,
        mode=mode,
        shim=shim_so,
        stats_path=tmp_path / "stats",
        workers=1,
        extra=["--header-timeout", "30"],
    )
    stuck: list[socket.socket] = []
    try:
        for i in range(8):  # several half heads, each cut at a different point
            s = socket.create_connection(srv.addr, timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(_request("GET", "/static/f1048579.bin", ("Accept: */*",))[: 5 + i * 4])
            stuck.append(s)
        time.sleep(0.2)  # the worker has read them all by now
        started = time.monotonic()
        for path in (
            "/static/hello.txt",
            "/dynamic/hello.txt",
            "/static/f1048579.bin",
            "/dynamic/f1048579.bin",
            "/dynamic/f4097.bin",
        ):
            status, digest = _download(srv.addr, path)
            assert status == 200
            assert digest == hashlib.sha256(docroot.content(path)).hexdigest()
        assert time.monotonic() - started < 5  # served meanwhile, not after the timeout
        for s in stuck:  # and the half heads are still waiting, unanswered
            s.settimeout(0.05)
            with pytest.raises(TimeoutError):
                s.recv(1)
        # a half head finished late is answered normally
        s = stuck[3]
        s.settimeout(10)
        s.sendall(_request("GET", "/static/f1048579.bin", ("Accept: */*",))[5 + 3 * 4 :])
        late = RawClient.__new__(RawClient)  # a RawClient around the existing socket
        late.sock, late.buf = s, b""
        status, _, body = late.response()
        assert status == 200
        assert body == docroot.content("/static/f1048579.bin")
    finally:
        for s in stuck:
            s.close()
        assert stop_server(srv.proc) == 0, srv.log()


def test_incomplete_head_times_out_with_408(docroot: DocRoot) -> None:
    srv = start_server(docroot.path, docroot=docroot, workers=1, extra=["--header-timeout", "0.5"])
    try:
        with socket.create_connection(srv.addr, timeout=10) as s:
            s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHo")
            started = time.monotonic()
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            waited = time.monotonic() - started
        assert data.startswith(b"HTTP/1.1 408 ")
        assert b"Connection: close\r\n" in data
        assert 0.3 < waited < 5
        with RawClient(srv.addr) as c:  # the worker is fine
            c.send(b"GET /dynamic/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            assert c.response()[2] == b"hello\n"
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


# -- the shim was really splitting ---------------------------------------------------------


def test_shim_was_splitting(server: ServerProcess) -> None:
    before = server.stats() if server.mode == "shim" else None
    for prefix in ("static", "dynamic"):
        for size in SIZES:
            path = f"/{prefix}/{file_name(size)}"
            status, digest = _download(server.addr, path)
            assert status == 200
            assert digest == hashlib.sha256(server.root.content(path)).hexdigest()
    if server.mode != "shim":
        assert server.stats_path is None  # the plain server runs without the shim
        return
    assert before is not None
    after = server.stats()
    # what these downloads alone made the server do, split in half by the shim
    assert after.send_split - before.send_split > 0
    assert after.recv_split - before.recv_split > 0
    assert after.sendfile_split - before.sendfile_split > 0
    # at least one sendfile per non-empty static file, and 2+ for the 64 MiB one alone
    assert after.sendfile_calls - before.sendfile_calls >= len(SIZES)  # 6 files, 7+ calls
    assert after.recv_calls - before.recv_calls >= 2 * len(SIZES)


def test_concurrent_split_clients(server: ServerProcess) -> None:
    """Several clients sending their requests in pieces at the same time, interleaved."""
    paths = [f"/{('static', 'dynamic')[i % 2]}/{file_name(SIZES[i % 6])}" for i in range(12)]
    results: dict[int, Response] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            raw = _request("GET", paths[i])
            pieces = [raw[j : j + 7] for j in range(0, len(raw), 7)]
            results[i] = fetch(server.addr, pieces, 0.003)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for i, path in enumerate(paths):
        status, _, body = results[i]
        assert status == 200
        assert body == server.root.content(path)
