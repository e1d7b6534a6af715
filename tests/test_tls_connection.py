"""A real :class:`aws.tls_connection.TlsConnection` in-process: a real Server (with its
TLS side) and Loop, one end of a socketpair handed to the connection, and the client
played by the test with an ``SSLObject`` over memory BIOs, pumped turn by turn. The
states each request goes through are recorded, so HANDSHAKE is seen as its own state,
and a socketpair's small buffer makes every large body block (and SSL_write retry)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from aws import states as S
from aws import tls_connection
from aws.config import Config
from aws.loop import Loop
from aws.server import Server
from aws.states import State
from aws.tls_connection import TlsConnection
from tests.conftest import DocRoot, file_name
from tests.tls_helpers import Certs, make_certs

BIG = 1024 * 1024 + 3


class RecordingTls(TlsConnection):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.trace: list[State] = [self.state]

    def _to(self, new: State) -> None:
        super()._to(new)
        self.trace.append(new)


class TlsHarness:
    def __init__(self, root: DocRoot, certs: Certs, **options: object) -> None:
        self.loop = Loop()
        self.loop._timeout = lambda: 0.002  # type: ignore[method-assign]
        self.plain = socket.create_server(("127.0.0.1", 0))
        self.secure = socket.create_server(("127.0.0.1", 0))
        config = Config(
            root=str(root.path), tls_cert=str(certs.cert), tls_key=str(certs.key), **options
        )
        self.server = Server(config, self.loop, self.plain, tls_listeners=(self.secure,))
        assert self.server.tls is not None
        ours, self.client = socket.socketpair()
        ours.setblocking(False)
        self.client.setblocking(False)
        wrapped = self.server.tls.context.wrap_socket(
            ours, server_side=True, do_handshake_on_connect=False
        )
        self.conn = RecordingTls(self.server, wrapped, "socketpair", self.server.tls)
        self.server.conns.add(self.conn)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = certs.client_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )
        self.handshaken = False
        self.received = bytearray()
        self.conn.start()

    def _client_turn(self) -> None:
        while True:  # bytes from the server into the client's SSL
            try:
                chunk = self.client.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                self.incoming.write_eof()
                break
            self.incoming.write(chunk)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
                self.handshaken = True
            except ssl.SSLWantReadError:
                pass
        if self.handshaken:
            while True:
                try:
                    data = self.tls.read(1 << 20)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
                if not data:
                    break
                self.received += data
        if pending := self.outgoing.read():
            # Once the server has closed, what the client had left to say does not matter.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.client.sendall(pending)

    def send(self, data: bytes) -> None:
        self.pump_until(lambda: self.handshaken)
        self.tls.write(data)
        self.client.sendall(self.outgoing.read())

    def pump_until(self, done: object, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, [s.name for s in self.conn.trace]
            self._client_turn()
            self.loop.run_once()
            self._client_turn()

    def body_of(self, length: int) -> bytes:
        def arrived() -> bool:
            end = self.received.find(b"\r\n\r\n")
            return end >= 0 and len(self.received) >= end + 4 + length

        self.pump_until(arrived)
        end = self.received.find(b"\r\n\r\n")
        body = bytes(self.received[end + 4 : end + 4 + length])
        del self.received[: end + 4 + length]
        return body

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.loop.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def harness(docroot: DocRoot, certs: Certs) -> Iterator[TlsHarness]:
    docroot.warm_small()  # the traces below are of cached files: a cold one goes by AIO
    h = TlsHarness(docroot, certs)
    yield h
    h.close()


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def _trace(h: TlsHarness) -> str:
    for _ in range(5):
        h.loop.run_once()
    return " ".join(s.name for s in h.conn.trace)


@pytest.mark.parametrize("size", [1, 4097, BIG])
def test_static_over_tls_states(harness: TlsHarness, docroot: DocRoot, size: int) -> None:
    path = f"/static/{file_name(size)}"
    harness.send(_get(path))
    assert harness.body_of(size) == docroot.content(path)
    assert _trace(harness) == "HANDSHAKE READ_HEAD SEND_HEAD SEND_FILE DONE READ_HEAD"
    assert harness.conn.stage is None  # the buffer went back to the pool
    assert harness.server.tls is not None
    assert harness.server.tls.buffers.outstanding == 0


@pytest.mark.parametrize("size", [1, 4097, BIG])
def test_dynamic_over_tls_states(harness: TlsHarness, docroot: DocRoot, size: int) -> None:
    path = f"/dynamic/{file_name(size)}"
    harness.send(_get(path))
    assert harness.body_of(size) == docroot.content(path)
    trace = _trace(harness)
    assert re.fullmatch(r"HANDSHAKE READ_HEAD (AIO_WAIT SEND_BUFFER )+DONE READ_HEAD", trace)


def test_keep_alive_then_close(harness: TlsHarness, docroot: DocRoot) -> None:
    for path in ("/static/f4097.bin", "/dynamic/f4097.bin"):
        harness.send(_get(path))
        assert harness.body_of(4097) == docroot.content(path)
    harness.send(_get("/static/hello.txt", "Connection: close\r\n"))
    assert harness.body_of(6) == b"hello\n"
    harness.pump_until(lambda: harness.conn.state is S.CLOSED)


def test_bytes_ssl_holds_back_are_read_without_epoll(
    harness: TlsHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record larger than one recv: the rest sits decrypted inside SSL, where epoll
    cannot see it. The connection must take it at once or the request never completes."""
    monkeypatch.setattr(tls_connection, "RECV_SIZE", 100)
    request = _get("/static/hello.txt", "X-Pad: " + "p" * 3000 + "\r\n")
    harness.send(request)  # one record of ~3 KiB
    assert harness.body_of(6) == b"hello\n"


# -- the fast path through the SSL object (aws.replaying, aiobind.sslhandle) ------------


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_a_repeated_request_is_answered_without_entering_a_state(
    harness: TlsHarness, docroot: DocRoot, prefix: str
) -> None:
    path = f"/{prefix}/{file_name(4097)}"
    for _ in range(2):  # the first is asked about the page cache (not served lately)
        harness.send(_get(path))
        assert harness.body_of(4097) == docroot.content(path)
    assert harness.conn.handle is not None
    before = _trace(harness)
    for _ in range(3):
        harness.send(_get(path))
        assert harness.body_of(4097) == docroot.content(path)
    assert _trace(harness) == before  # answered in the C call, through SSL
    assert harness.conn.requests == 5
    again = harness.conn.again
    assert again is not None and again[1].cells is not None
    # Counted under TLS's own way out: a whole file's reply is shared with plain HTTP.
    way = "tls-copy" if prefix == "static" else "aio-buffered"
    assert set(again[1].cells) == {way}
    assert harness.server.tls is not None and harness.server.tls.buffers.outstanding == 0


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_a_full_socket_hands_the_same_bytes_to_the_python_machine(
    harness: TlsHarness, docroot: DocRoot, prefix: str
) -> None:
    path = f"/{prefix}/{file_name(4097)}"
    for _ in range(2):
        harness.send(_get(path))
        assert harness.body_of(4097) == docroot.content(path)
    harness.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the minimum
    before = len(harness.conn.trace)
    for _ in range(50):  # the client reads nothing: the socket fills
        harness.tls.write(_get(path))
        harness.client.sendall(harness.outgoing.read())
        for _ in range(3):
            harness.loop.run_once()
        if harness.conn.state is not S.READ_HEAD:
            break
    # Every request before was replayed; this one's SSL_write is to be made again.
    assert harness.conn.trace[before:] == [S.SEND_HEAD]
    answered = harness.conn.requests - 2  # since the two read above
    assert answered >= 2
    harness.pump_until(lambda: harness.conn.state is S.READ_HEAD)
    for _ in range(answered):
        assert harness.body_of(4097) == docroot.content(path)


def test_a_closing_connection_lets_go_of_its_ssl_object(
    harness: TlsHarness, docroot: DocRoot
) -> None:
    for _ in range(2):
        harness.send(_get("/static/hello.txt"))
        assert harness.body_of(6) == b"hello\n"
    assert harness.conn.handle is not None
    harness.send(_get("/static/hello.txt", "Connection: close\r\n"))
    assert harness.body_of(6) == b"hello\n"
    harness.pump_until(lambda: harness.conn.state in (S.LINGER, S.CLOSED))
    # shutdown() and close() free the SSL object: no pointer to it may be kept
    assert harness.conn.handle is None and harness.conn.again is None


def test_off_every_request_goes_through_the_states(docroot: DocRoot, certs: Certs) -> None:
    h = TlsHarness(docroot, certs, fast_path=False)
    try:
        for _ in range(2):
            h.send(_get("/static/hello.txt"))
            assert h.body_of(6) == b"hello\n"
        assert h.conn.handle is None
        trace = _trace(h)
        assert trace.count("SEND_HEAD") == 2
    finally:
        h.close()


def test_plain_http_on_the_tls_side_is_a_400(harness: TlsHarness) -> None:
    logged: list[tuple[int, int, object]] = []
    harness.server.on_response = lambda conn: logged.append((conn.status, conn.sent, conn.req))
    harness.client.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    harness.loop.run_once()
    answer = b""
    deadline = time.monotonic() + 5
    while harness.conn.state is not S.CLOSED or not answer.endswith(b"</html>\n"):
        assert time.monotonic() < deadline, answer
        harness.loop.run_once()
        with contextlib.suppress(BlockingIOError):
            answer += harness.client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert _trace(harness) == "HANDSHAKE CLOSED"
    page = len(answer) - answer.index(b"\r\n\r\n") - 4
    assert logged == [(400, page, None)]  # in the access log and the metrics, once


def test_handshake_timeout_closes(harness: TlsHarness) -> None:
    harness.conn.timed_out()  # what the sweep calls once the deadline has passed
    assert harness.conn.state is S.CLOSED
    assert harness.conn not in harness.server.conns


@pytest.mark.parametrize("size", [1, 4097])
def test_with_ktls_static_bodies_take_the_sendfile_loop(
    harness: TlsHarness, docroot: DocRoot, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This kernel has no kTLS, so the kernel's part is played by a stand-in: once the
    handshake says the kernel took over, the body must go through transfer.sendfile on
    the socket's fd (here encrypted by the stand-in), with no read buffer staged."""
    assert harness.server.tls is not None
    harness.server.tls.ktls_requested = True
    monkeypatch.setattr(tls_connection.tls, "kernel_sends", lambda sock: True)
    calls: list[tuple[int, int, int]] = []

    def kernel_sendfile(out_fd: int, in_fd: int, pos: int, stop: int, budget: int) -> int:
        assert out_fd == harness.conn.fd
        calls.append((pos, stop, budget))
        harness.conn.sock.sendall(os.pread(in_fd, stop - pos, pos))  # what kTLS would send
        return stop

    monkeypatch.setattr(tls_connection.transfer, "sendfile", kernel_sendfile)
    path = f"/static/{file_name(size)}"
    harness.send(_get(path))
    assert harness.body_of(size) == docroot.content(path)
    assert harness.conn.ktls
    assert calls == [(0, size, harness.server.config.sendfile_chunk)]
    assert harness.server.tls.buffers.outstanding == 0 and harness.server.tls.buffers.idle == 0


def test_with_ktls_a_multipart_static_body_sends_its_delimiters_through_ssl(
    harness: TlsHarness, docroot: DocRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parts go by sendfile on the kTLS socket, their delimiters through SSL: an
    SSLSocket's send takes no flags (MSG_MORE raised ValueError and closed the
    connection), and its bytes must be encrypted in order with the parts'."""
    assert harness.server.tls is not None
    harness.server.tls.ktls_requested = True
    monkeypatch.setattr(tls_connection.tls, "kernel_sends", lambda sock: True)

    def kernel_sendfile(out_fd: int, in_fd: int, pos: int, stop: int, budget: int) -> int:
        end = min(stop, pos + budget)
        harness.conn.sock.sendall(os.pread(in_fd, end - pos, pos))  # what kTLS would send
        return end

    monkeypatch.setattr(tls_connection.transfer, "sendfile", kernel_sendfile)
    path = f"/static/{file_name(BIG)}"
    data = docroot.content(path)
    harness.send(_get(path, "Range: bytes=0-99,500000-500099\r\n"))
    harness.pump_until(lambda: harness.received.endswith(b"--\r\n"))
    body = bytes(harness.received)
    assert b" 206 " in body.split(b"\r\n", 1)[0] and harness.conn.ktls
    assert data[:100] in body and data[500000:500100] in body
    assert body.count(b"Content-Range: bytes ") == 2
