"""Helpers for the production-operation tests: servers in plain and shim mode, and
bounded client threads that check every body they get."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import DocRoot, RawClient, ServerProcess, start_server


def mode_of(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    if mode == "shim" and request.config.getoption("--plain-only"):
        pytest.skip("--plain-only: the shim runs were not asked for")
    if mode == "plain" and request.config.getoption("--shim-only"):
        pytest.skip("--shim-only: the plain runs were not asked for")
    return mode


def start_in(
    mode: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    docroot: DocRoot,
    **kwargs: object,
) -> ServerProcess:
    """``start_server`` in ``mode``, with the shim built and its stats file under tmp_path."""
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        kwargs.update(shim=shim, stats_path=tmp_path / "shimstats")
    return start_server(docroot.path, docroot=docroot, mode=mode, **kwargs)  # type: ignore[arg-type]


@dataclass
class Load:
    """Client threads, each doing ``requests`` keep-alive GETs over ``paths`` and checking
    every status and body; errors are kept, not raised, so a test can assert none."""

    addr: tuple[str, int]
    docroot: DocRoot
    paths: Sequence[str]
    threads: int = 4
    requests: int = 200
    done: int = 0
    retried: int = 0  # requests resent after the server closed an idle keep-alive connection
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, seed: int) -> None:
        client: RawClient | None = None
        for n in range(self.requests):
            if self._stop.is_set():
                break
            path = self.paths[(seed + n) % len(self.paths)]
            for attempt in range(2):
                reused = client is not None
                try:
                    if client is None:
                        client = RawClient(self.addr)
                    client.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                    status, headers, body = client.response()
                except (OSError, ConnectionError) as exc:
                    nothing = client is None or not client.buf
                    if client is not None:
                        client.sock.close()
                    client = None
                    # A keep-alive connection the server closed while it was idle (a drain)
                    # before any byte of the answer: what every HTTP client retries
                    # (RFC 9112 9.3.1). Anything else, or on a fresh connection, is an error.
                    if reused and nothing and attempt == 0:
                        with self._lock:
                            self.retried += 1
                        continue
                    self.errors.append(f"{path}: {exc!r}")
                    break
                if status != 200 or body != self.docroot.content(path):
                    self.errors.append(f"{path}: {status}, {len(body)} bytes")
                if headers.get("connection") == "close":
                    client.sock.close()
                    client = None
                break
            with self._lock:
                self.done += 1
        if client is not None:
            client.sock.close()

    def stop(self) -> None:
        """Each client thread ends after the request it is doing."""
        self._stop.set()

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._workers), "client threads did not finish"

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.done < count:
            assert time.monotonic() < deadline, f"only {self.done} requests done"
            time.sleep(0.01)


def get_raw(addr: object, raw: bytes, family: int = socket.AF_INET, timeout: float = 10.0) -> bytes:
    """One request over a fresh socket (TCP or Unix), read until the server closes."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(addr)  # type: ignore[arg-type]
        s.sendall(raw)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    return data


def worker_pids(srv: ServerProcess) -> list[int]:
    """The supervisor's worker children (its metrics process is a child too)."""
    return [
        pid
        for pid in srv.worker_pids()
        if b"aws: worker" in Path(f"/proc/{pid}/cmdline").read_bytes() or pid == srv.proc.pid
    ]
