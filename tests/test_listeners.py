"""Listening the ways deployments do: a Unix socket beside or instead of TCP, and
sockets inherited from systemd (LISTEN_FDS), end to end (plain and under the shim)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aws import listeners
from tests import harness
from tests.conftest import REPO, DocRoot, ServerProcess, stop_server
from tests.ops import get_raw, mode_of, start_in
from tests.shim import shim_env

GET = b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
DYN = b"GET /dynamic/f4097.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.fixture(params=["plain", "shim"])
def mode(request: pytest.FixtureRequest) -> str:
    return mode_of(request)


def _ok(data: bytes, body: bytes) -> bool:
    return data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n" + body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_unix_socket_beside_tcp_with_its_mode(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    path = tmp_path / "aws.sock"
    # As root, hand it to another user; otherwise to ourselves (allowed, and still parsed).
    if os.geteuid() == 0:
        owner = "nobody:nogroup"
        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    else:
        uid, gid = os.getuid(), os.getgid()
        owner = f"{uid}:{gid}"
    extra = ["--unix", str(path), "--unix-mode", "600", "--unix-owner", owner]
    srv = start_in(mode, request, tmp_path, docroot, workers=2, extra=extra)
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_uid, st.st_gid) == (uid, gid)
        assert f"and unix:{path} with 2 workers" in srv.log()
        for _ in range(8):  # one socket, polled by both workers
            assert _ok(get_raw(str(path), GET, socket.AF_UNIX), b"hello\n")
            assert _ok(
                get_raw(str(path), DYN, socket.AF_UNIX), docroot.content("/dynamic/f4097.bin")
            )
        assert _ok(get_raw(srv.addr, GET), b"hello\n")
    finally:
        assert stop_server(srv.proc) == 0
    assert not path.exists(), "the socket file outlived the server"


def _spawn(
    cmd: list[str], line: str, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
) -> ServerProcess:
    """Like harness.start, for servers whose first address is not the TCP one it waits for."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    srv = ServerProcess(proc=proc, host="127.0.0.1", port=0, mode="", stats_path=None, root=None)  # type: ignore[arg-type]

    def pump() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            srv.log_lines.append(raw.decode("utf-8", "replace"))

    threading.Thread(target=pump, daemon=True).start()
    if srv.wait_for_log(line, 20) is None:
        harness.kill_group(proc)
        raise AssertionError(srv.log())
    return srv


def test_unix_socket_instead_of_tcp(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    path = tmp_path / "only.sock"
    port = _free_port()
    env = None
    if mode == "shim":
        env = shim_env(request.getfixturevalue("shim_so"), tmp_path / "stats")
    cmd = [sys.executable, "-m", "aws", "--root", str(docroot.path), "--workers", "1"]
    cmd += ["--plain", "off", "--unix", str(path), "--port", str(port)]
    run = _spawn(cmd, f"listening on unix:{path} with 1 worker", env)
    try:
        assert _ok(get_raw(str(path), GET, socket.AF_UNIX), b"hello\n")
        assert _refused(port)
    finally:
        assert stop_server(run.proc) == 0, run.log()
    assert not path.exists()


def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(
    tmp_path: Path, docroot: DocRoot
) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed server's leftover
    cmd = [sys.executable, "-m", "aws", "--root", str(docroot.path), "--workers", "1"]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--unix", str(path)]
    first = harness.start(cmd, cwd=REPO)
    try:
        assert _ok(get_raw(str(path), GET, socket.AF_UNIX), b"hello\n")
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=20)
        assert second.returncode == 1
        [line] = second.stderr.strip().splitlines()
        assert str(path) in line and "another server is listening" in line
        assert _ok(get_raw(str(path), GET, socket.AF_UNIX), b"hello\n")
    finally:
        assert harness.stop(first) == 0


def test_tcp_off_with_nothing_else_is_one_line(tmp_path: Path, docroot: DocRoot) -> None:
    cmd = [sys.executable, "-m", "aws", "--root", str(docroot.path), "--plain", "off"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert "nothing to listen on" in line


def test_socket_activation_uses_the_inherited_sockets_as_they_are(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    """What systemd does for a .socket unit with two ListenStream= lines: bind and listen
    itself, then start the service with the sockets as fds 3 and 4."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(64)
    port = tcp.getsockname()[1]
    path = tmp_path / "act.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(path))
    unix.listen(64)
    env = dict(os.environ)
    if mode == "shim":
        env = shim_env(request.getfixturevalue("shim_so"), tmp_path / "stats")
    fds = [str(tcp.fileno()), str(unix.fileno())]
    unused = _free_port()
    cmd = [sys.executable, str(REPO / "tests" / "activate.py"), *fds, "--"]
    cmd += [sys.executable, "-m", "aws", "--root", str(docroot.path), "--workers", "2"]
    cmd += ["--host", "127.0.0.1", "--port", str(unused)]
    srv = _spawn(cmd, "listening on", env, (tcp.fileno(), unix.fileno()))
    srv.port = port
    try:
        assert f"http://127.0.0.1:{port} and unix:{path} with 2 workers" in srv.log()
        # Our copies go away: from now on only the server holds the sockets.
        tcp.close()
        unix.close()
        for _ in range(8):
            assert _ok(get_raw(srv.addr, GET), b"hello\n")
            assert _ok(
                get_raw(str(path), DYN, socket.AF_UNIX), docroot.content("/dynamic/f4097.bin")
            )
        assert _refused(unused), "--port was bound although systemd gave the sockets"
        assert len(srv.worker_pids()) == 2
    finally:
        assert stop_server(srv.proc) == 0, srv.log()
    assert path.exists(), "an inherited socket's file belongs to systemd, not to us"


def test_listen_fds_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert listeners.inherited() == []
    assert os.environ["LISTEN_FDS"] == "1"  # not ours: left alone


def test_listen_fds_that_is_not_a_listener_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    try:
        fd = 3
        saved = os.dup(fd) if _is_open(fd) else None
        os.dup2(a.fileno(), fd)
        monkeypatch.setenv("LISTEN_FDS", "1")
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        with pytest.raises(listeners.StartupError, match="not a listening stream socket"):
            listeners.inherited()
    finally:
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
        a.close()
        b.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_systemd_socket_activate_starts_it_on_the_first_connection(
    tmp_path: Path, docroot: DocRoot
) -> None:
    """systemd's own tool for this (systemd-socket-activate, from the systemd package):
    it binds, waits for the first connection, then execs the server with fd 3."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (the wrapper test covers it)")
    port = _free_port()
    cmd = [tool, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "aws"]
    cmd += ["--root", str(docroot.path), "--workers", "2", "--port", str(_free_port())]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    srv = ServerProcess(
        proc=proc, host="127.0.0.1", port=port, mode="", stats_path=None, root=docroot
    )

    def pump() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            srv.log_lines.append(raw.decode("utf-8", "replace"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 10
        while True:  # the tool binds first; until then the port refuses
            try:
                data = get_raw(srv.addr, GET, timeout=20)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, srv.log()
                time.sleep(0.05)
        assert _ok(data, b"hello\n"), data[:200]
        assert srv.wait_for_log(f"listening on http://127.0.0.1:{port} with 2 workers", 10)
        assert _ok(get_raw(srv.addr, DYN), docroot.content("/dynamic/f4097.bin"))
    finally:
        assert stop_server(proc) == 0, srv.log()


def test_resize_keeps_the_port_and_the_first_sockets() -> None:
    """A reload with another --workers: more sockets on the same port, or fewer."""
    own = listeners.make_listeners("127.0.0.1", 0, 2, 16)
    group = listeners.Listeners(own=list(own))
    try:
        port = group.port()
        group.resize(3, 16)
        assert len(group.own) == 3 and group.own[:2] == own
        assert {s.getsockname()[1] for s in group.own} == {port}
        group.resize(1, 16)
        assert group.own == own[:1] and own[1].fileno() == -1
        assert group.not_for(0) == [] and group.for_worker(0) == own[:1]
    finally:
        group.close()


def _accepted_by(socks: list[socket.socket], port: int, count: int) -> list[int]:
    """Connect ``count`` times; how many connections each listening socket holds."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(count)]
    try:
        got = [0] * len(socks)
        deadline = time.monotonic() + 2
        while sum(got) < count and time.monotonic() < deadline:
            for i, sock in enumerate(socks):
                try:
                    sock.accept()[0].close()
                    got[i] += 1
                except (BlockingIOError, OSError):  # nothing queued, or not listening
                    pass
        return got
    finally:
        for c in clients:
            c.close()


def _reads_on(listener: socket.socket, port: int) -> bytes:
    """What a connection the kernel gave ``listener`` reads of bytes the client sends
    once it is accepted (as a request comes after the server's accept)."""
    for _ in range(64):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            time.sleep(0.01)
            try:
                conn = listener.accept()[0]
            except BlockingIOError:
                continue  # the other socket got it
            with conn:
                conn.setblocking(False)
                try:
                    early = conn.recv(16)  # nothing sent yet: EAGAIN, not an end of file
                except BlockingIOError:
                    early = None
                assert early is None, f"read {early!r} before the client sent anything"
                conn.settimeout(2)
                client.sendall(b"GET")
                return conn.recv(16)
    raise AssertionError("no connection reached that socket")


def test_a_paused_socket_leaves_its_group_until_it_listens_again() -> None:
    """A crash-looping worker's socket is paused: REUSEPORT hands new connections only
    to the others, and the port stays the server's; ``rejoin`` puts it back."""
    own = listeners.make_listeners("127.0.0.1", 0, 2, 64)
    group = listeners.Listeners(own=list(own))
    try:
        port = group.port()
        assert min(_accepted_by(own, port, 40)) > 0  # the kernel spreads them
        assert group.pause(1)
        assert not group.pause(1)  # again, as after a restart that failed before it listened
        assert not group.pause(0)  # the last one listening is kept: the port is not refused
        assert _accepted_by(own, port, 40) == [40, 0]
        assert own[1].getsockname()[1] == port  # still bound: nobody else takes the port
        listeners.rejoin(group.own_of(1), 64)
        got = _accepted_by(own, port, 40)
        assert sum(got) == 40 and got[1] > 0, got
        assert _reads_on(own[1], port) == b"GET"  # its connections carry data again
        listeners.rejoin(group.own_of(0), 64)  # already listening: nothing changes
        assert sum(_accepted_by(own, port, 10)) == 10
        assert group.pause(0)  # the first socket too keeps the port --port 0 picked
        assert _accepted_by(own, port, 20) == [0, 20]
        listeners.rejoin(group.own_of(0), 64)
        assert own[0].getsockname()[1] == port and min(_accepted_by(own, port, 40)) > 0
    finally:
        group.close()


def test_a_workers_own_sockets_are_its_plain_and_tls_ones() -> None:
    """Both of a worker's ports pause, each kept while it is the last of its group."""
    own = listeners.make_listeners("127.0.0.1", 0, 2, 16)
    secure = listeners.make_listeners("127.0.0.1", 0, 2, 16)
    group = listeners.Listeners(own=list(own), secure=list(secure))
    try:
        assert group.own_of(1) == [own[1], secure[1]]
        assert listeners.Listeners(own=list(own)).own_of(0) == [own[0]]
        secure[0].shutdown(socket.SHUT_RD)  # worker 0's TLS socket is already paused
        assert group.pause(1)
        assert [listeners._listens(s) for s in own + secure] == [True, False, False, True]
        listeners.rejoin(group.own_of(1), 16)
        assert all(listeners._listens(s) for s in own + secure[1:])
    finally:
        group.close()
