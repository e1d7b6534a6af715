"""Shared fixtures: a generated document root and a real server in a subprocess.

The ``server`` fixture is parametrized: every end-to-end test runs once against the
plain server, once against the server started under the LD_PRELOAD shim that splits
every socket transfer in half (``tests/shim``), and once against the plain server with
its C fast path for repeated requests off (``pure``: the Python reference path alone).
``--shim-only`` / ``--plain-only`` pick one mode.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import harness
from tests.shim import ShimStats, build_shim, read_stats, shim_env

REPO = Path(__file__).resolve().parent.parent
SIZES = [0, 1, 4095, 4096, 4097, 1024 * 1024 + 3, 64 * 1024 * 1024]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aws")
    group.addoption("--plain-only", action="store_true", help="skip the runs under the shim")
    group.addoption("--shim-only", action="store_true", help="only the runs under the shim")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        # "pure": plain sockets, the server on its Python reference path alone
        # (--no-fast-path), so the suite checks both ways of answering a repeated request.
        modes = ["plain", "shim", "pure"]
        if metafunc.config.getoption("--plain-only"):
            modes = ["plain"]
        elif metafunc.config.getoption("--shim-only"):
            modes = ["shim"]
        metafunc.parametrize("server", modes, indirect=True, scope="session")


def file_name(size: int) -> str:
    return f"f{size}.bin"


def make_content(size: int) -> bytes:
    """Deterministic, non-repeating bytes: a misplaced chunk cannot compare equal."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha512(block.to_bytes(8, "little")).digest() * 64
        block += 1
    return bytes(out[:size])


@dataclass
class DocRoot:
    path: Path
    contents: dict[str, bytes] = field(default_factory=dict)

    def content(self, url_path: str) -> bytes:
        return self.contents[url_path]

    def warm(self, *url_paths: str) -> None:
        """Read these files into the page cache. A test that checks which way a body
        went needs it: the session's files sit idle for minutes, this VM's kernel
        reclaims them, and the server reads a cold one by AIO with O_DIRECT (a small
        /dynamic/ file goes aio-direct, a /static/ one mixed)."""
        for url_path in url_paths:
            (self.path / url_path.lstrip("/")).read_bytes()

    def warm_small(self, limit: int = 2 << 20) -> None:
        """:meth:`warm` every file of the prefixes up to ``limit`` bytes (a few ms)."""
        for prefix in ("static", "dynamic"):
            for path in (self.path / prefix).rglob("*"):
                if path.is_file() and not path.is_symlink() and path.stat().st_size <= limit:
                    path.read_bytes()


@pytest.fixture(scope="session")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> DocRoot:
    """static/ and dynamic/ with files of every edge size, index pages, and traps."""
    base = tmp_path_factory.mktemp("docroot")
    root = DocRoot(base)
    big = make_content(max(SIZES))
    for prefix in ("static", "dynamic"):
        d = base / prefix
        (d / "sub").mkdir(parents=True)
        for size in SIZES:
            data = big[:size]
            (d / file_name(size)).write_bytes(data)
            root.contents[f"/{prefix}/{file_name(size)}"] = data
        index = f"<html><body>{prefix} index</body></html>\n".encode()
        (d / "index.html").write_bytes(index)
        root.contents[f"/{prefix}/"] = index
        sub = f"<html><body>{prefix} sub index</body></html>\n".encode()
        (d / "sub" / "index.html").write_bytes(sub)
        root.contents[f"/{prefix}/sub/"] = sub
        (d / "hello.txt").write_bytes(b"hello\n")
        root.contents[f"/{prefix}/hello.txt"] = b"hello\n"
        (d / "a b%.txt").write_bytes(b"spaced\n")
        root.contents[f"/{prefix}/a%20b%25.txt"] = b"spaced\n"
        (d / ".hidden").write_bytes(b"secret\n")
        (d / ".git").mkdir()
        (d / ".git" / "config").write_bytes(b"secret\n")
        (d / "empty-dir").mkdir()
    (base / "secret.txt").write_bytes(b"outside the prefixes\n")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "passwd").write_bytes(b"root:x:0:0\n")
    for prefix in ("static", "dynamic"):
        d = base / prefix
        os.symlink(outside / "passwd", d / "link-out")
        os.symlink(outside, d / "dir-out")
        os.symlink("hello.txt", d / "link-in")
        root.contents[f"/{prefix}/link-in"] = b"hello\n"
    return root


@pytest.fixture(scope="session")
def shim_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


@dataclass(kw_only=True)
class ServerProcess(harness.Running):
    """A running ``python -m aws`` and what a test needs to talk to it."""

    mode: str
    stats_path: Path | None
    root: DocRoot
    workers: int = 2

    def stats(self) -> ShimStats:
        assert self.stats_path is not None
        return read_stats(self.stats_path)

    def worker_pids(self) -> list[int]:
        """The processes that serve: the children of the supervisor, or with one worker
        the process that was started (it serves by itself)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in children.read_text().split()] or [self.proc.pid]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            with socket.create_connection(self.addr, timeout=5) as s:
                s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return data.startswith(b"HTTP/1.1 200 ")
        except OSError:
            return False


def start_server(
    root: Path,
    *,
    docroot: DocRoot,
    mode: str = "plain",
    shim: Path | None = None,
    stats_path: Path | None = None,
    workers: int = 2,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
    timeout: float = 20.0,
    wrapper: tuple[str, ...] = (),
) -> ServerProcess:
    """Start the server on a free port (``--port 0``) and wait for its listening line;
    ``wrapper`` goes before the interpreter (``setpriv ...``, as a service manager would)."""
    cmd = [*wrapper, sys.executable, "-m", "aws", "--root", str(root), "--workers", str(workers)]
    cmd += ["--log-level", "info", *(extra or [])]
    if mode == "pure":
        cmd.append("--no-fast-path")
    if env is None:
        env = dict(os.environ)
        if mode == "shim":
            assert shim is not None and stats_path is not None
            env = shim_env(shim, stats_path)
    run = harness.start(cmd, cwd=REPO, env=env, preexec=preexec, timeout=timeout)
    return ServerProcess(
        proc=run.proc,
        host=run.host,
        port=run.port,
        log_lines=run.log_lines,
        mode=mode,
        stats_path=stats_path,
        root=docroot,
        workers=workers,
    )


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL the whole group if it does not go; returns the exit code."""
    return harness.stop(proc, timeout)


@pytest.fixture(scope="session")
def server(
    request: pytest.FixtureRequest,
    docroot: DocRoot,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    mode: str = request.param
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path_factory.mktemp("shimstats") / "stats"
    srv = start_server(docroot.path, docroot=docroot, mode=mode, shim=shim, stats_path=stats)
    yield srv
    code = stop_server(srv.proc)
    assert code == 0, f"server exited with {code}:\n{srv.log()}"


@pytest.fixture(autouse=True)
def _server_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every end-to-end test the server must still be up and serving."""
    yield
    if "server" in request.fixturenames:
        srv: ServerProcess = request.getfixturevalue("server")
        deadline = time.monotonic() + 5
        while not srv.alive():
            assert time.monotonic() < deadline, f"server down after the test:\n{srv.log()}"
            time.sleep(0.2)


def http_get(addr: tuple[str, int], raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw request bytes, read until the server closes; for Connection: close tests."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    return data


class RawClient:
    """A keep-alive connection that reads exactly one response at a time."""

    def __init__(self, addr: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        self.buf += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a full head: {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only or status in (204, 304) else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed before the whole body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
