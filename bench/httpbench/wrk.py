"""One timed wrk run: its command line, its report line, and who used the CPU meanwhile."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from . import BENCH_DIR
from .idle import IdleError, group_rss_kib, held_idle, raise_nofile
from .procs import free_port, run_cmd, running
from .servers import FD_MARGIN, Context, ServerError, ServerSpec, with_room_for_many
from .workloads import MIB, Workload

LUA_SCRIPT = BENCH_DIR / "wrk_report.lua"
CLIENT_CPU = "1"
CLIENT_BOUND_PCT = 90.0
NOISY_PCT = 25.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """Counters from one wrk run, as printed by bench/wrk_report.lua."""

    requests: int
    nbytes: int
    duration_us: int
    status: int
    connect: int
    read: int
    write: int
    timeout: int
    p50_us: int
    p99_us: int
    server_cpu: float = 0.0  # % of one core used by the server's process group
    client_cpu: float = 0.0  # % of one core used by wrk
    other_cpu: float = 0.0  # % of one core used by everything else (other users' jobs)
    server_cpu_s: float = 0.0  # CPU seconds of the server's process group during the run
    idle_kib: float | None = None  # server RSS per idle connection (rows with Workload.idle)

    @property
    def server_us_per_request(self) -> float | None:
        """Server CPU per completed request: flat when the server is the bottleneck, and
        low with the server well under 100% when wrk is (a wrk-bound row shows as such)."""
        return 1e6 * self.server_cpu_s / self.requests if self.requests else None

    def server_cost(self, wl: Workload) -> float | None:
        """Server CPU µs per request, or per MiB on big-file rows: with 256 clients on
        64 MiB files hardly a request completes in a short run, but every byte counts."""
        if not wl.bytes_metric:
            return self.server_us_per_request
        return 1e6 * self.server_cpu_s / (self.nbytes / MIB) if self.nbytes else None

    @property
    def client_bound(self) -> bool:
        """wrk saturated its core, so the figure is a floor for the server, not its limit."""
        return self.client_cpu >= CLIENT_BOUND_PCT

    @property
    def noisy(self) -> bool:
        """Something besides server and wrk took real CPU: the figure is contaminated."""
        return self.other_cpu >= NOISY_PCT

    @property
    def bad(self) -> int:
        """Responses/errors that make the figure untrustworthy (non-2xx, read, write)."""
        return self.status + self.read + self.write

    def value(self, wl: Workload) -> float:
        """Headline figure in the workload's unit, over wrk's measured duration."""
        secs = max(self.duration_us, 1) / 1e6
        return self.nbytes / secs / MIB if wl.bytes_metric else self.requests / secs


Outcome = Sample | str  # a str is a failure message for that cell


def wrk_argv(wl: Workload, port: int, duration: int) -> list[str]:
    """Single-thread wrk on CPU 1 with the reporting script; close workloads add the header;
    ``port`` is the TLS listener's for HTTPS workloads."""
    opts = f"-t1 -c{wl.conns} -d{duration}s --latency --timeout 30s".split()
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", *opts, "-s", str(LUA_SCRIPT)]
    if wl.close:
        argv += ["-H", "Connection: close"]
    for header in wl.headers:
        argv += ["-H", header]
    scheme = "https" if wl.tls else "http"
    return [*argv, f"{scheme}://127.0.0.1:{port}{wl.path}"]


def parse_wrk(stdout: str) -> Sample | None:
    """Read the `BENCH k=v ...` line printed by wrk_report.lua's done()."""
    for line in stdout.splitlines():
        if line.startswith("BENCH "):
            fields = dict(item.split("=", 1) for item in line.split()[1:])
            return Sample(
                requests=int(fields["requests"]),
                nbytes=int(fields["bytes"]),
                duration_us=int(fields["duration_us"]),
                status=int(fields["status"]),
                connect=int(fields["connect"]),
                read=int(fields["read"]),
                write=int(fields["write"]),
                timeout=int(fields["timeout"]),
                p50_us=int(fields["p50_us"]),
                p99_us=int(fields["p99_us"]),
            )
    return None


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process in the server's group (nginx master + worker, etc.)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after ")": state ppid pgrp ... utime stime
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of reaped children; the delta around one wrk run is wrk's own usage."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def system_busy_seconds() -> float:
    """Machine-wide user+nice+system+steal CPU time (softirq excluded: it is loopback work)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, steal = (int(fields[i]) for i in (0, 1, 2, 7))
        return (user + nice + system + steal) / CLK_TCK
    return 0.0


def foreign_cpu_pct(seconds: float = 1.0) -> float:
    """CPU % used by other processes while we sit idle, to warn before measuring."""
    before = system_busy_seconds()
    time.sleep(seconds)
    return 100 * (system_busy_seconds() - before) / seconds


def run_wrk(wl: Workload, port: int, pgid: int, duration: int) -> Outcome:
    """One timed wrk run plus CPU use of server, wrk and everything else on the machine.

    Server and wrk CPU tell a server-bound run from a client-bound one; the rest tells
    whether another job on the (shared) machine stole cycles during the run.
    """
    srv0, cli0, sys0 = group_cpu_seconds(pgid), children_cpu_seconds(), system_busy_seconds()
    proc = run_cmd(wrk_argv(wl, port, duration), timeout=duration + 90)
    srv1, cli1, sys1 = group_cpu_seconds(pgid), children_cpu_seconds(), system_busy_seconds()
    sample = parse_wrk(proc.stdout)
    if sample is None:
        err = (proc.stderr or proc.stdout).strip().replace("\n", " / ")[-300:]
        return f"wrk failed (rc {proc.returncode}): {err}"
    secs = max(sample.duration_us, 1) / 1e6
    srv, cli = srv1 - srv0, cli1 - cli0
    other = max((sys1 - sys0) - srv - cli, 0.0)
    return dataclasses.replace(
        sample,
        server_cpu=100 * srv / secs,
        server_cpu_s=srv,
        client_cpu=100 * cli / secs,
        other_cpu=100 * other / secs,
    )


def measure(ctx: Context, spec: ServerSpec, wl: Workload, duration: int) -> Outcome:
    """Fresh server process per cell so no server benefits from another's leftovers.
    An HTTPS cell gives the server a TLS listener on a port of its own (ctx.tls_port)."""
    tls_port = None
    if wl.tls:
        if ctx.tls is None:
            return "no certificate: `openssl req` failed or openssl is missing"
        tls_port = ctx.tls_port = free_port()
    if wl.idle:
        spec = with_room_for_many(spec)
        try:
            raise_nofile(wl.idle + FD_MARGIN)  # before the server starts: it inherits it
        except IdleError as exc:
            return str(exc)
    try:
        with running(ctx, spec) as (port, pgid):
            if wl.idle:
                return run_with_idle(ctx, wl, port, pgid, duration)
            return run_wrk(wl, tls_port or port, pgid, duration)
    except ServerError as exc:
        return f"failed to start: {exc}"
    finally:
        ctx.tls_port = None


def run_with_idle(ctx: Context, wl: Workload, port: int, pgid: int, duration: int) -> Outcome:
    """The wrk run with `wl.idle` verified keep-alive connections held open throughout.

    Memory per idle connection: the server group's RSS with them all open minus its RSS
    just before the first was opened (the server had already answered the readiness
    probe), divided by their number.
    """
    before = group_rss_kib(pgid)
    try:
        with held_idle(port, wl.idle, wl.path, ctx.digests[wl.path]) as pool:
            held = group_rss_kib(pgid)
            outcome = run_wrk(wl, port, pgid, duration)
            closed = pool.closed()
    except IdleError as exc:
        return f"idle connections: {exc}"
    if isinstance(outcome, str):
        return outcome
    if closed:
        return f"the server closed {closed} of {wl.idle} idle connections during the run"
    return dataclasses.replace(outcome, idle_kib=(held - before) / wl.idle)
