"""Start and stop a real ``aws`` the way a user or a process manager does.

One harness for the tests, the benchmarks and the soak: the server starts in a session
of its own (so the whole process group can be stopped, orphans included), on port 0
unless told otherwise, and is ready when it prints its listening line. Stopping is
SIGTERM to the process that was started, then SIGKILL to the whole group if it does not
exit in time: no test or benchmark leaves a worker behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The first listening line: plain HTTP's, or HTTPS's when the server has no plain port.
LISTENING = re.compile(r"listening on https?://([\d.:\[\]a-f]+?):(\d+)")


class StartError(RuntimeError):
    """The server never printed its listening line; ``returncode`` is None if it was still
    running (and has been killed) when the wait ran out."""

    def __init__(self, output: str, returncode: int | None) -> None:
        super().__init__("server did not start:\n" + output)
        self.output = output
        self.returncode = returncode


@dataclass
class Running:
    """A started server: its process, where it listens, and everything it logged."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the leader's pid names the group

    def log(self) -> str:
        return "".join(self.log_lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.log_lines):
                m = rx.search(line)
                if m:
                    return m
            time.sleep(0.05)
        return None


def _pump(stream: object, sink: list[str], ready: threading.Event, found: list[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace")
        sink.append(line)
        if not found:
            m = LISTENING.search(line)
            if m:
                found.append(m.group(1))
                found.append(m.group(2))
                ready.set()
    ready.set()


def _with_defaults(argv: Sequence[str]) -> list[str]:
    cmd = list(argv)
    if "--host" not in cmd:
        cmd += ["--host", "127.0.0.1"]
    if "--port" not in cmd:
        cmd += ["--port", "0"]
    return cmd


def start(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
    stdout: int | None = subprocess.DEVNULL,
    timeout: float = 20.0,
) -> Running:
    """Run ``argv`` (``python -m aws ...`` or the ``aws`` script) and wait until it listens.

    Raises :class:`StartError` (a RuntimeError) with what it printed if it never does.
    """
    proc = subprocess.Popen(
        _with_defaults(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()
    found: list[str] = []
    threading.Thread(target=_pump, args=(proc.stderr, lines, ready, found), daemon=True).start()
    try:
        ready.wait(timeout)
    except BaseException:
        kill_group(proc)  # a Ctrl-C while waiting must not leave a server in its own session
        raise
    if len(found) < 2:
        if ready.is_set():  # its stderr closed: it is exiting, so let its exit code arrive
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        exited = proc.poll()
        kill_group(proc)
        raise StartError("".join(lines), exited)
    host = found[0].strip("[]")
    return Running(proc, host, int(found[1]), lines)


def stop(srv: Running | subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM (a drain), then SIGKILL the whole group; returns the exit code."""
    proc = srv.proc if isinstance(srv, Running) else srv
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
    # Whatever the leader did, nothing of its group may outlive the test.
    kill_group(proc, leader_too=False)
    return proc.returncode


def kill_group(proc: subprocess.Popen[bytes], leader_too: bool = True) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if leader_too and proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out
