"""aiobind.replay on its own: one recv, and the answer sent again only for the same bytes.

Real sockets (a socketpair) and a real file; every outcome the C function returns.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiobind import EventFD, replay
from aiobind.replay import Replay

REQUEST = b"GET /static/x HTTP/1.1\r\nHost: t\r\n\r\n"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n"
BODY = os.urandom(4096)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


@pytest.fixture
def body(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "x"
    path.write_bytes(BODY)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "closed early"
        out += chunk
    return out


def test_the_same_bytes_are_answered_with_head_and_file(
    pair: tuple[socket.socket, socket.socket], body: int
) -> None:
    server, client = pair
    client.sendall(REQUEST)
    r = Replay()
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, len(BODY)) == replay.SERVED
    assert (r.head_sent, r.file_pos) == (len(HEAD), len(BODY))
    assert _read(client, len(HEAD) + len(BODY)) == HEAD + BODY


def test_a_range_of_the_file(pair: tuple[socket.socket, socket.socket], body: int) -> None:
    server, client = pair
    client.sendall(REQUEST)
    r = Replay()
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 100, 200) == replay.SERVED
    assert _read(client, len(HEAD) + 100) == HEAD + BODY[100:200]


@pytest.mark.parametrize(
    "got",
    [
        REQUEST.replace(b"/x", b"/y"),  # same length, other bytes
        REQUEST[:-2],  # a part of it (the rest is still on its way)
        REQUEST + REQUEST,  # pipelined: two requests, not the one
    ],
)
def test_other_bytes_come_back_and_nothing_is_sent(
    pair: tuple[socket.socket, socket.socket], body: int, got: bytes
) -> None:
    server, client = pair
    client.sendall(got)
    r = Replay()
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, len(BODY)) == replay.OTHER
    assert r.data() == got
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)


def test_nothing_yet_is_eagain(pair: tuple[socket.socket, socket.socket], body: int) -> None:
    server, _ = pair
    r = Replay()
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, len(BODY)) == -errno.EAGAIN


def test_a_closed_peer_is_closed(pair: tuple[socket.socket, socket.socket], body: int) -> None:
    server, client = pair
    client.shutdown(socket.SHUT_WR)
    r = Replay()
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, len(BODY)) == replay.CLOSED


def test_a_bad_descriptor_is_minus_errno(body: int) -> None:
    r = Replay()
    assert r.serve(body, REQUEST, HEAD, body, 0, 1) == -errno.ENOTSOCK


def test_a_full_socket_stops_part_way_and_says_where(tmp_path: Path) -> None:
    server, client = socket.socketpair()
    try:
        server.setblocking(False)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = os.urandom(4 << 20)
        (tmp_path / "big").write_bytes(big)
        fd = os.open(tmp_path / "big", os.O_RDONLY)
        try:
            client.sendall(REQUEST)
            r = Replay()
            assert r.serve(server.fileno(), REQUEST, HEAD, fd, 0, len(big)) == replay.BLOCKED
            assert r.head_sent == len(HEAD)
            assert 0 <= r.file_pos < len(big)
            got = _read(client, len(HEAD) + r.file_pos)
            assert got == HEAD + big[: r.file_pos]
        finally:
            os.close(fd)
    finally:
        server.close()
        client.close()


def test_a_peer_gone_before_the_answer_is_failed(body: int) -> None:
    server, client = socket.socketpair()
    try:
        server.setblocking(False)
        client.sendall(REQUEST)
        client.close()
        r = Replay()
        assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, len(BODY)) == replay.FAILED
        assert r.errno == errno.EPIPE
        assert r.head_sent == 0
    finally:
        server.close()


def test_a_file_shorter_than_promised_shrank(
    pair: tuple[socket.socket, socket.socket], body: int
) -> None:
    server, client = pair
    client.sendall(REQUEST)
    r = Replay()
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, len(BODY) + 10) == replay.SHRANK
    assert r.file_pos == len(BODY)
    assert _read(client, len(HEAD) + len(BODY)) == HEAD + BODY


# -- a body read by AIO -------------------------------------------------------------------


def test_a_body_read_by_aio_goes_out_with_the_head_in_one_answer(
    pair: tuple[socket.socket, socket.socket], body: int
) -> None:
    server, client = pair
    efd = EventFD()
    r = Replay()
    try:
        for _ in range(2):  # the context and buffer are reused
            client.sendall(REQUEST)
            got = r.serve_read(server.fileno(), REQUEST, HEAD, body, 10, 4010, efd.fileno())
            assert got == replay.SERVED
            assert _read(client, len(HEAD) + 4000) == HEAD + BODY[10:4010]
            assert efd.read() == 1  # the completion was signalled on the caller's eventfd
    finally:
        r.close()
        efd.close()


def test_a_short_read_leaves_the_request_unanswered(
    pair: tuple[socket.socket, socket.socket], body: int
) -> None:
    server, client = pair
    client.sendall(REQUEST)
    r = Replay()
    efd = EventFD()
    try:
        got = r.serve_read(server.fileno(), REQUEST, HEAD, body, 4000, 5000, efd.fileno())
        assert got == replay.OTHER  # the file ends at 4096: the caller decides again
        assert r.data() == REQUEST
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(1)
    finally:
        r.close()
        efd.close()


def test_a_full_socket_keeps_the_read_body_for_the_rest(tmp_path: Path) -> None:
    server, client = socket.socketpair()
    data = os.urandom(60 * 1024)
    (tmp_path / "mid").write_bytes(data)
    fd = os.open(tmp_path / "mid", os.O_RDONLY)
    efd = EventFD()
    r = Replay()
    try:
        server.setblocking(False)
        filler = 0
        while True:
            try:
                filler += server.send(b"\0" * 65536)
            except BlockingIOError:
                break
        client.sendall(REQUEST)
        got = r.serve_read(server.fileno(), REQUEST, HEAD, fd, 0, len(data), efd.fileno())
        assert got == replay.BLOCKED
        assert (r.head_sent, r.file_pos) == (0, 0)
        assert r.body(len(data)) == data
    finally:
        r.close()
        efd.close()
        os.close(fd)
        server.close()
        client.close()


def test_a_body_larger_than_the_buffer_is_refused(body: int) -> None:
    r = Replay(read_size=4096)
    with pytest.raises(ValueError):
        r.serve_read(0, REQUEST, HEAD, body, 0, 4097, -1)
    with pytest.raises(ValueError):
        r.serve_read(0, REQUEST, HEAD, body, 5, 5, -1)


# -- counting what was answered ----------------------------------------------------------


def test_an_answer_is_counted_where_the_caller_says(
    pair: tuple[socket.socket, socket.socket], body: int
) -> None:
    server, client = pair
    cells = memoryview(bytearray(8 * 32)).cast("Q")
    r = Replay()
    r.tally_into(cells, hist=10, sum_us=20, bounds=(0.001, 10.0))
    where = Replay.cells(1, 2, 3)
    client.sendall(REQUEST)
    began = time.monotonic() - 0.5  # half a second ago: the second bucket
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, 100, where, began) == replay.SERVED
    assert (cells[1], cells[2], cells[3]) == (1, 100, 1)
    assert (cells[10], cells[11], cells[12]) == (0, 1, 0)
    assert 500_000 <= cells[20] < 600_000  # microseconds
    _read(client, len(HEAD) + 100)
    client.sendall(b"other")
    assert r.serve(server.fileno(), REQUEST, HEAD, body, 0, 100, where, began) == replay.OTHER
    client.sendall(REQUEST)
    uncounted = r.serve(server.fileno(), REQUEST, HEAD, body, 0, 100)
    assert uncounted == replay.SERVED
    assert (cells[1], sum(cells[10:13])) == (1, 1)  # neither of those was counted


def test_tally_cells_must_fit() -> None:
    r = Replay()
    with pytest.raises(ValueError):
        r.tally_into(memoryview(bytearray(8 * 4)).cast("Q"), hist=2, sum_us=0, bounds=(1.0, 2.0))
    with pytest.raises(ValueError):
        r.tally_into(memoryview(bytearray(64)), hist=0, sum_us=1, bounds=(1.0,))
