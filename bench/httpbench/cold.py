"""``make bench-cold``: does a small request wait behind big downloads whose data is on
the disk, or merely behind big sends?

One worker on CPU 0. On CPU 1: ``wrk -t1 -c10 --latency`` on a 1 KiB hot file, while 8
client threads download 8 different 256 MiB ``/static/`` files over and over. Three
cases: no downloads (baseline), the big files in the page cache, and the big files
evicted (``posix_fadvise(DONTNEED)`` before every download, checked with ``fincore``).
Servers: aws, nginx ``sendfile on``, nginx ``sendfile on; aio threads``; rounds alternate
their order. Reported: hot req/s, p50/p99/max, and the downloads' MiB/s.

Usage: python -m bench.httpbench.cold [--rounds 3] [--duration 8] [--out bench/cold_results.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests import harness

from . import BENCH_DIR, REPO_DIR
from .preflight import ensure_tools, nginx_has_threads
from .procs import free_port, probe

MiB = 1 << 20
BIG = 256 * MiB
DOWNLOADS = 8
SERVER_CPU, CLIENT_CPU = "0", "1"
CASES = ("none", "cached", "evicted")
# Not in the scenario, asked for by name: the cached downloads with no hot client,
# to read what they cost the server's core per MiB (the cached case's download bar).
DOWNLOADS_ONLY = "downloads"
# Also asked for by name: the cached case with the hot client paced (each of wrk's
# connections waits PACE_MS after every answer), so that every server gets about the
# same small requests to answer and the downloads compare at equal work. wrk is a
# closed loop: unpaced, a server that answers in 0.3 ms is asked ~18x as often as one
# that answers in 6 ms, and those answers take their share of the one core.
PACED = "cached-paced"
PACE_MS = 5
EXTRA_CASES = (DOWNLOADS_ONLY, PACED)
SERVERS = ("aws", "nginx", "nginx-aio-threads")
# Asked for by name only: aws reading cold ranges into the page cache by its warming
# threads (--static-cold cache) instead of by O_DIRECT AIO.
AWS_OPTIONS = {"aws": [], "aws-cold-cache": ["--static-cold", "cache"]}
RESIDUE = [0]  # the most of one big file left in the page cache when "evicted" began
SHORTFALL = [0]  # the most of one big file missing from the page cache when "cached" began


@dataclass
class Cell:
    rps: float
    p50: float
    p99: float
    max: float
    dl_mibs: float
    turn_p99: float | None = None  # aws only: its loop's own p99 turn, an upper bound (s)
    core_ms_per_mib: float | None = None  # downloads only: the server core's busy time
    steal: float | None = None  # the larger of the two CPUs' steal share while wrk ran


# aws runs with --metrics here, so that its loop's turn times during wrk's run can be
# read (aws_loop_turn_seconds): what the server itself made a ready request wait, apart
# from what the client's core (shared with the download threads) added.
_METRICS_PORT: dict[int, int] = {}


def _turn_buckets(port: int) -> list[tuple[float, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'(?m)^aws_loop_turn_seconds_bucket\{le="([^"]+)"\} (\S+)$', text)
    return [(float(le), float(n)) for le, n in found]


def turn_p99(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The bucket bound under which 99% of the turns between two scrapes fell."""
    counts = [(le, n - m) for (le, n), (_, m) in zip(after, before, strict=True)]
    total = counts[-1][1]
    for le, n in counts:
        if n >= 0.99 * total:
            return le
    return float("inf")


def make_root(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "static").mkdir(parents=True)
    (root / "static" / "hot.bin").write_bytes(os.urandom(1024))
    block = os.urandom(16 * MiB)
    for i in range(DOWNLOADS):
        with open(root / "static" / f"big{i}.bin", "wb") as f:
            for j in range(BIG // len(block)):
                f.write(block[:-8] + j.to_bytes(4, "little") + i.to_bytes(4, "little"))
            f.flush()
            os.fsync(f.fileno())
    for path in (tmp, root, root / "static"):
        path.chmod(0o755)  # nginx workers run as nobody
    return root


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident(path: Path) -> int:
    """Bytes of the file in the page cache, as fincore (util-linux) reports them."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def _ticks(cpu: str) -> list[int]:
    """user nice system idle iowait irq softirq steal: clock ticks of one CPU so far."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return [int(v) for v in line.split()[1:9]]
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def core_times(cpu: str = SERVER_CPU) -> tuple[int, int]:
    """(all, idle + iowait) clock ticks of one CPU so far, from /proc/stat."""
    ticks = _ticks(cpu)
    return sum(ticks), ticks[3] + ticks[4]


# The hypervisor can take a vCPU away (steal time), and on the dev VM it did so while
# the disk was busy, in stretches that held every hot request: the evicted case's bad
# p99s are its rounds with steal (the report's note says by how much). So each says.
def steal_ticks() -> list[tuple[int, int]]:
    """(all, steal) clock ticks of the server's and the client's CPU so far."""
    return [(sum(t), t[7]) for t in map(_ticks, (SERVER_CPU, CLIENT_CPU))]


def steal_share(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> float:
    """The larger of the two CPUs' share of time stolen between two readings."""
    return max(
        (st1 - st0) / max(1, all1 - all0)
        for (all0, st0), (all1, st1) in zip(before, after, strict=True)
    )


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


@contextlib.contextmanager
def server(name: str, root: Path, tmp: Path) -> Iterator[int]:
    if name in AWS_OPTIONS:
        mport = free_port()
        cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "aws", "--root", str(root)]
        cmd += AWS_OPTIONS[name]
        cmd += ["--workers", "1", "--log-level", "info", "--metrics", f"127.0.0.1:{mport}"]
        srv = harness.start(cmd, cwd=REPO_DIR)
        _METRICS_PORT[srv.port] = mport
        try:
            yield srv.port
        finally:
            harness.stop(srv)
            del _METRICS_PORT[srv.port]
        return
    port = free_port()
    aio = "aio threads;" if name == "nginx-aio-threads" else ""
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"""worker_processes 1; daemon off; pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; keepalive_requests 1000000;
    client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/px; fastcgi_temp_path {tmp}/fc;
    uwsgi_temp_path {tmp}/uw; scgi_temp_path {tmp}/sc;
    server {{
        listen 127.0.0.1:{port}; root {root};
        location /static/ {{ sendfile on; tcp_nopush on; {aio} }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, "nginx", "-p", f"{tmp}/", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while probe(port) is None:  # any answer (its 1k.bin is not in this root)
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.05)
        yield port
    finally:
        harness.stop(proc)


class Downloads:
    """Client threads fetching the big files again and again, counting every byte."""

    def __init__(self, port: int, files: list[Path], evicted: bool) -> None:
        self.port = port
        self.files = files
        self.evicted = evicted
        self.stop = threading.Event()
        self.received = [0] * len(files)
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(files))
        ]

    def __enter__(self) -> Downloads:
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.seconds = time.monotonic() - self.started

    def _run(self, i: int) -> None:
        buf = bytearray(MiB)
        request = f"GET /static/{self.files[i].name} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            while not self.stop.is_set():
                if self.evicted:
                    evict(self.files[i])
                sock.sendall(request)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                head, _, rest = head.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                got = len(rest)
                while got < length and not self.stop.is_set():
                    n = sock.recv_into(buf)
                    if not n:
                        self.errors.append("closed mid-body")
                        return
                    got += n
                    self.received[i] += n
                if got < length:
                    return  # stopped mid-body: the connection is dropped with the thread


def run_wrk(
    port: int, duration: int, pace: Path | None = None
) -> tuple[float, float, float, float]:
    script = ("-s", str(pace)) if pace is not None else ()
    out = subprocess.run(
        [
            *("taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c10", f"-d{duration}s", "--latency"),
            *script,
            f"http://127.0.0.1:{port}/static/hot.bin",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout

    def ms(text: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
        if m is None:
            raise RuntimeError(f"wrk printed a latency this cannot read: {text!r}\n{out}")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: "77.50%" in the Req/Sec line must not pass for the 50% percentile.
    p50 = ms(re.search(r"(?m)^\s+50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    lat_max = ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99, lat_max


def measure(name: str, case: str, root: Path, tmp: Path, duration: int) -> Cell:
    files = sorted((root / "static").glob("big*.bin"))
    if case in ("cached", PACED, DOWNLOADS_ONLY):
        for path in files:
            # This VM's kernel reclaims page cache on its own (DAMON): a file read once
            # may have lost a few pages by the time fincore looks. Read it again, and
            # accept 95% in memory (the evicted case accepts 5% left, likewise).
            for _ in range(10):
                warm(path)
                if resident(path) == BIG:
                    break
            held = resident(path)
            assert held >= BIG - BIG // 20, f"{path.name}: only {held} bytes in the page cache"
            SHORTFALL[0] = max(SHORTFALL[0], BIG - held)
    if case == "evicted":
        for path in files:
            # Readahead still in flight from the previous server can land after one
            # DONTNEED, and pages still held by closing sockets (sendfile is zero-copy)
            # cannot be dropped until those let go: ask again for up to 10 s.
            for _ in range(200):
                evict(path)
                if resident(path) == 0:
                    break
                time.sleep(0.05)
            left = resident(path)
            assert left <= BIG // 20, f"{path.name}: {left} bytes still in the page cache"
            RESIDUE[0] = max(RESIDUE[0], left)
    with server(name, root, tmp) as port:
        mport = _METRICS_PORT.get(port)

        pace = None
        if case == PACED:
            pace = tmp / "pace.lua"
            pace.write_text(f"function delay()\n  return {PACE_MS}\nend\n")

        def hot() -> Cell:
            """wrk's run, with the downloads' MiB/s left at 0 for the caller to fill."""
            before = _turn_buckets(mport) if mport else []
            ticks = steal_ticks()
            rps, p50, p99, lat_max = run_wrk(port, duration, pace)
            stolen = steal_share(ticks, steal_ticks())
            turns = None
            if mport:
                time.sleep(0.3)  # one metrics sweep (0.25 s) after the last turn
                turns = turn_p99(before, _turn_buckets(mport))
            return Cell(rps, p50, p99, lat_max, 0.0, turns, steal=stolen)

        if case == "none":
            return hot()
        if case == DOWNLOADS_ONLY:
            return downloads_only(port, files, duration)
        with Downloads(port, files, evicted=case == "evicted") as dl:
            time.sleep(0.5)  # the downloads are under way before the hot client starts
            cell = hot()
        if dl.errors:
            raise RuntimeError(f"{name}: downloads failed: {dl.errors[:3]}")
        cell.dl_mibs = sum(dl.received) / MiB / dl.seconds
        return cell


def downloads_only(port: int, files: list[Path], duration: int) -> Cell:
    """The downloads alone for ``duration`` seconds: their MiB/s, and how much of the
    server's core each MiB took (its busy share over the rate)."""
    with Downloads(port, files, evicted=False) as dl:
        time.sleep(0.5)
        got, began, (ticks, idle) = sum(dl.received), time.monotonic(), core_times()
        time.sleep(duration)
        got, took = sum(dl.received) - got, time.monotonic() - began
        ticks_now, idle_now = core_times()
    if dl.errors:
        raise RuntimeError(f"downloads failed: {dl.errors[:3]}")
    busy = 1 - (idle_now - idle) / max(1, ticks_now - ticks)
    mibs = got / MiB / took
    return Cell(0.0, 0.0, 0.0, 0.0, mibs, None, busy * 1000 / mibs if mibs else None)


def _most_stolen(runs: list[Cell]) -> str:
    stolen = [c.steal for c in runs if c.steal is not None]
    return f"{max(stolen):.1%}" if stolen else "—"


def report(cells: dict[tuple[str, str], list[Cell]], servers: list[str], rounds: int) -> str:
    lines = [
        "# Cold-file benchmark (`make bench-cold`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {os.uname().release}, "
        f"{rounds} alternated rounds, medians. One worker on CPU {SERVER_CPU}; wrk -t1 -c10 "
        f"and {DOWNLOADS} download threads on CPU {CLIENT_CPU}.",
        "",
        "| big files | server | hot req/s | p50 ms | p99 ms | max ms | downloads MiB/s "
        "| loop turn p99 ms | steal, max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in (*CASES, *EXTRA_CASES):
        for name in servers:
            runs = cells.get((case, name), [])
            if not runs:
                continue

            def med(attr: str, runs: list[Cell] = runs) -> float:
                return statistics.median(getattr(c, attr) for c in runs)

            turns = [c.turn_p99 for c in runs if c.turn_p99 is not None]
            turn = f"<= {statistics.median(turns) * 1000:g}" if turns else "—"
            if case == DOWNLOADS_ONLY:
                cost = statistics.median(c.core_ms_per_mib or 0.0 for c in runs)
                lines.append(
                    f"| downloads only | {name} | — | — | — | — | {med('dl_mibs'):,.0f} "
                    f"({cost:.3f} ms of the server core a MiB) | — | — |"
                )
                continue
            lines.append(
                f"| {case} | {name} | {med('rps'):,.0f} | {med('p50'):.2f} | {med('p99'):.2f} "
                f"| {med('max'):.1f} | {med('dl_mibs'):,.0f} | {turn} | {_most_stolen(runs)} |"
            )
    lines += [
        "",
        f"Evicted: at most {RESIDUE[0] / MiB:.1f} MiB of a {BIG // MiB} MiB file was still "
        "in the page cache when a run began (fincore; pages held by closing sockets).",
        f"Cached: at most {SHORTFALL[0] / MiB:.1f} MiB of one was missing from it (the VM's "
        "kernel reclaims page cache on its own).",
        "",
        "Loop turn p99 (aws only, which runs with `--metrics` here): the bucket bound of "
        "`aws_loop_turn_seconds` under which 99% of the worker's loop turns fell while wrk "
        "ran (scraped before and after; a sweep's 0.25 s of downloads-only turns on either "
        "side are included). A ready request waits behind at most the rest of one turn "
        "and its own place in the next; what wrk reports beyond that was added outside "
        "the server, on the client core the download threads share.",
        "",
        "Steal: the most that the hypervisor took from either CPU (/proc/stat) while wrk "
        "ran, in the round with the most. On the dev VM it took time only while the disk "
        "was busy, in stretches that held every hot request at once: evicted-case runs "
        "with 1.4-2.7% stolen had an aws p99 of 17-20 ms, runs with 0.0-0.2% one of "
        "0.56-2.2 ms. Read a p99 beside its round's steal (Every round, below).",
        "",
        f"{PACED} (when run): the cached case with each wrk connection waiting {PACE_MS} ms "
        "after every answer (a wrk `delay()`), so every server answers about the same few "
        "small requests and the downloads compare at equal work. wrk's latencies leave "
        "the delay out.",
        "",
        "Every round:",
        "",
    ]
    for (case, name), runs in cells.items():
        shown = "; ".join(
            f"{c.rps:,.0f} req/s p99 {c.p99:.2f} ms max {c.max:.1f} ms dl {c.dl_mibs:,.0f}"
            + (f" turn p99 <= {c.turn_p99 * 1000:g} ms" if c.turn_p99 is not None else "")
            + (f" core {c.core_ms_per_mib:.3f} ms/MiB" if c.core_ms_per_mib else "")
            + (f" steal {c.steal:.1%}" if c.steal is not None else "")
            for c in runs
        )
        lines.append(f"- {case} / {name}: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.httpbench.cold")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "cold_results.md")
    p.add_argument("--servers", nargs="+", default=list(SERVERS), choices=(*SERVERS, *AWS_OPTIONS))
    p.add_argument(
        "--cases",
        nargs="+",
        default=list(CASES),
        choices=(*CASES, *EXTRA_CASES),
        help=f"also {DOWNLOADS_ONLY!r}: the cached downloads alone, with their cost per MiB; "
        f"{PACED!r}: the cached case with wrk paced ({PACE_MS} ms between a connection's "
        "requests), the downloads at equal small-request work",
    )
    args = p.parse_args(argv)
    ensure_tools()
    if shutil.which("fincore") is None:
        raise SystemExit("fincore (util-linux) is needed to check eviction")
    servers = list(args.servers)
    if "nginx-aio-threads" in servers and not nginx_has_threads():
        print("this nginx has no thread pools: nginx-aio-threads left out", file=sys.stderr)
        servers.remove("nginx-aio-threads")
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the download threads share wrk's core
    tmp = Path(tempfile.mkdtemp(prefix="aws-bench-cold-", dir="/var/tmp"))
    cells: dict[tuple[str, str], list[Cell]] = {}
    try:
        print(f"writing {DOWNLOADS} x {BIG // MiB} MiB under {tmp} ...", flush=True)
        root = make_root(tmp)
        for r in range(args.rounds):
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for case in args.cases:
                for name in order:
                    cell = measure(name, case, root, tmp, args.duration)
                    cells.setdefault((case, name), []).append(cell)
                    cost = cell.core_ms_per_mib
                    print(
                        f"[round {r + 1}/{args.rounds}] {case:8} {name:18} {cell.rps:9,.0f} "
                        f"req/s p99 {cell.p99:6.2f} ms max {cell.max:6.1f} ms "
                        f"downloads {cell.dl_mibs:7,.0f} MiB/s"
                        + (f" turn p99 <= {cell.turn_p99 * 1000:g} ms" if cell.turn_p99 else "")
                        + (f" core {cost:.3f} ms/MiB" if cost else "")
                        + (f" steal {cell.steal:.1%}" if cell.steal is not None else ""),
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(cells, servers, args.rounds)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
