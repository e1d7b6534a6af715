"""Tests for the socket-fragmenting LD_PRELOAD shim (tests/shim).

Each test runs a small child Python program under ``LD_PRELOAD`` (the shim cannot be
loaded into the already-running pytest process) and checks what the program observed plus
the shared counter file. The children print one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.shim import SOURCE, ShimStats, build_shim, read_stats, shim_env

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="LD_PRELOAD shim is Linux-only"
)

CHILD_TIMEOUT = 30

# Shared prelude for the child programs: ``emit`` prints the JSON result; ``counters``
# reads the live shared counter file from inside the child.
PRELUDE = """\
import json, os, socket, struct, sys
def emit(**kw):
    sys.stdout.write(json.dumps(kw))
    sys.stdout.flush()
def counters():
    with open(os.environ["AWS_SHIM_STATS"], "rb") as fh:
        return list(struct.unpack("<8Q", fh.read(64)))
"""


@pytest.fixture(scope="module")
def shim_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


def run_child(code: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``code`` (after PRELUDE) in a fresh interpreter and return its JSON output."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_send_and_recv_are_halved_on_socketpair(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    out = run_child(
        """
        a, b = socket.socketpair()
        first = a.send(b"x" * 1000)
        a.sendall(b"y" * 1000)  # needs several calls under the shim, delivers everything
        got = b.recv(1000)
        emit(first=first, got=len(got), got_prefix=got[:3].decode())
        """,
        shim_env(shim_so, stats),
    )
    assert out == {"first": 500, "got": 500, "got_prefix": "xxx"}
    st = read_stats(stats)
    # 1 send + sendall of 1000 (11 calls: 500, 250, 125, 62, 31, 16, 8, 4, 2, 1, 1) + 1 recv
    assert st.send_calls == 1 + 11
    assert st.send_split == st.send_calls - 1  # the final 1-byte send cannot be split
    assert (st.recv_calls, st.recv_split) == (1, 1)
    assert (st.sendfile_calls, st.eagain_injected, st.eintr_injected) == (0, 0, 0)


def test_tcp_loopback_transfer_is_fragmented_but_intact(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    out = run_child(
        """
        import hashlib, threading
        srv = socket.create_server(("127.0.0.1", 0))
        cli = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        payload = os.urandom(200_000)
        sizes = []
        def reader():
            buf = bytearray()
            while len(buf) < len(payload):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                sizes.append(len(chunk))
                buf += chunk
            sizes.append(hashlib.sha256(bytes(buf)).hexdigest())
        t = threading.Thread(target=reader)
        t.start()
        first = cli.send(payload[:1000])
        cli.sendall(payload[first:])  # the caller must resume at `first`
        t.join(20)
        emit(first=first, max_chunk=max(sizes[:-1]), digest=sizes[-1],
             want=hashlib.sha256(payload).hexdigest())
        """,
        shim_env(shim_so, stats),
    )
    assert out["first"] == 500
    assert out["max_chunk"] <= 65536 // 2
    assert out["digest"] == out["want"]
    st = read_stats(stats)
    assert st.send_split >= 2 and st.recv_split >= 2


def test_sendfile_is_halved_and_socket_sendfile_still_completes(
    shim_so: Path, tmp_path: Path
) -> None:
    stats = tmp_path / "stats"
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 4 + b"tail")  # 1028 bytes
    out = run_child(
        f"""
        a, b = socket.socketpair()
        fd = os.open({str(src)!r}, os.O_RDONLY)
        n = os.sendfile(a.fileno(), fd, 0, 1000)
        got = b.recv(4096, socket.MSG_DONTWAIT)  # asks 2048, only 500 are there
        with open({str(src)!r}, "rb") as fh:
            total = a.sendfile(fh)  # loops over partial sendfile()
        rest = b""
        while len(rest) < total:
            rest += b.recv(4096)
        emit(n=n, got=len(got), same=got == open({str(src)!r}, "rb").read(500),
             total=total, rest_ok=rest == open({str(src)!r}, "rb").read())
        """,
        shim_env(shim_so, stats),
    )
    assert out == {"n": 500, "got": 500, "same": True, "total": 1028, "rest_ok": True}
    st = read_stats(stats)
    assert st.sendfile_calls >= 3  # 1 direct + at least 2 for socket.sendfile's loop
    assert st.sendfile_split == st.sendfile_calls
    assert st.recv_calls >= 2


def test_sendmsg_writev_recvmsg_readv_move_half_of_total(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    out = run_child(
        """
        import array
        a, b = socket.socketpair()
        parts = [b"a" * 600, b"b" * 400]
        n_sendmsg = a.sendmsg(parts)
        got1 = b.recv(4096, socket.MSG_DONTWAIT)
        n_writev = os.writev(a.fileno(), [b"c" * 100, b"d" * 200, b"e" * 300])
        got2 = b.recv(4096, socket.MSG_DONTWAIT)
        # recvmsg with ancillary data: passing an fd over the unix socket
        r, w = os.pipe()
        a.sendmsg([b"0123456789"],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
        msg, anc, flags, _ = b.recvmsg(100, socket.CMSG_SPACE(4))
        fds = array.array("i")
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        os.write(w, b"via-passed-fd")
        passed = os.read(fds[0], 100) if fds else b""
        try:
            rest = b.recv(100, socket.MSG_DONTWAIT)
        except BlockingIOError:
            rest = b""
        a.sendall(b"z" * 1000)
        bufs = [bytearray(300), bytearray(700)]
        n_readv = os.readv(b.fileno(), bufs)
        emit(n_sendmsg=n_sendmsg, got1=got1.decode(), n_writev=n_writev, got2=got2.decode(),
             msg=msg.decode(), nfds=len(fds), passed=passed.decode(), flags=flags,
             rest=rest.decode(), n_readv=n_readv, parts_intact=parts[0] == b"a" * 600)
        """,
        shim_env(shim_so, stats),
    )
    assert out["n_sendmsg"] == 500
    assert out["got1"] == "a" * 500  # the first 500 bytes of the gathered message
    assert out["n_writev"] == 300
    assert out["got2"] == "c" * 100 + "d" * 200
    assert out["msg"] == "01234"  # half of 10, and the fd still came through
    assert out["nfds"] == 1 and out["passed"] == "via-passed-fd" and out["flags"] == 0
    assert out["rest"] == ""  # only 5 of the 10 bytes were ever sent
    assert out["n_readv"] == 500
    assert out["parts_intact"] is True
    st = read_stats(stats)
    assert st.send_split >= 3 and st.recv_split >= 2


def test_non_sockets_pass_through_untouched(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(b"f" * 1000)
    out = run_child(
        f"""
        efd = os.eventfd(0)
        os.eventfd_write(efd, 5)
        raw = os.read(efd, 8)  # must not be split into 4 bytes (EINVAL)
        os.eventfd_write(efd, 7)
        via_helper = os.eventfd_read(efd)
        fd = os.open({str(data_file)!r}, os.O_RDONLY)
        file_read = len(os.read(fd, 1000))
        r, w = os.pipe()
        pipe_write = os.write(w, b"p" * 1000)
        pipe_read = len(os.read(r, 1000))
        # fd reuse: a closed socket's fd number handed to a regular file
        s = socket.socket()
        num = s.fileno()
        s.close()
        fd2 = os.open({str(data_file)!r}, os.O_RDONLY)
        reused_read = len(os.read(fd2, 1000))
        dgram_a, dgram_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        dgram_sent = dgram_a.send(b"g" * 1000)
        dgram_got = len(dgram_b.recv(2000))
        emit(raw=int.from_bytes(raw, sys.byteorder), raw_len=len(raw), via_helper=via_helper,
             file_read=file_read, pipe_write=pipe_write, pipe_read=pipe_read,
             reused=fd2 == num, reused_read=reused_read, dgram_sent=dgram_sent,
             dgram_got=dgram_got)
        """,
        shim_env(shim_so, stats),
    )
    assert out == {
        "raw": 5,
        "raw_len": 8,
        "via_helper": 7,
        "file_read": 1000,
        "pipe_write": 1000,
        "pipe_read": 1000,
        "reused": True,
        "reused_read": 1000,
        "dgram_sent": 1000,
        "dgram_got": 1000,
    }
    # Only the datagram socket calls were seen by the shim: counted, never split.
    assert read_stats(stats) == ShimStats(send_calls=1, recv_calls=1)


def test_stats_are_shared_with_forked_children(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    src = tmp_path / "src.bin"
    src.write_bytes(b"s" * 100)
    out = run_child(
        f"""
        a, b = socket.socketpair()
        a.send(b"x" * 1000)                      # parent: 1 send (split)
        b.recv(100)                              # parent: 1 recv (split)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for _ in range(3):
                    b.send(b"y" * 10)            # child: 3 sends (split)
                fd = os.open({str(src)!r}, os.O_RDONLY)
                os.sendfile(b.fileno(), fd, 0, 10)  # child: 1 sendfile (split)
                code = 0
            finally:
                os._exit(code)                   # no atexit, no destructor
        _, status = os.waitpid(pid, 0)
        emit(status=status, live=counters())     # read while this process is still running
        """,
        shim_env(shim_so, stats),
    )
    assert out["status"] == 0
    expected = ShimStats(
        send_calls=4,
        send_split=4,
        recv_calls=1,
        recv_split=1,
        sendfile_calls=1,
        sendfile_split=1,
    )
    assert ShimStats(*out["live"]) == expected
    assert read_stats(stats) == expected
    summary = Path(f"{stats}.txt").read_text()
    assert "send_calls=4 " in summary and "sendfile_split=1 " in summary


def test_eagain_injection_on_nonblocking_sends(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    out = run_child(
        """
        a, b = socket.socketpair()
        blocking = [a.send(b"x" * 10) for _ in range(4)]  # blocking: never injected
        a.setblocking(False)
        outcomes = []
        for _ in range(6):
            try:
                outcomes.append(a.send(b"x" * 10))
            except BlockingIOError:
                outcomes.append("EAGAIN")
        a.setblocking(True)
        dontwait = []
        for _ in range(2):
            try:
                dontwait.append(a.send(b"x" * 10, socket.MSG_DONTWAIT))
            except BlockingIOError:
                dontwait.append("EAGAIN")
        b.setblocking(False)
        recvs = [len(b.recv(4)) for _ in range(4)]  # recv family: never EAGAIN-injected
        emit(blocking=blocking, outcomes=outcomes, dontwait=dontwait, recvs=recvs)
        """,
        shim_env(shim_so, stats, eagain_every=2),
    )
    assert out["blocking"] == [5, 5, 5, 5]
    assert out["outcomes"] == [5, "EAGAIN", 5, "EAGAIN", 5, "EAGAIN"]
    assert out["dontwait"] == [5, "EAGAIN"]
    assert out["recvs"] == [2, 2, 2, 2]
    st = read_stats(stats)
    assert st.eagain_injected == 4
    assert st.send_calls == 4 + 3 + 1  # injected failures are not passed on / counted
    assert st.eintr_injected == 0


def test_eintr_injection_is_retried_by_python(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    out = run_child(
        """
        a, b = socket.socketpair()
        sent = [a.send(b"x" * 100) for _ in range(4)]
        got = [len(b.recv(20)) for _ in range(2)]
        emit(sent=sent, got=got)
        """,
        shim_env(shim_so, stats, eintr_every=2),
    )
    # PEP 475: CPython retries EINTR transparently, so every call still succeeds.
    assert out == {"sent": [50, 50, 50, 50], "got": [10, 10]}
    st = read_stats(stats)
    # every 2nd wrapped call fails: s1 ok, s2..s4 and r1..r2 each EINTR then ok
    assert st.eintr_injected == 5
    assert (st.send_calls, st.recv_calls) == (4, 2)


def test_disable_switch_passes_through_but_counts(shim_so: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    out = run_child(
        """
        a, b = socket.socketpair()
        emit(sent=a.send(b"x" * 1000), got=len(b.recv(1000)))
        """,
        shim_env(shim_so, stats, disable=True),
    )
    assert out == {"sent": 1000, "got": 1000}
    assert read_stats(stats) == ShimStats(send_calls=1, recv_calls=1)


def test_helpers(shim_so: Path, tmp_path: Path) -> None:
    assert SOURCE.is_file() and SOURCE.suffix == ".c"
    # An up-to-date build is reused, not recompiled.
    mtime = shim_so.stat().st_mtime_ns
    assert build_shim(shim_so.parent) == shim_so
    assert shim_so.stat().st_mtime_ns == mtime
    # Missing or short stats files read as zeros; a full one is decoded in order.
    assert read_stats(tmp_path / "missing") == ShimStats()
    short = tmp_path / "short"
    short.write_bytes(b"\x01" * 10)
    assert read_stats(short) == ShimStats()
    full = tmp_path / "full"
    full.write_bytes(b"".join(i.to_bytes(8, "little") for i in range(1, 9)))
    assert read_stats(full) == ShimStats(1, 2, 3, 4, 5, 6, 7, 8)
    env = shim_env(shim_so, full, eagain_every=3, eintr_every=5)
    assert env["LD_PRELOAD"].split()[0] == str(shim_so.resolve())
    assert env["AWS_SHIM_STATS"] == str(full)
    assert (env["AWS_SHIM_EAGAIN_EVERY"], env["AWS_SHIM_EINTR_EVERY"]) == ("3", "5")
    assert "AWS_SHIM_DISABLE" not in env
    assert os.environ.get("AWS_SHIM_STATS") != str(full)  # a copy, not os.environ


def test_build_failure_reports_compiler_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text("#!/bin/sh\necho 'fake compiler exploded' >&2\nexit 3\n")
    fake_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(fake_cc))
    with pytest.raises(RuntimeError, match="fake compiler exploded"):
        build_shim(tmp_path / "out")
    assert not (tmp_path / "out" / "sockop_preload.so").exists()
