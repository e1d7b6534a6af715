"""Server processes: start one pinned to its CPU, wait until it answers, always stop it."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import REPO_DIR
from .servers import Context, ServerError, ServerSpec

SERVER_CPU = "0"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

# Every server still running, so an interrupted run can stop them all on its way out.
_LIVE: list[subprocess.Popen[bytes]] = []


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


def run_cmd(argv: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a helper command, capturing text output, never raising on failure."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


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
