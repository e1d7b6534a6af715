"""Processes, end to end: workers never outlive their supervisor, ``--workers 1`` is one
process, and what ``ps`` shows (process titles, and the comm left as it was started).

Each test starts its own server, plain and under the shim where it serves; the harness
kills the whole process group at the end, so an orphan that a failing test leaves
behind is stopped too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aws.config import Config
from aws.workers import Supervisor, WorkerSlot
from tests.conftest import REPO, DocRoot, ServerProcess, start_server, stop_server
from tests.harness import group_members
from tests.harness import start as harness_start
from tests.harness import stop as harness_stop
from tests.test_hardening import SlowReader, get_request, read_head, sha, wait_for

BIG_STATIC = "/static/f67108864.bin"
BIG_DYNAMIC = "/dynamic/f67108864.bin"
MODES = ["plain", "shim"]


@contextlib.contextmanager
def serving(
    docroot: DocRoot, mode: str, shim: Path, tmp_path: Path, workers: int, *flags: str
) -> Iterator[ServerProcess]:
    srv = start_server(
        docroot.path,
        docroot=docroot,
        mode=mode,
        shim=shim,
        stats_path=tmp_path / f"stats-{time.monotonic_ns()}",
        workers=workers,
        extra=list(flags),
    )
    try:
        yield srv
    finally:
        stop_server(srv.proc)


def port_is_free(host: str, port: int) -> bool:
    """What a new server's start-up probe asks: can the port be bound without
    SO_REUSEPORT? (SO_REUSEADDR only looks past connections, not a listener.)"""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def idle_clients(srv: ServerProcess, n: int) -> list[socket.socket]:
    """Keep-alive connections that got one answer each and now sit idle."""
    out = []
    for _ in range(n):
        s = socket.create_connection(srv.addr, timeout=5)
        s.sendall(get_request("/static/hello.txt", close=False))
        status, headers, body = read_head(s)
        assert status == 200 and headers["connection"] == "keep-alive"
        while len(body) < int(headers["content-length"]):
            body += s.recv(100)
        out.append(s)
    return out


def closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN (state 0A) on ``port``, from /proc/net/tcp."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            out.add(fields[9])
    return out


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                out.add(target[8:-1])
    return out


# -- workers never outlive their supervisor -------------------------------------------


def _kill_supervisor_mid_download(
    docroot: DocRoot, shim: Path, tmp_path: Path, mode: str, stopping: bool
) -> None:
    with serving(docroot, mode, shim, tmp_path, 2, "--drain-timeout", "30") as srv:
        group = srv.proc.pid
        workers = srv.worker_pids()
        assert len(workers) == 2
        readers = [SlowReader(srv.addr, p, 16e6) for p in (BIG_STATIC, BIG_DYNAMIC)]
        for r in readers:
            r.start()
        idle = idle_clients(srv, 6)
        assert wait_for(lambda: all(len(r.body) > 1 << 20 for r in readers), 10)
        if stopping:  # a drain already under way when the supervisor dies
            srv.proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: "SIGTERM: stopping" in srv.log(), 5)
        killed = time.monotonic()
        srv.proc.kill()
        srv.proc.wait(5)
        assert wait_for(lambda: port_is_free(srv.host, srv.port), 1.0, step=0.01), (
            f"port {srv.port} still taken 1 s after the supervisor died:\n{srv.log()}"
        )
        freed = time.monotonic() - killed
        for s in idle:
            assert closed_by_server(s, 2), "an idle keep-alive connection was left open"
            s.close()
        fresh = start_server(
            docroot.path, docroot=docroot, workers=2, extra=["--port", str(srv.port)]
        )
        try:
            assert fresh.port == srv.port
            for _ in range(10):
                assert fresh.alive()
        finally:
            assert stop_server(fresh.proc) == 0, fresh.log()
        # The orphans went on with what they had: the downloads finish, byte for byte.
        for r in readers:
            r.join(30)
            assert not r.is_alive() and r.error is None and not r.closed, srv.log()
            assert r.status == 200 and len(r.body) == r.length
        assert sha(readers[0].body) == sha(docroot.content(BIG_STATIC))
        assert sha(readers[1].body) == sha(docroot.content(BIG_DYNAMIC))
        # ... and then they exit, with one line each saying why.
        assert wait_for(lambda: not group_members(group), 5), group_members(group)
        gone = [
            pid
            for pid in workers
            if f"aws[{pid}] WARNING aws.worker: worker" in srv.log()
            and f"supervisor (pid {srv.proc.pid}) is gone; draining" in srv.log()
        ]
        # A worker with nothing in flight may have finished its drain before the kill.
        assert gone == workers or (stopping and gone), srv.log()
        assert "second signal" not in srv.log()
        if mode == "shim":
            stats = srv.stats()
            assert stats.sendfile_split > 0 and stats.send_split > 0
        print(f"[{mode}] port free {freed * 1000:.0f} ms after SIGKILL of the supervisor")


@pytest.mark.parametrize("mode", MODES)
def test_workers_drain_and_exit_when_the_supervisor_is_killed(
    docroot: DocRoot, shim_so: Path, tmp_path: Path, mode: str
) -> None:
    _kill_supervisor_mid_download(docroot, shim_so, tmp_path, mode, stopping=False)


def test_supervisor_killed_while_stopping_lets_the_drain_finish(
    docroot: DocRoot, shim_so: Path, tmp_path: Path
) -> None:
    """The parent-death signal is not a "second signal": a drain that the supervisor had
    started goes on after it dies, instead of cutting the transfers."""
    _kill_supervisor_mid_download(docroot, shim_so, tmp_path, "plain", stopping=True)


_RACE_SCRIPT = r"""
import os, signal
from aws.worker import STOP_SIGNALS, _watch_supervisor
import aiobind

signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
_watch_supervisor(os.getppid())
print(aiobind.parent_death_signal(), sorted(int(s) for s in signal.sigpending()))
_watch_supervisor(os.getppid() + 1_000_000)  # as if the supervisor had died already
print(aiobind.parent_death_signal(), sorted(int(s) for s in signal.sigpending()))
"""


def test_a_supervisor_gone_before_the_worker_asked_still_drains_it() -> None:
    """The parent-death signal is asked for after fork: a supervisor that died before
    that sends nothing, so the worker sees the changed parent and signals itself (the
    SIGTERM waits, blocked, until the worker's loop handles it as a drain)."""
    out = subprocess.run(
        [sys.executable, "-c", _RACE_SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    term = int(signal.SIGTERM)
    assert out.stdout.splitlines() == [f"{term} []", f"{term} [{term}]"]


# -- --workers 1 is one process --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_worker_is_the_started_process(
    docroot: DocRoot, shim_so: Path, tmp_path: Path, mode: str
) -> None:
    with serving(docroot, mode, shim_so, tmp_path, 1) as srv:
        pid = srv.proc.pid
        assert srv.alive()
        assert children(pid) == [] and group_members(pid) == [pid]
        # It holds the listening socket itself (what `lsof -p PID` shows) ...
        assert listening_inodes(srv.port) & socket_inodes(pid)
        # ... and is not pinned: it keeps the CPUs it was started with.
        assert os.sched_getaffinity(pid) == os.sched_getaffinity(0)
        assert title(pid) == f"aws: single process, root {docroot.path}"
        assert "with 1 worker, root" in srv.log()


def test_one_worker_keeps_the_cpu_it_was_given(docroot: DocRoot) -> None:
    """`taskset -c 0 python -m aws --workers 1`, as the benchmarks run it."""
    cpu = min(os.sched_getaffinity(0))
    srv = start_server(
        docroot.path, docroot=docroot, workers=1, preexec=lambda: os.sched_setaffinity(0, {cpu})
    )
    try:
        assert srv.alive()
        assert os.sched_getaffinity(srv.proc.pid) == {cpu}
        assert children(srv.proc.pid) == []
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("mode", MODES)
def test_one_process_drains_on_signal_and_exits_0(
    docroot: DocRoot, shim_so: Path, tmp_path: Path, mode: str, signo: int
) -> None:
    with serving(docroot, mode, shim_so, tmp_path, 1, "--drain-timeout", "20") as srv:
        readers = [SlowReader(srv.addr, p, 24e6) for p in (BIG_STATIC, BIG_DYNAMIC)]
        for r in readers:
            r.start()
        [idle] = idle_clients(srv, 1)
        assert wait_for(lambda: all(len(r.body) > 1 << 20 for r in readers), 10)
        srv.proc.send_signal(signo)
        assert wait_for(lambda: port_is_free(srv.host, srv.port), 2, step=0.01)
        assert closed_by_server(idle, 2)
        idle.close()
        assert srv.proc.poll() is None and children(srv.proc.pid) == []
        for r in readers:
            r.join(20)
            assert not r.is_alive() and r.error is None and not r.closed
            assert r.status == 200 and len(r.body) == r.length
        assert sha(readers[0].body) == sha(docroot.content(BIG_STATIC))
        assert sha(readers[1].body) == sha(docroot.content(BIG_DYNAMIC))
        assert srv.proc.wait(10) == 0, srv.log()
        assert f"{signal.Signals(signo).name}: stopping" in srv.log()


@pytest.mark.parametrize("mode", MODES)
def test_one_process_second_signal_exits_at_once(
    docroot: DocRoot, shim_so: Path, tmp_path: Path, mode: str
) -> None:
    with serving(docroot, mode, shim_so, tmp_path, 1, "--drain-timeout", "60") as srv:
        reader = SlowReader(srv.addr, BIG_STATIC, 4e6)  # would take ~16 s
        reader.start()
        assert wait_for(lambda: len(reader.body) > 1 << 20, 10)
        srv.proc.send_signal(signal.SIGINT)  # Ctrl-C, then a process manager's SIGTERM
        assert wait_for(lambda: "SIGINT: stopping" in srv.log(), 5)
        assert srv.proc.poll() is None
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(5)
        assert time.monotonic() - start < 2
        reader.join(5)
        assert len(reader.body) < reader.length  # cut short, as asked
        assert "second signal, exiting now" in srv.log()


# -- what ps shows ---------------------------------------------------------------------


def _console_script() -> Path:
    script = Path(sys.executable).parent / "aws"
    assert script.exists(), f"no console script at {script}: is the package installed?"
    return script


def test_titles_and_comm_through_the_console_script(docroot: DocRoot) -> None:
    root = docroot.path
    srv = harness_start([str(_console_script()), "--root", str(root), "--workers", "2"], cwd=REPO)
    try:
        supervisor = srv.proc.pid
        workers = children(supervisor)
        assert len(workers) == 2
        assert wait_for(lambda: all(title(p).startswith("aws: worker ") for p in workers), 5)
        # Each worker's title names its index and the CPU it is pinned to.
        seen = set()
        for pid in workers:
            [cpu] = os.sched_getaffinity(pid)
            index, _, on_cpu = title(pid).removeprefix("aws: worker ").partition(" on CPU ")
            assert on_cpu == str(cpu), title(pid)
            seen.add(index)
        assert seen == {"0", "1"}
        assert title(supervisor) == f"aws: supervisor, root {root}, 2 workers"
        # The comm (ps -o comm, pgrep, top) is still the name it was started by; a worker's
        # is its title for the few microseconds between setting one and restoring the other.
        pids = [supervisor, *workers]
        wait_for(lambda: [comm(p) for p in pids] == ["aws"] * 3, 5)
        assert [comm(p) for p in pids] == ["aws"] * 3
        ps = subprocess.run(
            ["ps", "-ww", "-o", "comm=,args=", "-p", str(supervisor)],
            capture_output=True,
            text=True,
            check=True,
        )
        shown_comm, shown_args = ps.stdout.strip().split(None, 1)
        assert shown_comm == "aws"
        assert shown_args.startswith(f"aws: supervisor, root {root}, 2 workers")
    finally:
        assert harness_stop(srv) == 0, srv.log()

    srv = harness_start([str(_console_script()), "--root", str(root), "--workers", "1"], cwd=REPO)
    try:
        assert title(srv.proc.pid) == f"aws: single process, root {root}"
        assert comm(srv.proc.pid) == "aws"
    finally:
        assert harness_stop(srv) == 0, srv.log()


def test_python_m_aws_keeps_the_interpreter_as_comm(docroot: DocRoot) -> None:
    srv = start_server(docroot.path, docroot=docroot, workers=2)
    try:
        started_as = Path(sys.executable).name[:15]
        pids = [srv.proc.pid, *srv.worker_pids()]
        assert wait_for(lambda: all(title(p).startswith("aws: ") for p in pids), 5)
        # (a worker's comm is the title for the few microseconds between the two calls)
        wait_for(lambda: [comm(p) for p in pids] == [started_as] * 3, 5)
        assert [comm(p) for p in pids] == [started_as] * 3
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def listening(port: int) -> int:
    """How many sockets listen on ``port`` (IPv4, where the tests' servers listen), as
    ``ss -ltn`` counts them."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if row[3] == "0A" and int(row[1].split(":")[1], 16) == port)


def test_a_worker_that_cannot_start_again_is_retried_while_the_others_serve(
    docroot: DocRoot, tmp_path: Path
) -> None:
    """A crash that lands while the files a worker opens at start are in flux (its log
    folder moved, a certificate half renewed) must not take the healthy workers down:
    the slot is retried with back-off until it starts. Meanwhile its socket is out of the
    port's REUSEPORT group, so no new connection waits on it for the back-off."""
    logs = tmp_path / "logs"
    logs.mkdir()
    srv = start_server(
        docroot.path, docroot=docroot, workers=2, extra=["--access-log", str(logs / "a.log")]
    )
    try:
        first, second = srv.worker_pids()[:2]

        def opened_the_log(pid: int) -> bool:
            fds = Path(f"/proc/{pid}/fd")
            return any(
                os.readlink(fds / fd) == str(logs / "a.log")
                for fd in os.listdir(fds)
                if (fds / fd).is_symlink()
            )

        # both through their start (a worker that fails its first start stops the server)
        assert wait_for(lambda: opened_the_log(first) and opened_the_log(second), 10)
        logs.rename(tmp_path / "moved")
        os.kill(first, signal.SIGKILL)
        assert srv.wait_for_log(r"worker \d \(pid \d+\) could not start again", 10), srv.log()
        # retried after 0.2 s and 0.4 s with its socket kept, then put off 0.8 s: paused
        assert srv.wait_for_log("its new connections go to the other workers meanwhile", 15)
        assert srv.log().count("could not start again") >= 3, srv.log()
        assert srv.proc.poll() is None and os.path.exists(f"/proc/{second}")
        assert listening(srv.port) == 1  # its socket is paused: ss -ltn shows one

        def served(tries: int) -> int:
            ok = 0
            for _ in range(tries):
                with contextlib.suppress(OSError), socket.create_connection(srv.addr, 5) as s:
                    s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                    ok += s.recv(100).startswith(b"HTTP/1.1 200 ")
            return ok

        assert served(16) == 16, srv.log()  # all by the healthy worker, none waiting
        (tmp_path / "moved").rename(logs)
        # its successor listens again once it can serve, and both take connections
        assert wait_for(lambda: listening(srv.port) == 2, 20), srv.log()
        assert served(8) == 8, srv.log()
        assert "stopping" not in srv.log()
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def test_a_drain_does_not_wait_out_the_header_timeout_for_silent_connections(
    docroot: DocRoot,
) -> None:
    """Browsers open connections ahead of need (preconnect) and may send nothing: a stop
    closes those after a second's grace, not after --header-timeout."""
    srv = start_server(docroot.path, docroot=docroot, workers=2, extra=["--header-timeout", "30"])
    silent = [socket.create_connection(srv.addr, timeout=10) for _ in range(3)]
    try:
        with socket.create_connection(srv.addr, timeout=10) as s:  # the server is up
            s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=15) == 0, srv.log()
        assert time.monotonic() - began < 5, srv.log()
        for s in silent:
            assert s.recv(100) == b""  # closed, with nothing said: nothing was asked
    finally:
        for s in silent:
            s.close()
        stop_server(srv.proc)


def test_a_worker_stuck_past_its_drain_is_killed(docroot: DocRoot) -> None:
    """No process outlives the server: a worker that cannot act on SIGTERM (stopped,
    wedged) is killed once its drain deadline and a grace have passed."""
    srv = start_server(docroot.path, docroot=docroot, workers=2, extra=["--drain-timeout", "1"])
    stuck = srv.worker_pids()[0]
    try:
        os.kill(stuck, signal.SIGSTOP)
        began = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=20) == 0, srv.log()
        took = time.monotonic() - began
        assert 1 + 5 <= took < 10, (took, srv.log())
        assert f"(pid {stuck}) is still there after its drain: killed" in srv.log()
        assert not os.path.exists(f"/proc/{stuck}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGKILL)
        stop_server(srv.proc)


def test_with_no_worker_left_that_can_start_the_supervisor_stops(
    docroot: DocRoot, tmp_path: Path
) -> None:
    """Retrying a restart is for while others serve: with every worker down and the
    next failing to start, holding the port open for nobody helps no one (a service
    manager can start the server again)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    srv = start_server(
        docroot.path, docroot=docroot, workers=2, extra=["--access-log", str(logs / "a.log")]
    )
    try:
        pids = srv.worker_pids()[:2]
        assert wait_for(lambda: len(os.listdir(logs)) == 1, 5)
        time.sleep(0.5)  # both workers through their start
        logs.rename(tmp_path / "moved")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert srv.proc.wait(timeout=15) == 1, srv.log()
        assert "cannot start; stopping" in srv.log()
    finally:
        stop_server(srv.proc)


def test_the_supervisor_wakes_when_a_restart_or_a_kill_is_due() -> None:
    """A back-off of 0.1 s restarts after 0.1 s, not at the next half-second poll; a slot
    that is gone or a stop in progress leaves nothing to wake for."""
    sup = Supervisor(Config(workers=2), [0, 1])
    assert sup._until_due() == 0.5  # nothing due: poll the signals every half second
    now = time.monotonic()
    dead, stuck = WorkerSlot(0, 0, restart_at=now + 0.1), WorkerSlot(1, 1, pid=1, kill_at=now + 3)
    sup.slots = [dead, stuck]
    assert 0 < sup._until_due() <= 0.1
    dead.restart_at = now - 1
    assert sup._until_due() == 0.0  # overdue: at once
    sup.stopping = True  # no restart while stopping: only the kill is waited for
    assert sup._until_due() == 0.5
    stuck.kill_at = now + 0.2
    assert 0 < sup._until_due() <= 0.2
    stuck.pid = 0  # it exited: its kill deadline no longer matters
    assert sup._until_due() == 0.5
