#!/usr/bin/env python3
"""HTTP file-serving benchmark: aws against nginx and common Python servers.

Every server gets ONE worker pinned to CPU 0 and wrk gets one thread pinned to CPU 1, so
the numbers compare per-core efficiency instead of how many cores a server can grab.
Servers run one at a time on a fresh temp root, each cell is measured in several rounds
with the servers interleaved, and the medians plus every raw figure go to a markdown
report (and a PNG chart when matplotlib is available). See bench/README.md.

Usage: python bench/http_bench.py [--rounds 3] [--duration 5] [--out bench/results.md]
                                  [--servers nginx aws ...] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import http.client
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "wrk_report.lua"
PEERS_DIR = BENCH_DIR / "peers"

SMALL_SIZE = 1024
LARGE_SIZE = 64 * 1024 * 1024
SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
# Start + readiness probe + wrk start-up + stop, measured on the 2-core dev box.
CELL_OVERHEAD_S = 1.0
PREFLIGHT_PER_SERVER_S = 3.0
INSTALL_HINT = "pip install -e '.[bench]'"
APT_HINT = "apt-get update && apt-get install -y wrk nginx-light"
MIB = 1024 * 1024
PEER_BAR = 5.0
CLIENT_BOUND_MARK = " †"
CLIENT_BOUND_PCT = 90.0
NOISY_MARK = " ‡"
NOISY_PCT = 25.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    """One wrk scenario; `bar` is the aws/nginx ratio aws is expected to reach."""

    key: str
    title: str
    path: str
    conns: int
    close: bool
    bytes_metric: bool
    bar: float
    aws_nginx_only: bool

    @property
    def unit(self) -> str:
        """Unit of the headline figure: throughput for big files, rate for small ones."""
        return "MiB/s" if self.bytes_metric else "req/s"


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        key="ka-1k",
        title="1 KiB static, keep-alive, c50",
        path="/static/1k.bin",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=1.0,
        aws_nginx_only=False,
    ),
    Workload(
        key="close-1k",
        title="1 KiB static, Connection: close, c50",
        path="/static/1k.bin",
        conns=50,
        close=True,
        bytes_metric=False,
        bar=0.6,
        aws_nginx_only=False,
    ),
    Workload(
        key="static-64m",
        title="64 MiB static, c4",
        path="/static/64m.bin",
        conns=4,
        close=False,
        bytes_metric=True,
        bar=0.95,
        aws_nginx_only=False,
    ),
    Workload(
        key="dyn-1k",
        title="1 KiB /dynamic/, keep-alive, c50",
        path="/dynamic/1k.bin",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=0.8,
        aws_nginx_only=True,
    ),
    Workload(
        key="dyn-64m",
        title="64 MiB /dynamic/, c4",
        path="/dynamic/64m.bin",
        conns=4,
        close=False,
        bytes_metric=True,
        bar=1.0,
        aws_nginx_only=True,
    ),
)


@dataclass
class Context:
    """Run-wide state: temp dirs, expected digests and the nginx aio mode in use."""

    tmp: Path
    root: Path
    digests: dict[str, str]
    nginx_aio: str
    notes: list[str] = field(default_factory=list)
    log_seq: int = 0


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one server; `modules` are imports it needs (Python peers only)."""

    name: str
    python_peer: bool
    modules: tuple[str, ...]
    argv: Callable[[Context, int], list[str]]
    env: Callable[[Context], dict[str, str]] = field(default=lambda ctx: {})


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


class ServerError(Exception):
    """The server could not be started or answered wrongly; message goes into the report."""


# --------------------------------------------------------------------------- processes

_LIVE: list[subprocess.Popen[bytes]] = []


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so the finally-cleanup always runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server in its own session so one killpg reaps it and all its children."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=REPO_DIR,
            start_new_session=True,
        )
    _LIVE.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM the server itself (tests graceful exit), then SIGKILL its whole group."""
    code: int | None = None
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    if proc in _LIVE:
        _LIVE.remove(proc)
    return code


def stop_all() -> None:
    """Kill every server still registered; called from finally and on Ctrl-C."""
    for proc in list(_LIVE):
        stop(proc)


def free_port() -> int:
    """Ask the kernel for an unused loopback port so runs never collide with anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log: Path, limit: int = 400) -> str:
    """Last lines of a server log squeezed onto one table-safe line."""
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][-6:]
    tail = " / ".join(lines)[-limit:]
    return tail.replace("|", "\\|") or "(empty log)"


# --------------------------------------------------------------------------- preflight


def run_cmd(argv: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a helper command, capturing text output, never raising on failure."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def apt_install(packages: Sequence[str]) -> bool:
    """Install Debian packages, refreshing the index once if the first try fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", *packages]
    print(f"preflight: {' '.join(cmd)}")
    if subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL).returncode == 0:
        return True
    print("preflight: install failed, running apt-get update first")
    subprocess.run(["apt-get", "update"], env=env, check=False, stdout=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL).returncode == 0


def ensure_tools() -> None:
    """wrk, nginx and taskset are required; install them as root, else tell how and exit."""
    missing = [tool for tool in ("wrk", "nginx", "taskset") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        print(f"missing {', '.join(missing)}; install with (as root):\n  {APT_HINT}")
        sys.exit(1)
    packages = {"wrk": "wrk", "nginx": "nginx-light", "taskset": "util-linux"}
    if not apt_install([packages[tool] for tool in missing]):
        print(f"could not install {', '.join(missing)}; try:\n  {APT_HINT}")
        sys.exit(1)


def nginx_has_threads() -> bool:
    """`aio threads` needs nginx built --with-threads; `nginx -V` lists configure flags."""
    return "--with-threads" in run_cmd(["nginx", "-V"]).stderr


def choose_nginx_aio() -> tuple[str, str | None]:
    """Prefer `aio threads` (what aws is measured against); fall back to `aio on` loudly."""
    if nginx_has_threads():
        return "threads", None
    if os.geteuid() == 0:
        for pkg in ("nginx", "nginx-core"):
            if apt_install([pkg]) and nginx_has_threads():
                return "threads", f"installed Debian package `{pkg}` to get `aio threads`"
    return "on", (
        "nginx in use is not built --with-threads: /dynamic/ uses `aio on` "
        "instead of `aio threads`, so dynamic rows are not the intended baseline"
    )


def missing_modules(spec: ServerSpec) -> list[str]:
    """Which of a peer's imports are absent, so it can be skipped with a visible row."""
    return [mod for mod in spec.modules if importlib.util.find_spec(mod) is None]


# --------------------------------------------------------------------------- fixtures


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync so O_DIRECT reads see the data on disk, not dirty pages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    path.chmod(0o644)


def make_root(tmp: Path) -> tuple[Path, dict[str, str]]:
    """Random 1 KiB and 64 MiB files under static/ and dynamic/, plus their sha256."""
    root = tmp / "root"
    digests: dict[str, str] = {}
    blobs = {"1k.bin": os.urandom(SMALL_SIZE), "64m.bin": os.urandom(LARGE_SIZE)}
    for tree in ("static", "dynamic"):
        for name, data in blobs.items():
            write_file(root / tree / name, data)
            digests[f"/{tree}/{name}"] = hashlib.sha256(data).hexdigest()
    for path in (tmp, root, root / "static", root / "dynamic"):
        path.chmod(0o755)  # nginx workers drop to `nobody` and must read the tree
    return root, digests


# --------------------------------------------------------------------------- servers


def nginx_conf(ctx: Context, port: int) -> Path:
    """Tuned single-worker nginx: sendfile for static/, thread-pool aio+directio for dynamic/."""
    tmp = ctx.tmp / "nginx"
    tmp.mkdir(exist_ok=True)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 1s;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        root {ctx.root};
        location /static/ {{ sendfile on; tcp_nopush on; }}
        location /dynamic/ {{
            sendfile off; aio {ctx.nginx_aio}; directio 4k; output_buffers 2 1m;
        }}
    }}
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_argv(ctx: Context, port: int) -> list[str]:
    """nginx with a prefix and error log inside the temp dir (never touches /etc or /var/log)."""
    tmp = ctx.tmp / "nginx"
    conf = nginx_conf(ctx, port)
    return ["nginx", "-p", f"{tmp}/", "-e", f"{tmp}/error.log", "-c", str(conf)]


def aws_env(ctx: Context) -> dict[str, str]:
    """The package is installed in the interpreter that runs the benchmark."""
    return {}


def aws_argv(ctx: Context, port: int) -> list[str]:
    """The server under test, exactly as deployed but with a single worker."""
    opts = f"--host 127.0.0.1 --port {port} --workers 1 --log-level warning".split()
    return [sys.executable, "-m", "aws", *opts, "--root", str(ctx.root)]


def http_server_argv(ctx: Context, port: int) -> list[str]:
    """Stdlib baseline: what `python -m http.server` gives with zero effort."""
    opts = f"{port} --bind 127.0.0.1".split()
    return [sys.executable, "-m", "http.server", *opts, "--directory", str(ctx.root)]


def aiohttp_argv(ctx: Context, port: int) -> list[str]:
    """aiohttp's add_static (sendfile-based) via bench/peers/aiohttp_app.py."""
    app = str(PEERS_DIR / "aiohttp_app.py")
    return [sys.executable, app, "--root", str(ctx.root), "--port", str(port)]


def uvicorn_argv(ctx: Context, port: int) -> list[str]:
    """Starlette StaticFiles under a single uvicorn process, access log off like the others."""
    opts = f"--host 127.0.0.1 --port {port} --log-level warning --no-access-log".split()
    app = ["starlette_app:app", "--app-dir", str(PEERS_DIR)]
    return [sys.executable, "-m", "uvicorn", *app, *opts]


def uvicorn_env(ctx: Context) -> dict[str, str]:
    """uvicorn imports the app by name, so the root travels in the environment."""
    return {"BENCH_ROOT": str(ctx.root)}


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(name="nginx", python_peer=False, modules=(), argv=nginx_argv),
    ServerSpec(name="aws", python_peer=False, modules=(), argv=aws_argv, env=aws_env),
    ServerSpec(
        name="http.server", python_peer=True, modules=("http.server",), argv=http_server_argv
    ),
    ServerSpec(name="aiohttp", python_peer=True, modules=("aiohttp",), argv=aiohttp_argv),
    ServerSpec(
        name="uvicorn+starlette",
        python_peer=True,
        modules=("uvicorn", "starlette"),
        argv=uvicorn_argv,
        env=uvicorn_env,
    ),
)


def probe(port: int) -> int | None:
    """One GET /static/1k.bin; returns the status, or None if nothing answered yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/static/1k.bin")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Block until the server answers 200 on the small file, or fail with its stderr tail."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: int | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"exited with {proc.returncode}: {log_tail(log)}")
        last = probe(port)
        if last == 200:
            return
        time.sleep(0.05)
    got = "no answer" if last is None else f"HTTP {last}"
    raise ServerError(f"not ready after {READY_TIMEOUT_S:.0f}s ({got}): {log_tail(log)}")


@contextlib.contextmanager
def running(ctx: Context, spec: ServerSpec) -> Iterator[tuple[int, int]]:
    """Start the server pinned to CPU 0 on a fresh port, yield (port, pgid), always stop it."""
    port = free_port()
    ctx.log_seq += 1
    log = ctx.tmp / "logs" / f"{ctx.log_seq:03d}-{spec.name}.log"
    log.parent.mkdir(exist_ok=True)
    argv = ["taskset", "-c", SERVER_CPU, *spec.argv(ctx, port)]
    proc = spawn(argv, log, spec.env(ctx))
    try:
        wait_ready(proc, port, log)
        yield port, proc.pid
    finally:
        was_alive = proc.poll() is None
        code = stop(proc)
        if spec.name == "aws" and was_alive:
            note_shutdown(ctx, code, log)


def note_shutdown(ctx: Context, code: int | None, log: Path) -> None:
    """aws must exit 0 on SIGTERM; record (once) when it did not, since deploys rely on it."""
    if code == 0:
        return
    what = "did not exit within" if code is None else f"exited with {code} within"
    note = f"aws {what} {STOP_TIMEOUT_S:.0f} s of SIGTERM (expected exit 0)"
    if not any(n.startswith(note) for n in ctx.notes):
        ctx.notes.append(f"{note}: {log_tail(log)}")


def verify_bodies(ctx: Context, spec: ServerSpec, port: int) -> None:
    """Byte-compare each file the server will be timed on, so speed never hides wrong data."""
    trees = ("static", "dynamic") if not spec.python_peer else ("static",)
    for tree in trees:
        for name in ("1k.bin", "64m.bin"):
            url_path = f"/{tree}/{name}"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{url_path}", timeout=60) as r:
                digest = hashlib.sha256(r.read()).hexdigest()
            if digest != ctx.digests[url_path]:
                raise ServerError(f"body of {url_path} differs from the generated file")


def preflight_server(ctx: Context, spec: ServerSpec) -> str | None:
    """Start, probe and verify one server; None if usable, else the reason for its row."""
    absent = missing_modules(spec)
    if absent:
        print(f"  {spec.name}: not installed ({', '.join(absent)}); run: {INSTALL_HINT}")
        return f"not installed ({', '.join(absent)}): {INSTALL_HINT}"
    try:
        with running(ctx, spec) as (port, _):
            verify_bodies(ctx, spec, port)
    except ServerError as exc:
        prefix = "aws failed to start" if spec.name == "aws" else f"{spec.name} failed"
        print(f"  {spec.name}: {prefix}: {exc}")
        return f"{prefix}: {exc}"
    except (OSError, http.client.HTTPException) as exc:
        print(f"  {spec.name}: body check failed: {exc}")
        return f"body check failed: {exc}"
    print(f"  {spec.name}: ok (bodies verified)")
    return None


# --------------------------------------------------------------------------- measuring


def wrk_argv(wl: Workload, port: int, duration: int) -> list[str]:
    """Single-thread wrk on CPU 1 with the reporting script; close workloads add the header."""
    opts = f"-t1 -c{wl.conns} -d{duration}s --latency --timeout 30s".split()
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", *opts, "-s", str(LUA_SCRIPT)]
    if wl.close:
        argv += ["-H", "Connection: close"]
    return [*argv, f"http://127.0.0.1:{port}{wl.path}"]


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
        client_cpu=100 * cli / secs,
        other_cpu=100 * other / secs,
    )


def measure(ctx: Context, spec: ServerSpec, wl: Workload, duration: int) -> Outcome:
    """Fresh server process per cell so no server benefits from another's leftovers."""
    try:
        with running(ctx, spec) as (port, pgid):
            return run_wrk(wl, port, pgid, duration)
    except ServerError as exc:
        return f"failed to start: {exc}"


def fmt_value(value: float, wl: Workload) -> str:
    """Thousands-separated figure with its unit."""
    return f"{value:,.0f} {wl.unit}"


def describe(outcome: Outcome, wl: Workload) -> str:
    """One progress/raw-table cell: figure, or ERR with how many bad responses."""
    if isinstance(outcome, str):
        return f"ERR ({outcome})"
    if outcome.bad:
        return f"ERR ({outcome.bad} bad)"
    return fmt_value(outcome.value(wl), wl)


def servers_for(wl: Workload, specs: Sequence[ServerSpec]) -> list[ServerSpec]:
    """Dynamic workloads are only meaningful for aws and nginx (the peers have no O_DIRECT)."""
    if wl.aws_nginx_only:
        return [s for s in specs if s.name in ("aws", "nginx")]
    return list(specs)


def run_rounds(
    ctx: Context, specs: Sequence[ServerSpec], rounds: int, duration: int
) -> dict[tuple[str, str], list[Outcome]]:
    """Round r: every workload, every server, rotating server order to spread drift."""
    results: dict[tuple[str, str], list[Outcome]] = {}
    for rnd in range(rounds):
        shift = rnd % max(len(specs), 1)
        order = [*specs[shift:], *specs[:shift]]
        for wl in WORKLOADS:
            for spec in servers_for(wl, order):
                outcome = measure(ctx, spec, wl, duration)
                results.setdefault((wl.key, spec.name), []).append(outcome)
                head = f"[round {rnd + 1}/{rounds}] {wl.key:<10} {spec.name:<18}"
                print(f"{head} {progress_text(outcome, wl)}", flush=True)
    return results


def progress_text(outcome: Outcome, wl: Workload) -> str:
    """Live line per cell, with the CPU split so a suspicious figure is visible at once."""
    text = describe(outcome, wl)
    if isinstance(outcome, Sample):
        text += (
            f"  p99 {outcome.p99_us / 1000:.2f} ms  cpu srv {outcome.server_cpu:.0f}%"
            f" wrk {outcome.client_cpu:.0f}% other {outcome.other_cpu:.0f}%"
        )
        if outcome.connect or outcome.timeout:
            text += f"  connect-err {outcome.connect} timeouts {outcome.timeout}"
    return text


# --------------------------------------------------------------------------- reporting


def median_of(outcomes: Sequence[Outcome], wl: Workload) -> float | str:
    """Median over rounds, or the reason it cannot be trusted (any bad round taints it)."""
    failures = [o for o in outcomes if isinstance(o, str)]
    if failures:
        return failures[0]
    samples = [o for o in outcomes if isinstance(o, Sample)]
    bad = sum(s.bad for s in samples)
    if bad:
        return f"ERR ({bad} bad)"
    if not samples:
        return "no data"
    return statistics.median(s.value(wl) for s in samples)


def ratio_text(ratio: float | None, bar: float | None = None) -> str:
    """`0.93x`, with PASS/FAIL against the bar when one is given."""
    if ratio is None:
        return "n/a"
    if bar is None:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x {'PASS' if ratio >= bar else 'FAIL'}"


def cell_marks(results: dict[tuple[str, str], list[Outcome]]) -> dict[tuple[str, str], str]:
    """† when wrk was saturated in most rounds (figure is a floor); ‡ when any round was noisy."""
    marks: dict[tuple[str, str], str] = {}
    for key, outcomes in results.items():
        samples = [o for o in outcomes if isinstance(o, Sample)]
        mark = ""
        if samples and 2 * sum(s.client_bound for s in samples) > len(samples):
            mark += CLIENT_BOUND_MARK
        if any(s.noisy for s in samples):
            mark += NOISY_MARK
        marks[key] = mark
    return marks


def medians_table(
    specs: Sequence[ServerSpec],
    status: dict[str, str | None],
    medians: dict[tuple[str, str], float | str],
    marks: dict[tuple[str, str], str],
) -> list[str]:
    """Main table: per-server medians (with ratio to nginx), aws/nginx and the bar."""
    names = [s.name for s in specs]
    head = ["Workload", *names, "aws/nginx", "bar"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl in WORKLOADS:
        nginx = medians.get((wl.key, "nginx"))
        cells = [wl.title]
        for spec in specs:
            cells.append(
                cell_text(wl, spec, status, medians, nginx) + marks.get((wl.key, spec.name), "")
            )
        aws = medians.get((wl.key, "aws"))
        ratio = aws / nginx if isinstance(aws, float) and isinstance(nginx, float) else None
        both = marks.get((wl.key, "aws"), "") + marks.get((wl.key, "nginx"), "")
        flags = "".join(m for m in (CLIENT_BOUND_MARK, NOISY_MARK) if m in both)
        cells += [ratio_text(ratio, wl.bar) + (flags if ratio is not None else ""), f">= {wl.bar}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(peer_row(specs, medians, marks))
    return lines


def cell_text(
    wl: Workload,
    spec: ServerSpec,
    status: dict[str, str | None],
    medians: dict[tuple[str, str], float | str],
    nginx: float | str | None,
) -> str:
    """One median cell; servers skipped in preflight say why instead of staying blank."""
    if wl.aws_nginx_only and spec.name not in ("aws", "nginx"):
        return "—"
    if status.get(spec.name):
        return f"{short_status(status[spec.name] or '')} (see notes)"
    value = medians.get((wl.key, spec.name), "no data")
    if isinstance(value, str):
        return value if value.startswith("ERR") else f"ERR ({value})"
    text = fmt_value(value, wl)
    if isinstance(nginx, float) and spec.name != "nginx":
        text += f" ({value / nginx:.2f}x)"
    return text


def short_status(reason: str) -> str:
    """Head of a skip reason (e.g. `aws failed to start`) that fits in a table cell."""
    return reason.split(":", 1)[0]


def nginx_log_notes(ctx: Context) -> list[str]:
    """Surface nginx alerts (e.g. directio/aio refusing to work) that would skew its baseline."""
    log = ctx.tmp / "nginx" / "error.log"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    levels = ("[emerg]", "[alert]", "[crit]", "[error]")
    found = dict.fromkeys(
        re.sub(r"^\S+ \S+ ", "", ln) for ln in lines if any(lv in ln for lv in levels)
    )
    return [f"nginx error.log: {msg}" for msg in list(found)[:5]]


def peer_row(
    specs: Sequence[ServerSpec],
    medians: dict[tuple[str, str], float | str],
    marks: dict[tuple[str, str], str],
) -> str:
    """Extra row: aws keep-alive 1 KiB rate against the fastest Python peer's."""
    wl = WORKLOADS[0]
    peers = {s.name: medians.get((wl.key, s.name)) for s in specs if s.python_peer}
    valid = {name: v for name, v in peers.items() if isinstance(v, float)}
    aws = medians.get((wl.key, "aws"))
    ratio: float | None = None
    label = "no Python peer measured"
    flags = ""
    if valid:
        best = max(valid, key=lambda name: valid[name])
        label = f"fastest: {best}"
        if isinstance(aws, float):
            ratio = aws / valid[best]
            both = marks.get((wl.key, "aws"), "") + marks.get((wl.key, best), "")
            flags = "".join(m for m in (CLIENT_BOUND_MARK, NOISY_MARK) if m in both)
    cells = [
        f"aws vs fastest Python peer ({wl.key}; {label})",
        *["" for _ in specs],
        ratio_text(ratio, PEER_BAR) + flags,
        f">= {PEER_BAR}",
    ]
    return "| " + " | ".join(cells) + " |"


def raw_table(results: dict[tuple[str, str], list[Outcome]]) -> list[str]:
    """Every round's counters, so a median can always be traced back to its runs."""
    head = [
        "round",
        "workload",
        "server",
        "figure",
        "requests",
        "bytes",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "read err",
        "write err",
        "connect err",
        "timeouts",
        "server cpu %",
        "wrk cpu %",
        "other cpu %",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {wl.key: wl for wl in WORKLOADS}
    for (wkey, name), outcomes in results.items():
        wl = by_key[wkey]
        for rnd, outcome in enumerate(outcomes, 1):
            row = [str(rnd), wkey, name, describe(outcome, wl)]
            if isinstance(outcome, Sample):
                row += [
                    str(outcome.requests),
                    str(outcome.nbytes),
                    f"{outcome.p50_us / 1000:.2f}",
                    f"{outcome.p99_us / 1000:.2f}",
                    str(outcome.status),
                    str(outcome.read),
                    str(outcome.write),
                    str(outcome.connect),
                    str(outcome.timeout),
                    f"{outcome.server_cpu:.0f}",
                    f"{outcome.client_cpu:.0f}",
                    f"{outcome.other_cpu:.0f}",
                ]
            else:
                row += [""] * (len(head) - 4)
            lines.append("| " + " | ".join(row) + " |")
    return lines


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo; results only compare within one machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tool_version(argv: list[str]) -> str:
    """First line of a tool's version banner (nginx and wrk print it on stderr)."""
    proc = run_cmd(argv)
    text = (proc.stderr + proc.stdout).strip().splitlines()
    first = text[0] if text else "unknown"
    first = re.sub(r"^nginx version:\s*", "", first)
    return re.sub(r"\s*Copyright.*$", "", first)


def pkg_version(name: str) -> str:
    """Installed distribution version, or `not installed`."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header_lines(ctx: Context, rounds: int, duration: int) -> list[str]:
    """Everything needed to judge whether two reports are comparable."""
    peers = ", ".join(
        f"{p} {pkg_version(p)}" for p in ("aiohttp", "uvicorn", "starlette", "uvloop", "httptools")
    )
    return [
        "# aws HTTP file-serving benchmark",
        "",
        f"- Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); every server is one worker "
        f"pinned to CPU {SERVER_CPU}, wrk is one thread pinned to CPU {CLIENT_CPU}",
        f"- Kernel: {platform.release()}",
        f"- nginx: {tool_version(['nginx', '-v'])}; /dynamic/ uses `aio {ctx.nginx_aio}` "
        "+ `directio 4k`",
        f"- wrk: {tool_version(['wrk', '-v'])}",
        f"- Python {platform.python_version()}; {peers}",
        f"- Rounds: {rounds}, duration {duration} s per cell; medians reported; a figure "
        "counts only with zero non-2xx responses and zero read/write errors",
        f"- Files: random 1 KiB and 64 MiB under static/ and dynamic/ in a temp dir on "
        f"{fs_type(ctx.tmp)}; 64 MiB figures are MiB/s of response bytes",
    ]


def fs_type(path: Path) -> str:
    """File system of the temp root: O_DIRECT results mean nothing on tmpfs."""
    proc = run_cmd(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)])
    return proc.stdout.strip() or "unknown"


def write_report(
    out: Path,
    ctx: Context,
    specs: Sequence[ServerSpec],
    *,
    status: dict[str, str | None],
    results: dict[tuple[str, str], list[Outcome]],
    rounds: int,
    duration: int,
) -> tuple[dict[tuple[str, str], float | str], list[str]]:
    """Markdown report: header, medians with ratios, server notes, raw rounds.

    Returns the medians (for the chart) and the summary lines (echoed to the terminal).
    """
    medians = {
        key: median_of(outs, next(w for w in WORKLOADS if w.key == key[0]))
        for key, outs in results.items()
    }
    summary = ["## Medians (ratio to nginx in parentheses)", ""]
    summary += medians_table(specs, status, medians, cell_marks(results))
    summary += [
        "",
        f"{CLIENT_BOUND_MARK.strip()} wrk used >= {CLIENT_BOUND_PCT:.0f}% of its core: the "
        "figure is a floor set by the single-core client, and a ratio involving it is "
        "compressed towards 1.0. Server/client CPU per run is in the raw table.",
        "",
        f"{NOISY_MARK.strip()} in at least one round, processes other than the server and wrk "
        f"used >= {NOISY_PCT:.0f}% of a core: the machine was shared and the figure is suspect; "
        "rerun on a quiet machine.",
    ]
    summary += ["", "## Servers and notes", ""]
    for spec in specs:
        summary.append(f"- {spec.name}: {status.get(spec.name) or 'ok (bodies verified)'}")
    summary += [f"- {note}" for note in ctx.notes]
    lines = [*header_lines(ctx, rounds, duration), "", *summary, "", "## Raw rounds", ""]
    lines += raw_table(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return medians, summary


def write_chart(
    png: Path, specs: Sequence[ServerSpec], medians: dict[tuple[str, str], float | str]
) -> str:
    """Bars per server normalised to nginx = 1.0; skipped (and said so) without matplotlib."""
    try:
        # Imported lazily: matplotlib is optional and only the chart needs it.
        importlib.import_module("matplotlib").use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return f"matplotlib not installed: skipped {png.name} ({INSTALL_HINT})"
    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(3.6 * len(WORKLOADS), 4.2))
    for ax, wl in zip(axes, WORKLOADS, strict=True):
        draw_workload(ax, wl, specs, medians)
    fig.suptitle("Median throughput relative to nginx (1 worker on CPU 0, wrk on CPU 1)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return f"chart written to {png}"


def draw_workload(
    ax: Any,
    wl: Workload,
    specs: Sequence[ServerSpec],
    medians: dict[tuple[str, str], float | str],
) -> None:
    """One subplot: every server keeps its slot, missing ones say n/a, aws's bar is dotted."""
    nginx = medians.get((wl.key, "nginx"))
    names = [s.name for s in servers_for(wl, specs)]
    ratios = [relative(medians.get((wl.key, n)), nginx) for n in names]
    heights = [r or 0.0 for r in ratios]
    colors = ["tab:red" if n == "aws" else "tab:blue" for n in names]
    bars = ax.bar(range(len(names)), heights, color=colors)
    for bar, ratio in zip(bars, ratios, strict=True):
        label = "n/a" if ratio is None else f"{ratio:.2f}"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(1.0, linestyle="--", color="gray", label="nginx = 1.0")
    ax.axhline(wl.bar, linestyle=":", color="tab:red", label=f"aws bar {wl.bar}")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_xlim(-0.75, max(len(names), 2) - 0.25)
    ax.set_ylim(0, 1.3 * max([*heights, 1.0, wl.bar]))  # headroom for labels and legend
    ax.set_title(wl.title, fontsize=9)
    ax.set_ylabel("relative to nginx")
    ax.legend(fontsize=7, loc="upper right")


def relative(value: float | str | None, nginx: float | str | None) -> float | None:
    """value/nginx when both medians are trusted numbers, else None (drawn as n/a)."""
    if isinstance(value, float) and isinstance(nginx, float) and nginx > 0:
        return value / nginx
    return None


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """CLI; --quick overrides rounds/duration for a smoke test."""
    names = [s.name for s in SERVERS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (>= 3 for real runs)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.md")
    parser.add_argument(
        "--servers",
        nargs="+",
        default=names,
        help=f"subset of: {' '.join(names)} (comma-separated also accepted)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    wanted = [n for item in args.servers for n in item.split(",") if n]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"unknown server(s) {unknown}; choose from {names}")
    args.specs = [s for s in SERVERS if s.name in wanted]
    if args.rounds < 3 and not args.quick:
        print(f"note: {args.rounds} round(s) < 3, medians are not robust against noise")
    return args


def estimate_seconds(specs: Sequence[ServerSpec], rounds: int, duration: int) -> float:
    """Upper-bound wall time so a too-long configuration is visible before it starts."""
    cells = sum(len(servers_for(wl, specs)) for wl in WORKLOADS)
    return len(specs) * PREFLIGHT_PER_SERVER_S + rounds * cells * (duration + CELL_OVERHEAD_S)


def bench(args: argparse.Namespace, tmp: Path) -> None:
    """Preflight every server, run the rounds, write the report and chart."""
    root, digests = make_root(tmp)
    aio, aio_note = choose_nginx_aio()
    ctx = Context(tmp=tmp, root=root, digests=digests, nginx_aio=aio)
    if aio_note:
        ctx.notes.append(aio_note)
        print(f"note: {aio_note}")
    busy = foreign_cpu_pct()
    if busy >= NOISY_PCT:
        warn = f"machine not idle before the run: other processes used {busy:.0f}% CPU"
        ctx.notes.append(warn)
        print(f"WARNING: {warn}; figures will be noisy")
    print("preflight (start, probe, verify bodies):")
    status = {spec.name: preflight_server(ctx, spec) for spec in args.specs}
    usable = [s for s in args.specs if status[s.name] is None]
    results = run_rounds(ctx, usable, args.rounds, args.duration)
    ctx.notes += nginx_log_notes(ctx)
    medians, summary = write_report(
        args.out,
        ctx,
        args.specs,
        status=status,
        results=results,
        rounds=args.rounds,
        duration=args.duration,
    )
    print("\n".join(["", *summary, ""]))
    print(f"report written to {args.out}")
    print(write_chart(args.out.with_suffix(".png"), args.specs, medians))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: tools first, then a temp root that is always removed with its servers."""
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    ensure_tools()
    est = estimate_seconds(args.specs, args.rounds, args.duration)
    print(
        f"estimated time: ~{est / 60:.1f} min ({args.rounds} rounds x {args.duration} s, "
        f"servers: {', '.join(s.name for s in args.specs)})"
    )
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="aws-bench-", dir="/var/tmp"))
    try:
        bench(args, tmp)
    except KeyboardInterrupt:
        print("interrupted: stopping servers and removing the temp root")
        return 130
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
