"""HTTPS end to end: a real server with its TLS listener, real clients (``requests`` with
the test CA, ``curl --cacert``, ``openssl s_client``, Python's ``ssl``), plain and under
the shim that halves every socket call (which now splits OpenSSL's writes too).

Every edge size leaves byte-identical from /static/ (pread + SSL_write here: this
kernel has no kTLS) and /dynamic/ (AIO buffers through SSL); keep-alive, pipelining,
ranges and conditionals behave as over plain HTTP; plain HTTP on the TLS port is a 400.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import SIZES, DocRoot, file_name, stop_server
from tests.tls_helpers import Certs, Https, TlsRawClient, make_certs, start_https


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module", params=["plain", "shim"])
def https(
    request: pytest.FixtureRequest,
    docroot: DocRoot,
    certs: Certs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Https]:
    mode: str = request.param
    if mode == "shim" and request.config.getoption("--plain-only"):
        pytest.skip("--plain-only: the shim runs were not asked for")
    if mode == "plain" and request.config.getoption("--shim-only"):
        pytest.skip("--shim-only: the plain runs were not asked for")
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path_factory.mktemp("shimstats") / "stats"
    srv = start_https(
        docroot.path, docroot=docroot, certs=certs, mode=mode, shim=shim, stats_path=stats
    )
    yield srv
    assert stop_server(srv.srv.proc) == 0, srv.srv.log()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_every_edge_size_is_byte_identical(https: Https, docroot: DocRoot, prefix: str) -> None:
    with requests.Session() as http:
        for size in SIZES:
            path = f"/{prefix}/{file_name(size)}"
            resp = http.get(https.url + path, verify=str(https.certs.ca), timeout=60)
            assert resp.status_code == 200, path
            assert resp.headers["content-length"] == str(size)
            assert len(resp.content) == size and _sha(resp.content) == _sha(
                docroot.content(path)
            ), path


def test_keep_alive_and_pipelining(https: Https, docroot: DocRoot) -> None:
    paths = ["/static/f4097.bin", "/dynamic/f1048579.bin", "/static/hello.txt", "/dynamic/f1.bin"]
    with TlsRawClient(https) as client:
        for path in paths:  # one at a time on one connection
            client.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, _, body = client.response()
            assert status == 200 and body == docroot.content(path), path
        # All in one write: answered in order, on the same connection.
        client.send(b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in paths))
        for path in paths:
            status, _, body = client.response()
            assert status == 200 and body == docroot.content(path), path
        client.send(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, headers, body = client.response()
        assert status == 200 and headers["connection"] == "close" and body == b"hello\n"
        assert client.closed_by_peer()


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_ranges_and_conditionals(https: Https, docroot: DocRoot, prefix: str) -> None:
    path = f"/{prefix}/f1048579.bin"
    data = docroot.content(path)
    ca = str(https.certs.ca)
    with requests.Session() as http:
        whole = http.get(https.url + path, verify=ca, timeout=30)
        etag = whole.headers["etag"]
        part = http.get(https.url + path, headers={"Range": "bytes=4095-300000"}, verify=ca)
        assert part.status_code == 206 and part.content == data[4095:300001]
        tail = http.get(https.url + path, headers={"Range": "bytes=-3"}, verify=ca)
        assert tail.status_code == 206 and tail.content == data[-3:]
        same = http.get(https.url + path, headers={"If-None-Match": etag}, verify=ca)
        assert same.status_code == 304 and same.content == b""
        beyond = http.get(https.url + path, headers={"Range": f"bytes={len(data)}-"}, verify=ca)
        assert beyond.status_code == 416
        head = http.head(https.url + path, verify=ca)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_curl_with_the_test_ca(https: Https, docroot: DocRoot, prefix: str, tmp_path: Path) -> None:
    path = f"/{prefix}/f4097.bin"
    out = tmp_path / "got"
    proc = subprocess.run(
        [
            *("curl", "-sS", "-v", "--cacert", str(https.certs.ca), "-o", str(out)),
            *("-w", "%{http_code} %{http_version}", https.url + path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "200 1.1"
    assert "ALPN: server accepted http/1.1" in proc.stderr
    assert out.read_bytes() == docroot.content(path)


def _s_client(https: Https, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["openssl", "s_client", "-connect", f"{https.srv.host}:{https.port}"]
    cmd += ["-CAfile", str(https.certs.ca), "-servername", "localhost", *args]
    return subprocess.run(cmd, input="", capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_s_client_tls_1_2_and_1_3_with_alpn(https: Https, version: str) -> None:
    proc = _s_client(https, "-tls" + version.replace(".", "_"), "-alpn", "http/1.1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(rf"New, TLSv{re.escape(version)}, Cipher is ", out), out
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: http/1.1" in out


def test_s_client_tls_1_1_is_refused(https: Https) -> None:
    # The client's own floor lowered, so the refusal is the server's.
    proc = _s_client(https, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "protocol version" in out
    assert https.srv.wait_for_log("TLS handshake failed: UNSUPPORTED_PROTOCOL") is not None


def test_plain_http_on_the_tls_port_gets_a_400_and_a_log_line(https: Https) -> None:
    with socket.create_connection(https.addr, timeout=10) as s:
        s.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):  # then a close, not a stuck connection
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data[:100]
    assert b"Connection: close" in data
    assert https.srv.wait_for_log("400, plain HTTP sent to the TLS port") is not None


def test_a_malformed_request_over_tls_is_a_400_then_a_close(https: Https) -> None:
    with TlsRawClient(https) as client:
        client.send(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
        status, headers, _ = client.response()
        assert status == 400 and headers["connection"] == "close"
        client.send(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")  # never read
        assert client.closed_by_peer()


def test_the_plain_port_still_serves_plain_http(https: Https) -> None:
    resp = requests.get(https.srv.url + "/static/hello.txt", timeout=10)
    assert resp.status_code == 200 and resp.content == b"hello\n"


def test_the_shim_splits_the_ssl_writes(https: Https, docroot: DocRoot) -> None:
    shim = https.srv.mode == "shim"
    before = https.srv.stats() if shim else None
    path = "/static/f1048579.bin"
    resp = requests.get(https.url + path, verify=str(https.certs.ca), timeout=30)
    assert resp.content == docroot.content(path)
    if before is None:
        return  # the plain run: nothing splits, the download alone is the check
    after = https.srv.stats()
    # OpenSSL writes each 16 KiB record with write(): ~64 records, every one split.
    assert after.send_split - before.send_split >= 64
    assert after.recv_calls > before.recv_calls
