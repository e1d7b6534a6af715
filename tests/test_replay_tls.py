"""aiobind.replay over TLS, on its own: ``Replay.serve_tls`` through the SSL object of a
standard-library server socket (``aiobind.sslhandle``), against a real TLS client.

A socketpair, the two ends wrapped by ``ssl`` and shaken hands in this thread; every
outcome the C function returns, each checked from what the client decrypts.
"""

from __future__ import annotations

import _ssl
import contextlib
import ctypes
import errno
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiobind._native import ffi, lib

from aiobind import EventFD, replay, sslhandle
from aiobind.replay import Replay
from tests import test_replay
from tests.tls_helpers import Certs, make_certs

BODY = test_replay.BODY
body = test_replay.body  # the file fixture: BODY in a real file, its descriptor

REQUEST = b"GET /static/x HTTP/1.1\r\nHost: t\r\n\r\n"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class Pair:
    """A server SSLSocket (non-blocking, as a worker's) and its client, both handshaken."""

    def __init__(self, certs: Certs) -> None:
        ours, theirs = socket.socketpair()
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(str(certs.cert), str(certs.key))
        ours.setblocking(False)
        theirs.setblocking(False)
        self.server = server_ctx.wrap_socket(ours, server_side=True, do_handshake_on_connect=False)
        self.client = certs.client_context().wrap_socket(
            theirs, server_hostname="localhost", do_handshake_on_connect=False
        )
        pending = [self.server, self.client]
        for _ in range(100):
            for side in list(pending):
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    side.do_handshake()
                    pending.remove(side)
            if not pending:
                break
        assert not pending, "the handshake did not finish"
        self.client.settimeout(5)
        handle = sslhandle.of(self.server)
        assert handle is not None, sslhandle.available()
        self.handle = handle

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.client.recv(n - len(out))
            assert chunk, "closed early"
            out += chunk
        return out

    def close(self) -> None:
        self.server.close()
        self.client.close()


@pytest.fixture
def pair(certs: Certs) -> Iterator[Pair]:
    p = Pair(certs)
    yield p
    p.close()


def _serve(r: Replay, p: Pair, fd: int, stop: int = len(BODY), **kw: object) -> int:
    return r.serve_tls(p.handle, REQUEST, HEAD, fd, 0, stop, **kw)  # type: ignore[arg-type]


def test_the_handle_is_the_sockets_own_ssl_object(pair: Pair, certs: Certs) -> None:
    assert sslhandle.available() is None
    other = Pair(certs)
    try:
        owner = ffi.cast("void *", id(pair.server._sslobj))  # type: ignore[attr-defined]
        assert lib.aiob_tls_owns(pair.handle, pair.server.fileno(), owner)
        assert not lib.aiob_tls_owns(pair.handle, other.server.fileno(), owner)
        assert not lib.aiob_tls_owns(other.handle, pair.server.fileno(), owner)
    finally:
        other.close()


def test_a_socket_before_its_handshake_has_none_to_share(certs: Certs) -> None:
    raw = socket.socket()
    try:
        unconnected = ssl.create_default_context().wrap_socket(
            raw, server_hostname="x", do_handshake_on_connect=False
        )
        assert sslhandle.of(unconnected) is None  # no SSL object yet
    finally:
        raw.close()


def test_the_same_request_is_answered_through_ssl(pair: Pair, body: int) -> None:
    r = Replay()
    for _ in range(3):
        pair.client.sendall(REQUEST)
        assert _serve(r, pair, body) == replay.SERVED
        assert pair.read(len(HEAD) + len(BODY)) == HEAD + BODY


def test_a_range_of_the_file(pair: Pair, body: int) -> None:
    pair.client.sendall(REQUEST)
    r = Replay()
    assert r.serve_tls(pair.handle, REQUEST, HEAD, body, 100, 300) == replay.SERVED
    assert pair.read(len(HEAD) + 200) == HEAD + BODY[100:300]


def test_other_bytes_come_back_and_nothing_is_sent(pair: Pair, body: int) -> None:
    other = REQUEST.replace(b"/x", b"/y")
    pair.client.sendall(other)
    r = Replay()
    assert _serve(r, pair, body) == replay.OTHER
    assert r.data() == other
    pair.client.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.recv(1)


def test_what_ssl_decrypted_beyond_the_first_read_is_taken_too(
    pair: Pair, body: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoll cannot see bytes SSL holds decrypted: one record must come out whole."""
    monkeypatch.setattr(replay, "TLS_FIRST_READ", 100)
    padded = REQUEST[:-2] + b"X-Pad: " + b"p" * 3000 + b"\r\n\r\n"  # one record
    pair.client.sendall(padded)
    r = Replay()
    assert r.serve_tls(pair.handle, padded, HEAD, body, 0, len(BODY)) == replay.SERVED
    assert pair.read(len(HEAD) + len(BODY)) == HEAD + BODY


def test_nothing_yet_is_eagain(pair: Pair, body: int) -> None:
    assert _serve(Replay(), pair, body) == -errno.EAGAIN


def test_an_error_left_in_openssls_queue_is_not_taken_for_this_calls(pair: Pair, body: int) -> None:
    """The error queue is per thread and shared with the ssl module: a stale entry must
    not turn an idle socket into a protocol error."""
    crypto = ctypes.CDLL(_ssl.__file__, mode=os.RTLD_NOLOAD)  # _ssl's OpenSSL
    if not hasattr(crypto, "ERR_set_error"):
        pytest.skip("OpenSSL before 3.0: no ERR_set_error to leave an error with")
    crypto.ERR_new()
    crypto.ERR_set_error(20, 1, None)  # ERR_LIB_SSL, a reason
    assert crypto.ERR_peek_error() != 0
    assert _serve(Replay(), pair, body) == -errno.EAGAIN
    assert crypto.ERR_peek_error() == 0


def test_close_notify_is_closed(pair: Pair, body: int) -> None:
    pair.client.setblocking(False)
    with contextlib.suppress(ssl.SSLWantReadError):
        pair.client.unwrap()  # sends close_notify
    assert _serve(Replay(), pair, body) == replay.CLOSED


def test_a_bare_eof_ends_the_connection(certs: Certs, body: int) -> None:
    p = Pair(certs)
    try:
        p.client.shutdown(socket.SHUT_WR)  # no close_notify: EOF in the middle of TLS
        r = Replay()
        # OpenSSL 3 calls it a protocol error (unexpected EOF), 1.1.1 a plain EOF; the
        # ssl module raises SSLEOFError for both, and both end the connection.
        outcome = r.serve_tls(p.handle, REQUEST, HEAD, body, 0, len(BODY))
        assert outcome == (-errno.EPROTO if ssl.OPENSSL_VERSION_INFO[0] >= 3 else replay.CLOSED)
    finally:
        p.close()


def test_bytes_that_are_not_tls_are_eproto(pair: Pair, body: int) -> None:
    socket.socket.sendall(pair.client, b"GET / HTTP/1.1\r\n\r\n" * 4)  # clear text
    assert _serve(Replay(), pair, body) == -errno.EPROTO


def test_a_full_socket_gives_the_bytes_to_write_again(tmp_path: Path, certs: Certs) -> None:
    big = os.urandom(60_000)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n"
    path = tmp_path / "big"
    path.write_bytes(big)
    fd = os.open(path, os.O_RDONLY)
    p = Pair(certs)
    try:
        p.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        r = Replay()
        served = 0
        while True:
            p.client.sendall(REQUEST)
            outcome = r.serve_tls(p.handle, REQUEST, head, fd, 0, len(big))
            if outcome == replay.BLOCKED:
                break
            assert outcome == replay.SERVED
            served += 1
            assert served < 100, "the socket never filled"
        rest = r.sealed()
        assert rest == head + big
        got = b""
        want = (served + 1) * (len(head) + len(big))
        p.client.settimeout(0.05)
        while len(got) < want:  # the client reads; the server writes the same bytes again
            with contextlib.suppress(TimeoutError, ssl.SSLWantReadError):
                got += p.client.recv(1 << 16)
            if rest:
                try:
                    p.server.send(rest)
                    rest = b""
                except ssl.SSLWantWriteError:
                    pass
        assert got == (head + big) * (served + 1)
    finally:
        p.close()
        os.close(fd)


def test_a_file_shorter_than_promised_shrank(pair: Pair, body: int) -> None:
    pair.client.sendall(REQUEST)
    assert _serve(Replay(), pair, body, stop=len(BODY) + 10) == replay.SHRANK


def test_a_file_that_cannot_be_read_failed_before_any_write(pair: Pair, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: pread is EISDIR
    try:
        pair.client.sendall(REQUEST)
        r = Replay()
        assert _serve(r, pair, fd) == replay.FAILED
        assert (r.errno, r.file_pos) == (errno.EISDIR, 0)
    finally:
        os.close(fd)


def test_a_body_read_by_aio_goes_out_signalled_on_the_eventfd(pair: Pair, body: int) -> None:
    efd = EventFD()
    r = Replay()
    try:
        pair.client.sendall(REQUEST)
        assert _serve(r, pair, body, efd=efd.fileno()) == replay.SERVED
        assert pair.read(len(HEAD) + len(BODY)) == HEAD + BODY
        assert efd.read() == 1  # the completion was signalled as every AIO read is
        pair.client.sendall(REQUEST)
        assert _serve(r, pair, body, stop=len(BODY) + 10, efd=efd.fileno()) == replay.OTHER
        assert r.data() == REQUEST  # a short read: unanswered, for the Python path
    finally:
        r.close()
        efd.close()


def test_an_answer_is_counted_where_the_caller_says(pair: Pair, body: int) -> None:
    cells = memoryview(bytearray(8 * 16)).cast("Q")
    r = Replay()
    r.tally_into(cells, 4, 15, [0.001, 1.0])
    pair.client.sendall(REQUEST)
    assert _serve(r, pair, body, cells=Replay.cells(0, 1, 2), began=0.0) == replay.SERVED
    assert (cells[0], cells[1], cells[2]) == (1, len(BODY), 1)
    assert sum(cells[4:7]) == 1


def test_a_head_or_body_too_large_is_refused(pair: Pair, body: int) -> None:
    r = Replay()
    with pytest.raises(ValueError):
        r.serve_tls(pair.handle, REQUEST, b"x" * (replay.HEAD_ROOM + 1), body, 0, 10)
    with pytest.raises(ValueError):
        r.serve_tls(pair.handle, REQUEST, HEAD, body, 0, r.read_size + 1)
