#!/usr/bin/env python3
"""Soak test: one aws worker under a steady mixed load, watched for leaks.

For ``--duration`` seconds (default 60) client threads keep the worker busy with a mix
of keep-alive clients, one-connection-per-request clients, /static/ and /dynamic/ files
of three sizes, a few slow readers of a large file, and clients that vanish (RST)
mid-transfer. Every second the worker's resident memory (VmRSS) and open descriptors
(``/proc/<pid>/fd``) are sampled and printed. At the end the load stops, the worker
settles, and the report says whether memory or descriptors grew after the warm-up.

Not part of ``make test``. Usage::

    python bench/soak.py [--duration 60] [--warmup 15] [--root-dir /var/tmp]

Exit status: 0 when nothing grew and no request failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # as a script, sys.path[0] is bench/ and tests/ is not importable
    sys.path.insert(0, str(REPO))

from tests import harness  # noqa: E402

SIZES = {"small.txt": 1024, "mid.bin": 256 * 1024, "big.bin": 16 * 1024 * 1024}
RSS_GROWTH_LIMIT_KIB = 4 * 1024  # after warm-up, allowing for allocator noise
STOP_TIMEOUT_S = 40.0  # SIGTERM drains: slow readers may still be mid-transfer
LOG_LINES_KEPT = 10_000  # the harness keeps every line; vanishing clients log one each


# -- the server ----------------------------------------------------------------------------


def make_root(parent: str) -> tuple[Path, dict[str, bytes]]:
    """static/ and dynamic/ with one file of each size (O_DIRECT needs a real disk)."""
    root = Path(tempfile.mkdtemp(prefix="aws-soak-", dir=parent))
    contents: dict[str, bytes] = {}
    for prefix in ("static", "dynamic"):
        (root / prefix).mkdir()
        for name, size in SIZES.items():
            data = os.urandom(size)
            (root / prefix / name).write_bytes(data)
            contents[f"/{prefix}/{name}"] = data
    return root, contents


def start_server(root: Path, extra: list[str]) -> harness.Running:
    """One worker at info level (the harness waits for its listening line)."""
    cmd = [sys.executable, "-m", "aws", "--root", str(root), "--workers", "1"]
    cmd += ["--log-level", "info", *extra]
    try:
        return harness.start(cmd)
    except harness.StartError as exc:
        tail = "".join(exc.output.splitlines(keepends=True)[-20:])
        raise SystemExit("aws did not start:\n" + tail) from None


def worker_pid(server: harness.Running) -> int:
    """With --workers 1 the started process is the worker (no supervisor)."""
    return server.proc.pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the load ------------------------------------------------------------------------------


@dataclass
class Stats:
    ok: int = 0
    errors: int = 0
    resets: int = 0
    bytes: int = 0
    last_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def good(self, n: int) -> None:
        with self.lock:
            self.ok += 1
            self.bytes += n

    def bad(self, why: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.last_errors) < 10:
                self.last_errors.append(why)


def request(path: str, close: bool) -> bytes:
    conn = b"Connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: soak\r\n" + conn + b"\r\n"


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes, bool]:
    """One response from a keep-alive stream: (status, body, server keeps it open)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).decode("latin-1")
    del buf[:end]
    length = int(re.search(r"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(buf) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed before the body")
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return int(head.split()[1]), body, "connection: keep-alive" in head.lower()


class Load:
    def __init__(self, port: int, contents: dict[str, bytes]) -> None:
        self.addr = ("127.0.0.1", port)
        self.contents = contents
        self.digests = {p: hashlib.sha256(d).digest() for p, d in contents.items()}
        self.stop = threading.Event()
        self.stats = Stats()
        self.small = [p for p in contents if not p.endswith("big.bin")]

    def check(self, path: str, status: int, body: bytes) -> None:
        if status == 200 and hashlib.sha256(body).digest() == self.digests[path]:
            self.stats.good(len(body))
        else:
            self.stats.bad(f"{path}: status {status}, {len(body)} bytes")

    def keep_alive(self, seed: int) -> None:
        i = seed
        while not self.stop.is_set():
            try:
                with socket.create_connection(self.addr, timeout=10) as s:
                    buf = bytearray()
                    for _ in range(50):  # then a fresh connection
                        if self.stop.is_set():
                            return
                        path = self.small[i % len(self.small)]
                        i += 1
                        s.sendall(request(path, close=False))
                        status, body, kept = read_response(s, buf)
                        self.check(path, status, body)
                        if not kept:
                            break
            except OSError as exc:
                self.stats.bad(f"keep-alive: {exc!r}")

    def new_connections(self, seed: int) -> None:
        i = seed
        while not self.stop.is_set():
            path = self.small[i % len(self.small)]
            i += 1
            try:
                with socket.create_connection(self.addr, timeout=10) as s:
                    s.sendall(request(path, close=True))
                    buf = bytearray()
                    status, body, _ = read_response(s, buf)
                    self.check(path, status, body)
            except OSError as exc:
                self.stats.bad(f"new connection: {exc!r}")

    def slow_reader(self, seed: int) -> None:
        """Reads a 16 MiB file at ~4 MiB/s (well within the send timeout)."""
        i = seed
        while not self.stop.is_set():
            path = ("/static/big.bin", "/dynamic/big.bin")[i % 2]
            i += 1
            try:
                with socket.create_connection(self.addr, timeout=20) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                    s.sendall(request(path, close=True))
                    buf = bytearray()
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed before the head")
                        buf += chunk
                    end = buf.index(b"\r\n\r\n") + 4
                    body = bytearray(buf[end:])
                    while chunk := s.recv(256 * 1024):
                        body += chunk
                        time.sleep(0.06)
                        if self.stop.is_set():
                            return
                    self.check(path, 200, bytes(body))
            except OSError as exc:
                self.stats.bad(f"slow reader: {exc!r}")

    def vanisher(self, seed: int) -> None:
        """Starts a large download and resets the connection after a little of it."""
        i = seed
        while not self.stop.is_set():
            path = ("/static/big.bin", "/dynamic/big.bin")[i % 2]
            i += 1
            try:
                s = socket.create_connection(self.addr, timeout=10)
                s.sendall(request(path, close=True))
                got = 0
                while got < 300_000 * (1 + i % 4):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
                with self.stats.lock:
                    self.stats.resets += 1
            except OSError as exc:
                self.stats.bad(f"vanisher: {exc!r}")
            time.sleep(0.05)

    def start(self, keep_alive: int, new: int, slow: int, vanish: int) -> list[threading.Thread]:
        threads = []
        for kind, n in (
            (self.keep_alive, keep_alive),
            (self.new_connections, new),
            (self.slow_reader, slow),
            (self.vanisher, vanish),
        ):
            threads += [threading.Thread(target=kind, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        return threads


# -- the report ----------------------------------------------------------------------------


def slope_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (t, value), per minute."""
    if len(samples) < 3:
        return 0.0
    ts = [t for t, _ in samples]
    vs = [v for _, v in samples]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else 60 * sum((t - mt) * (v - mv) for t, v in samples) / den


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before growth counts")
    p.add_argument("--root-dir", default="/var/tmp", help="where the temp document root goes")
    p.add_argument("--keep-alive", type=int, default=4, help="keep-alive client threads")
    p.add_argument("--new", type=int, default=3, help="connection-per-request threads")
    p.add_argument("--slow", type=int, default=3, help="slow reader threads")
    p.add_argument("--vanish", type=int, default=1, help="threads resetting mid-transfer")
    args = p.parse_args()

    root, contents = make_root(args.root_dir)
    server = None
    try:
        server = start_server(root, ["--send-timeout", "20"])
        pid = worker_pid(server)
        for path in contents:  # the open-file cache keeps one descriptor per file served
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(request(path, close=True))
                read_response(s, bytearray())
        time.sleep(0.5)
        idle_fds_before = fd_count(pid)
        print(
            f"aws worker pid {pid} on port {server.port}; {args.duration:.0f} s of load "
            f"({args.keep_alive} keep-alive, {args.new} new-connection, {args.slow} slow, "
            f"{args.vanish} vanishing clients), warm-up {args.warmup:.0f} s"
        )
        print(f"idle before load (files cached): {idle_fds_before} fds, {rss_kib(pid)} KiB RSS\n")
        columns = ("t/s", 5), ("RSS KiB", 9), ("fds", 5), ("req ok", 8), ("req/s", 7)
        columns += ("errors", 6), ("resets", 6)
        print(" ".join(f"{name:>{width}}" for name, width in columns))
        load = Load(server.port, contents)
        start = time.monotonic()
        threads = load.start(args.keep_alive, args.new, args.slow, args.vanish)
        rss: list[tuple[float, int]] = []
        fds: list[tuple[float, int]] = []
        last_ok = 0
        for second in range(1, int(args.duration) + 1):
            time.sleep(max(0.0, start + second - time.monotonic()))
            t = time.monotonic() - start
            r, f = rss_kib(pid), fd_count(pid)
            rss.append((t, r))
            fds.append((t, f))
            s = load.stats
            print(
                f"{t:5.0f} {r:9d} {f:5d} {s.ok:8d} {s.ok - last_ok:7d} {s.errors:6d} {s.resets:6d}",
                flush=True,
            )
            last_ok = s.ok
            del server.log_lines[:-LOG_LINES_KEPT]
        load.stop.set()
        for t in threads:
            t.join(30)
        time.sleep(2.0)  # let the last transfers end and the sweep close what is idle
        idle_fds_after = fd_count(pid)
        rss_after = rss_kib(pid)
        exit_code = harness.stop(server, STOP_TIMEOUT_S)
        server = None

        warm = [(t, v) for t, v in rss if t > args.warmup]
        warm_fds = [(t, v) for t, v in fds if t > args.warmup]
        rss_warm = warm[0][1] if warm else rss[0][1]
        rss_end = rss[-1][1]
        grew_rss = rss_end - rss_warm
        rss_slope = slope_per_min(warm)
        fd_slope = slope_per_min(warm_fds)
        s = load.stats
        elapsed = args.duration
        print(
            f"\nrequests: {s.ok} ok ({s.ok / elapsed:.0f}/s, {s.bytes / elapsed / 2**20:.1f} MiB/s)"
            f", {s.errors} errors, {s.resets} deliberate resets"
        )
        print(
            f"RSS: {rss[0][1]} KiB at 1 s, {rss_warm} KiB after warm-up, {rss_end} KiB at the "
            f"end, {rss_after} KiB idle after ({grew_rss:+d} KiB after warm-up, "
            f"trend {rss_slope:+.0f} KiB/min)"
        )
        print(
            f"fds: {idle_fds_before} idle before, {min(v for _, v in warm_fds)}-"
            f"{max(v for _, v in warm_fds)} under load after warm-up (trend {fd_slope:+.1f}/min)"
            f", {idle_fds_after} idle after"
        )
        leaked_fds = idle_fds_after > idle_fds_before
        grew = grew_rss > RSS_GROWTH_LIMIT_KIB
        print(
            "verdict: "
            + ("RSS GREW after warm-up" if grew else "RSS flat after warm-up")
            + "; "
            + (
                f"fds LEAKED ({idle_fds_after - idle_fds_before})"
                if leaked_fds
                else "fds back to idle"
            )
            + f"; server exit status {exit_code}"
        )
        if s.last_errors:
            print("first errors:", *s.last_errors, sep="\n  ")
        return 0 if not (grew or leaked_fds or s.errors or exit_code) else 1
    finally:
        if server is not None:
            harness.stop(server, STOP_TIMEOUT_S)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
