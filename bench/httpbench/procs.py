"""Server processes: start one pinned to its CPU, wait until it answers, always stop it.

aws starts and stops through tests/harness.py, like it does in the tests and the soak; the
other servers are spawned here (they print no listening line) and stopped by the harness.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import harness

from . import REPO_DIR
from .servers import Context, ServerError, ServerSpec

SERVER_CPU = "0"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

# Every server still running, so an interrupted run can stop them all on its way out.
_LIVE: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class Launched:
    """A started server: the leader of its own process group, its port, what it printed."""

    proc: subprocess.Popen[bytes]
    port: int
    output: Callable[[], str]


def launch(ctx: Context, spec: ServerSpec) -> Launched:
    """Start the server pinned to CPU 0: aws through tests/harness.py, the others here."""
    env = {**os.environ, **spec.env(ctx)}
    if spec.announces:
        # Port 0 and the listening line: no window in which another process takes the port.
        argv = ["taskset", "-c", SERVER_CPU, *spec.argv(ctx, 0)]
        try:
            run = harness.start(argv, cwd=REPO_DIR, env=env, timeout=READY_TIMEOUT_S)
        except harness.StartError as exc:
            if exc.returncode is None:
                why = f"no listening line after {READY_TIMEOUT_S:.0f}s"
            else:
                why = f"exited with {exc.returncode}"
            raise ServerError(f"{why}: {log_tail(exc.output)}") from None
        _LIVE.append(run.proc)
        return Launched(run.proc, run.port, run.log)
    port = free_port()
    ctx.log_seq += 1
    log = ctx.tmp / "logs" / f"{ctx.log_seq:03d}-{spec.name}.log"
    log.parent.mkdir(exist_ok=True)
    proc = spawn(["taskset", "-c", SERVER_CPU, *spec.argv(ctx, port)], log, env)
    return Launched(proc, port, lambda: read_log(log))


def spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server in its own session so one killpg reaps it and all its children."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_DIR,
            start_new_session=True,
        )
    _LIVE.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM the server itself (tests graceful exit), then SIGKILL its whole group.

    Returns the exit code, or None if SIGTERM was not enough within STOP_TIMEOUT_S.
    """
    code = harness.stop(proc, STOP_TIMEOUT_S)
    if proc in _LIVE:
        _LIVE.remove(proc)
    # The harness sends SIGKILL only once the timeout has run out.
    return None if code == -signal.SIGKILL else code


def stop_all() -> None:
    """Kill every server still registered; called from finally and on Ctrl-C."""
    for proc in list(_LIVE):
        stop(proc)


def free_port() -> int:
    """Ask the kernel for an unused loopback port so runs never collide with anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_log(log: Path) -> str:
    """A spawned server's log file so far."""
    try:
        return log.read_text(errors="replace")
    except OSError:
        return "(no log)"


def log_tail(text: str, limit: int = 400) -> str:
    """Last lines of a server's output squeezed onto one table-safe line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][-6:]
    tail = " / ".join(lines)[-limit:]
    return tail.replace("|", "\\|") or "(empty log)"


def run_cmd(argv: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a helper command, capturing text output, never raising on failure."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def probe(port: int, tls: ssl.SSLContext | None = None) -> int | None:
    """One GET /static/1k.bin; returns the status, or None if nothing answered yet.
    With ``tls``, over HTTPS, and the body must be the generated file's."""
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=tls)
    try:
        conn.request("GET", "/static/1k.bin")
        resp = conn.getresponse()
        body = resp.read()
        if tls is not None and resp.status == 200:
            _last_tls_body[:] = [hashlib.sha256(body).hexdigest()]
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


_last_tls_body: list[str] = []  # the digest of the last HTTPS probe's body


def wait_ready_tls(ctx: Context, spec: ServerSpec, srv: Launched, port: int, cert: Path) -> None:
    """The HTTPS listener answers with the right bytes; note (once) which TLS path aws took
    (its start-up log says whether the kernel does the encryption)."""
    wait_ready(srv, port, ssl.create_default_context(cafile=str(cert)))
    if _last_tls_body != [ctx.digests["/static/1k.bin"]]:
        raise ServerError("HTTPS body of /static/1k.bin differs from the generated file")
    if spec.name == "aws":
        for line in srv.output().splitlines():
            if "aws.tls: TLS:" in line:
                note = "aws " + line.split("aws.tls: ", 1)[1].strip()
                if note not in ctx.notes:
                    ctx.notes.append(note)


def wait_ready(srv: Launched, port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
    """Block until the server answers 200 on the small file, or fail with its output's tail.
    ``port`` and ``tls``: the HTTPS listener instead of the plain one."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: int | None = None
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise ServerError(f"exited with {srv.proc.returncode}: {log_tail(srv.output())}")
        last = probe(port or srv.port, tls)
        if last == 200:
            return
        time.sleep(0.05)
    got = "no answer" if last is None else f"HTTP {last}"
    raise ServerError(f"not ready after {READY_TIMEOUT_S:.0f}s ({got}): {log_tail(srv.output())}")


@contextlib.contextmanager
def running(ctx: Context, spec: ServerSpec) -> Iterator[tuple[int, int]]:
    """Start the server pinned to CPU 0 on a fresh port, yield (port, pgid), always stop it."""
    srv = launch(ctx, spec)
    try:
        wait_ready(srv)
        if ctx.tls_port is not None and ctx.tls is not None:
            wait_ready_tls(ctx, spec, srv, ctx.tls_port, ctx.tls.cert)
        yield srv.port, srv.proc.pid
    finally:
        was_alive = srv.proc.poll() is None
        code = stop(srv.proc)
        if spec.name.startswith("aws") and was_alive:
            note_shutdown(ctx, code, srv.output())


def note_shutdown(ctx: Context, code: int | None, output: str) -> None:
    """aws must exit 0 on SIGTERM; record (once) when it did not, since deploys rely on it."""
    if code == 0:
        return
    what = "did not exit within" if code is None else f"exited with {code} within"
    note = f"aws {what} {STOP_TIMEOUT_S:.0f} s of SIGTERM (expected exit 0)"
    if not any(n.startswith(note) for n in ctx.notes):
        ctx.notes.append(f"{note}: {log_tail(output)}")
