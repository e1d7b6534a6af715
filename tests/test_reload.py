"""SIGHUP: the configuration is read again, new workers start with it on the same
sockets and the old ones drain. Under load, with reloads every second: no refused
connection, no cut transfer, every body intact. A configuration that fails to load
leaves the old workers serving, with one error line. The single process (--workers 1)
reloads inside itself."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from aws.config import Config
from aws.loop import Loop
from aws.server import Server
from aws.worker import Serving
from tests.conftest import DocRoot, ServerProcess, stop_server
from tests.ops import Load, get_raw, mode_of, start_in, worker_pids

BIG = ["/static/f67108864.bin", "/dynamic/f67108864.bin"]
SMALL = ["/static/hello.txt", "/dynamic/hello.txt", "/static/f4097.bin", "/dynamic/f1048579.bin"]


@pytest.fixture(params=["plain", "shim"])
def mode(request: pytest.FixtureRequest) -> str:
    return mode_of(request)


class Download(threading.Thread):
    """A large download read slowly enough to outlive several reloads."""

    def __init__(self, addr: tuple[str, int], path: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.addr, self.path, self.seconds = addr, path, seconds
        self.digest = ""
        self.length = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(self.addr, timeout=30) as s:
                s.sendall(
                    f"GET {self.path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
                )
                data = bytearray()
                pause = self.seconds / 64
                while chunk := s.recv(1 << 20):
                    data += chunk
                    time.sleep(pause * len(chunk) / (1 << 20))
            head, _, body = bytes(data).partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                self.error = head[:100].decode("latin-1")
            self.length = len(body)
            self.digest = hashlib.sha256(body).hexdigest()
        except OSError as exc:
            self.error = repr(exc)


class Prober(threading.Thread):
    """New connections, one after another: any refused or reset one is an error."""

    def __init__(self, addr: tuple[str, int], docroot: DocRoot) -> None:
        super().__init__(daemon=True)
        self.addr, self.docroot = addr, docroot
        self.stop = threading.Event()
        self.count = 0
        self.errors: list[str] = []

    def run(self) -> None:
        raw = b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        while not self.stop.is_set():
            try:
                data = get_raw(self.addr, raw)
                if not data.startswith(b"HTTP/1.1 200 ") or not data.endswith(b"\r\n\r\nhello\n"):
                    self.errors.append(f"bad answer {data[:80]!r}")
            except OSError as exc:
                self.errors.append(repr(exc))
            self.count += 1


def _reloads(srv: ServerProcess) -> int:
    return srv.log().count("SIGHUP: reloaded the configuration")


def _hup_and_wait(srv: ServerProcess) -> None:
    before = _reloads(srv)
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _reloads(srv) == before:
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [2, 1])
def test_reload_every_second_under_load_loses_nothing(
    mode: str, workers: int, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    srv = start_in(mode, request, tmp_path, docroot, workers=workers)
    downloads = [Download(srv.addr, path, seconds=8) for path in BIG]
    load = Load(srv.addr, docroot, SMALL, threads=4, requests=10**6)
    prober = Prober(srv.addr, docroot)
    try:
        for d in downloads:
            d.start()
        load.start()
        prober.start()
        for _ in range(10):
            time.sleep(1)
            _hup_and_wait(srv)
        prober.stop.set()
        load.stop()
        load.join(30)
        prober.join(30)
        for d in downloads:
            d.join(60)
            assert not d.is_alive(), "a download did not finish"
        assert srv.proc.poll() is None
    finally:
        code = stop_server(srv.proc)
    assert code == 0, srv.log()
    assert _reloads(srv) == 10
    assert not load.errors, load.errors[:5]
    assert not prober.errors, prober.errors[:5]
    print(f"{load.done} keep-alive requests ({load.retried} resent), {prober.count} fresh")
    assert load.done > 100 and prober.count > 20
    # Old workers keep their idle keep-alive connections for one more request (answered
    # with Connection: close): no client ever had a connection closed under its request.
    assert load.retried == 0
    for d, path in zip(downloads, BIG, strict=True):
        assert d.error is None, d.error
        assert d.length == len(docroot.content(path))
        assert d.digest == hashlib.sha256(docroot.content(path)).hexdigest()
    assert "died" not in srv.log() and "cut" not in srv.log(), srv.log()


def _wait_until_open(srv: ServerProcess, path: Path, count: int) -> None:
    """Until ``count`` worker processes hold ``path`` open."""
    deadline = time.monotonic() + 10
    while True:
        holding = 0
        for pid in worker_pids(srv):
            fds = Path(f"/proc/{pid}/fd")
            try:
                holding += any(os.readlink(fd) == str(path) for fd in fds.iterdir())
            except OSError:
                continue  # gone, or a descriptor closed while listed
        if holding >= count:
            return
        assert time.monotonic() < deadline, f"{holding} of {count} workers opened {path}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [2, 1])
def test_a_config_that_fails_keeps_the_old_workers_and_a_good_one_is_applied(
    workers: int, tmp_path: Path, docroot: DocRoot
) -> None:
    """The access log's folder is moved away: the configuration read again fails its
    checks, and the old workers serve (and log, to the moved file) on. Moved back, the
    next SIGHUP starts new workers (the single process: a new server inside itself)."""
    from tests.conftest import start_server

    logs = tmp_path / "logs"
    logs.mkdir()
    extra = ["--access-log", str(logs / "access.log")]
    srv = start_server(docroot.path, docroot=docroot, workers=workers, extra=extra)
    get = b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    try:
        # The listening line comes before the workers have opened their log: moved away
        # before that, a worker could not start at all (a matter for another test).
        _wait_until_open(srv, logs / "access.log", workers)
        pids = worker_pids(srv)
        logs.rename(tmp_path / "moved")
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_for_log(r"ERROR .*SIGHUP: the configuration does not load.*", 10)
        assert line is not None, srv.log()
        assert f"access log folder {logs} does not exist" in line.group(0)
        assert get_raw(srv.addr, get).endswith(b"\r\n\r\nhello\n")
        assert worker_pids(srv) == pids and _reloads(srv) == 0
        (tmp_path / "moved").rename(logs)
        _hup_and_wait(srv)
        assert get_raw(srv.addr, get).endswith(b"\r\n\r\nhello\n")
        if workers == 1:
            assert worker_pids(srv) == [srv.proc.pid]  # the same process, reloaded inside
        else:
            deadline = time.monotonic() + 10
            while set(worker_pids(srv)) & set(pids):
                assert time.monotonic() < deadline, "old workers did not exit"
                time.sleep(0.05)
            assert len(worker_pids(srv)) == 2
    finally:
        assert stop_server(srv.proc) == 0, srv.log()
    assert (logs / "access.log").read_text().count(" 200 ") == 2


@pytest.mark.parametrize("workers", [2, 1])
def test_an_idle_keep_alive_connection_gets_one_more_answer(workers: int, docroot: DocRoot) -> None:
    """A connection idle across a reload is not closed under its client: its next request
    is answered (by the old configuration), with Connection: close, and then it ends."""
    from tests.conftest import RawClient, start_server

    srv = start_server(docroot.path, docroot=docroot, workers=workers)
    try:
        with RawClient(srv.addr) as client:
            client.send(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = client.response()
            assert status == 200 and headers.get("connection") != "close"
            _hup_and_wait(srv)
            time.sleep(0.3)  # the old worker has had the time to start its drain
            client.send(b"GET /dynamic/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = client.response()
            assert (status, body) == (200, b"hello\n")
            assert headers.get("connection") == "close"
            assert client.closed_by_peer()
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


@pytest.mark.parametrize("workers", [2, 1])
def test_a_stop_right_after_a_reload_does_not_wait_for_idle_connections(
    workers: int, docroot: DocRoot
) -> None:
    from tests.conftest import RawClient, start_server

    srv = start_server(docroot.path, docroot=docroot, workers=workers)
    with RawClient(srv.addr) as client:
        client.send(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.response()[0] == 200
        _hup_and_wait(srv)
        time.sleep(0.3)
        t0 = time.monotonic()
        assert stop_server(srv.proc) == 0, srv.log()
        assert time.monotonic() - t0 < 5, "the stop waited for an idle keep-alive connection"
        assert client.closed_by_peer()
    assert "second signal" not in srv.log()


def test_a_reload_in_one_process_keeps_one_line_of_turns(docroot: DocRoot) -> None:
    """The server taking over and the one draining share the loop's line of long
    transfers: two lines would move two budgets a turn while the old one drains, and the
    new --sendfile-chunk is the budget of both."""
    loop = Loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    old = Server(Config(root=str(docroot.path), sendfile_chunk=512 * 1024), loop, listener)
    fresh_config = Config(root=str(docroot.path), sendfile_chunk=256 * 1024)
    serving = Serving(0, loop, old, None, None, lambda: fresh_config)
    try:
        serving._reload()
        assert serving.server is not old and serving.server.config is fresh_config
        assert serving.server.turns is old.turns
        assert old.turns.budget == 256 * 1024 and old.turns.least == 64 * 1024
    finally:
        serving.close()
        loop.close()
        listener.close()
