"""HTTPS connections that do not go as planned, each against a server of its own: a
handshake stalled halfway is cut by the header timeout, clients that leave mid-handshake
leave no descriptor behind, SIGTERM drains TLS transfers in flight, and a bad
certificate stops the start with one line."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, DocRoot, stop_server
from tests.tls_helpers import Certs, Https, TlsRawClient, make_certs, start_https


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def quick(docroot: DocRoot, certs: Certs) -> Iterator[Https]:
    """One worker (its pid is the process started), 1 s header and keep-alive timeouts."""
    srv = start_https(
        docroot.path,
        docroot=docroot,
        certs=certs,
        workers=1,
        extra=["--header-timeout", "1", "--keepalive-timeout", "1"],
    )
    yield srv
    assert stop_server(srv.srv.proc) == 0, srv.srv.log()


def client_hello() -> bytes:
    """The first flight of a real TLS client, made without a network."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Read until the server closes; returns how long that took."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid: int, target: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := fd_count(pid)) > target and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


@pytest.mark.parametrize("how", ["half a ClientHello", "no Finished from the client"])
def test_a_stalled_handshake_times_out(quick: Https, how: str) -> None:
    hello = client_hello()
    with socket.create_connection(quick.addr, timeout=5) as s:
        if how == "half a ClientHello":
            s.sendall(hello[: len(hello) // 2])
        else:
            s.sendall(hello)
            assert s.recv(65536)  # the server's flight; the client goes silent after it
        took = closed_within(s, 5)
    assert 0.7 < took < 3.0, took
    assert quick.srv.wait_for_log(r"TLS handshake not finished within 1\.0s") is not None


def test_an_incomplete_head_after_the_handshake_gets_a_408_over_tls(quick: Https) -> None:
    with TlsRawClient(quick) as client:
        client.send(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n")  # no blank line
        start = time.monotonic()
        status, _, _ = client.response()
        assert status == 408
        assert time.monotonic() - start < 3.0
        assert client.closed_by_peer()


def test_an_idle_keep_alive_tls_connection_is_closed(quick: Https) -> None:
    with TlsRawClient(quick) as client:
        client.send(_get("/static/hello.txt"))
        assert client.response()[2] == b"hello\n"
        start = time.monotonic()
        assert client.closed_by_peer()
        assert 0.7 < time.monotonic() - start < 3.0


def test_clients_leaving_mid_handshake_leak_no_descriptor(quick: Https) -> None:
    pid = quick.srv.proc.pid
    with TlsRawClient(quick) as warm:  # open-file cache and buffers in place first
        warm.send(_get("/static/hello.txt"))
        assert warm.response()[0] == 200
    time.sleep(0.2)
    baseline = fd_count(pid)
    hello = client_hello()
    for round_ in range(10):
        socket.create_connection(quick.addr, timeout=5).close()  # before a byte
        with socket.create_connection(quick.addr, timeout=5) as s:
            s.sendall(hello[: 7 + round_])  # partway through the ClientHello
        with socket.create_connection(quick.addr, timeout=5) as s:
            s.sendall(hello)
            s.recv(65536)  # the server's flight arrived; leave before answering it
        with socket.create_connection(quick.addr, timeout=5) as s:
            s.sendall(hello)
            s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # (the last one closes with a reset)
    assert wait_fds(pid, baseline) <= baseline, os.listdir(f"/proc/{pid}/fd")
    with TlsRawClient(quick) as after:  # and the worker serves on
        after.send(_get("/dynamic/f4097.bin"))
        assert after.response()[0] == 200


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_with_stalled_tls_downloads(quick: Https) -> None:
    """16 clients stop reading 64 MiB bodies after 1 MiB: each holds at most one 256 KiB
    read buffer (static) or aio_depth AIO buffers (dynamic), not its body."""
    pid = quick.srv.proc.pid
    with TlsRawClient(quick, timeout=30) as warm:  # pools and caches in place first
        for path in ("/static/f67108864.bin", "/dynamic/f67108864.bin"):
            warm.send(_get(path))
            assert len(warm.big_response()[2]) == 64 * 1024 * 1024
    before = rss(pid)
    clients = []
    try:
        for i in range(16):
            client = TlsRawClient(quick, timeout=30)
            clients.append(client)
            client.send(_get(("/static/", "/dynamic/")[i % 2] + "f67108864.bin"))
            while len(client.buf) < 1 << 20:
                assert client._fill()
        time.sleep(0.5)  # let the server fill what the sockets take, and stop
        grown = rss(pid) - before
    finally:
        for client in clients:
            client.close()
    # Dynamic: 8 x 3 AIO buffers of 1 MiB; static: 8 x 256 KiB; plus SSL buffers (22.8
    # MiB measured here); whole bodies would be 1 GiB.
    assert grown < 48 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


@pytest.fixture(params=["plain", "shim"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "shim" and request.config.getoption("--plain-only"):
        pytest.skip("--plain-only: the shim runs were not asked for")
    if request.param == "plain" and request.config.getoption("--shim-only"):
        pytest.skip("--shim-only: the plain runs were not asked for")
    return request.param


def _refused(addr: tuple[str, int]) -> bool:
    try:
        socket.create_connection(addr, timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_tls_transfers_in_flight(
    docroot: DocRoot, certs: Certs, mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path / "stats"
    https = start_https(
        docroot.path,
        docroot=docroot,
        certs=certs,
        workers=1,
        extra=["--drain-timeout", "30"],
        mode=mode,
        shim=shim,
        stats_path=stats,
    )
    paths = ["/static/f67108864.bin", "/dynamic/f67108864.bin"]
    try:
        clients = [TlsRawClient(https, timeout=30) for _ in paths]
        for client, path in zip(clients, paths, strict=True):
            client.send(_get(path))
            while len(client.buf) < 1 << 20:  # well into the body; then stop reading
                assert client._fill()
        with TlsRawClient(https) as idle:
            idle.send(_get("/static/hello.txt"))
            assert idle.response()[0] == 200
            https.srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 3
            while not _refused(https.addr):
                assert time.monotonic() < deadline, "still accepting TLS connections"
                time.sleep(0.05)
            assert idle.closed_by_peer()  # idle keep-alive connections close at once
        assert https.srv.proc.poll() is None  # still finishing the transfers
        for client, path in zip(clients, paths, strict=True):
            status, _, body = client.big_response()  # its head went out before the drain
            assert status == 200
            expected = docroot.content(path)
            assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest(), path
            assert client.closed_by_peer()  # then closed: no keep-alive while draining
            client.close()
        assert https.srv.proc.wait(20) == 0
    finally:
        stop_server(https.srv.proc)


def _start_fails(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "aws", "--root", str(root), "--port", "0", "--tls-port", "0"]
    return subprocess.run(
        cmd + args, cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )


def test_a_bad_certificate_stops_the_start_with_one_line(
    docroot: DocRoot, certs: Certs, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    proc = _start_fails(["--tls-cert", str(junk), "--tls-key", str(certs.key)], docroot.path)
    assert proc.returncode == 1
    assert "aws: TLS certificate or key unusable" in proc.stderr
    missing = tmp_path / "gone.pem"
    proc = _start_fails(["--tls-cert", str(missing), "--tls-key", str(certs.key)], docroot.path)
    assert proc.returncode == 1 and f"not found: {missing}" in proc.stderr
    proc = _start_fails(["--tls-key", str(certs.key)], docroot.path)
    assert proc.returncode == 1 and "--tls-key needs --tls-cert" in proc.stderr


def test_restarted_workers_serve_a_renewed_certificate(
    docroot: DocRoot, certs: Certs, tmp_path: Path
) -> None:
    """Each worker reads the certificate when it starts: after a renewal, workers the
    supervisor restarts present the new one (and a full restart does too)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs.cert, cert)
    shutil.copy(certs.key, key)
    live = Certs(certs.ca, cert, key)
    https = start_https(docroot.path, docroot=docroot, certs=live, workers=2)
    try:
        with TlsRawClient(https) as client:
            client.send(_get("/static/hello.txt"))
            assert client.response()[2] == b"hello\n"
        (tmp_path / "renewed").mkdir()
        renewed = make_certs(tmp_path / "renewed")
        shutil.copy(renewed.cert, cert)
        shutil.copy(renewed.key, key)
        old = https.srv.worker_pids()
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while https.srv.log().count("restarted as pid") < len(old):
            assert time.monotonic() < deadline, https.srv.log()
            time.sleep(0.05)
        https.certs = renewed  # clients now trust only the new CA
        for _ in range(8):  # REUSEPORT spreads these over both new workers
            with TlsRawClient(https) as client:
                client.send(_get("/static/hello.txt"))
                assert client.response()[2] == b"hello\n"
    finally:
        stop_server(https.srv.proc)


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on: its socket inodes matched in /proc/net/tcp*."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("workers", [1, 2])
def test_https_only_with_plain_off(docroot: DocRoot, certs: Certs, workers: int) -> None:
    https = start_https(
        docroot.path, docroot=docroot, certs=certs, workers=workers, extra=["--plain", "off"]
    )
    try:
        assert "listening on http://" not in https.srv.log()
        assert https.srv.wait_for_log(rf"\(TLS\), HTTPS only, with {workers} worker")
        for pid in https.srv.worker_pids():
            assert listening_ports(pid) == {https.port}, https.srv.log()
        with TlsRawClient(https) as client:
            client.send(_get("/dynamic/f4097.bin"))
            status, _, body = client.response()
            assert status == 200 and body == docroot.content("/dynamic/f4097.bin")
        https.srv.proc.send_signal(signal.SIGTERM)
        assert https.srv.proc.wait(10) == 0
    finally:
        stop_server(https.srv.proc)


def test_plain_off_without_a_certificate_is_refused(docroot: DocRoot) -> None:
    proc = _start_fails(["--plain", "off"], docroot.path)
    assert proc.returncode == 1 and "--plain off needs --tls-cert" in proc.stderr


def _served_certificate(https: Https, trusted: Certs) -> bytes:
    """The certificate the server presents now, to a client trusting ``trusted``'s CA."""
    raw = socket.create_connection(https.addr, timeout=10)
    with trusted.client_context().wrap_socket(raw, server_hostname=https.srv.host) as s:
        der = s.getpeercert(binary_form=True)
        s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(1 << 16):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello\n")
        assert der is not None
        return der


def _der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@pytest.mark.parametrize("workers", [2, 1])
def test_sighup_serves_a_renewed_certificate_and_keeps_the_old_for_a_broken_one(
    docroot: DocRoot, certs: Certs, tmp_path: Path, workers: int
) -> None:
    """A certificate renewed in place (certbot, cert-manager) is served after SIGHUP; one
    that does not load leaves the workers serving the old one, with an error line."""
    live = Certs(certs.ca, tmp_path / "cert.pem", tmp_path / "key.pem")
    shutil.copy(certs.cert, live.cert)
    shutil.copy(certs.key, live.key)
    https = start_https(docroot.path, docroot=docroot, certs=live, workers=workers)
    srv = https.srv
    try:
        assert _served_certificate(https, certs) == _der(certs.cert)
        (tmp_path / "renewed").mkdir()
        renewed = make_certs(tmp_path / "renewed")  # a new key, from a new CA
        shutil.copy(renewed.cert, live.cert)
        shutil.copy(renewed.key, live.key)
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.wait_for_log(r"SIGHUP: reloaded the configuration", 10), srv.log()
        deadline = time.monotonic() + 10
        while True:  # the old workers may answer a last connection while they drain
            try:
                if _served_certificate(https, renewed) == _der(renewed.cert):
                    break
            except ssl.SSLCertVerificationError:
                pass
            assert time.monotonic() < deadline, srv.log()
            time.sleep(0.05)
        live.cert.write_text("not a certificate\n")
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_for_log(r"ERROR .*SIGHUP: .*TLS certificate or key unusable.*", 10)
        assert line is not None, srv.log()
        assert _served_certificate(https, renewed) == _der(renewed.cert)
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def _socket_inodes(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    links = (os.readlink(fds / fd) for fd in os.listdir(fds))
    return {link[8:-1] for link in links if link.startswith("socket:[")}


def _listener_inodes(port: int) -> set[str]:
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {row[9] for row in rows if row[3] == "0A" and int(row[1].split(":")[1], 16) == port}


def test_the_metrics_process_holds_no_listener_of_the_workers(
    docroot: DocRoot, certs: Certs
) -> None:
    """Neither the plain nor the TLS port: after a stop, a listener the metrics process
    still held would go on queueing connections that nobody answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    https = start_https(
        docroot.path, docroot=docroot, certs=certs, extra=["--metrics", f"127.0.0.1:{mport}"]
    )
    try:
        titles = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in https.srv.worker_pids()}
        metrics = [pid for pid, title in titles.items() if title.startswith(b"aws: metrics")]
        assert len(metrics) == 1, titles
        held = _socket_inodes(metrics[0])
        for port in (https.srv.port, https.port):
            listening = _listener_inodes(port)
            assert len(listening) == 2 and not listening & held, port
    finally:
        assert stop_server(https.srv.proc) == 0, https.srv.log()
