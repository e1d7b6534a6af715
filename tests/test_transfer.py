"""The send loops alone, over real sockets: what a failing call reports it had sent."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile

import pytest

from aiobind.buffers import BufferPool
from aws import transfer

MiB = 1 << 20


def test_a_sendfile_that_fails_midway_says_how_much_went(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two chunks go, then the peer is gone: the loop had moved bytes before the
    error, and the access log must count them (``moved``)."""
    calls = []

    def sendfile(out_fd: int, in_fd: int, pos: int, count: int) -> int:
        calls.append(pos)
        if len(calls) > 2:
            raise BrokenPipeError(32, os.strerror(32))
        return min(count, 64 * 1024)

    monkeypatch.setattr(os, "sendfile", sendfile)
    with pytest.raises(transfer.TransferFailed) as info:
        transfer.sendfile(1, 2, 1000, 10 * MiB, 10 * MiB)
    assert calls == [1000, 1000 + 65536, 1000 + 2 * 65536]
    assert info.value.moved == 2 * 65536 and "sendfile failed" in str(info.value)


def test_a_real_reset_peer_fails_the_sendfile() -> None:
    with tempfile.TemporaryFile(dir="/var/tmp") as f:
        f.truncate(8 * MiB)
        server, client = socket.socketpair()
        with server:
            server.setblocking(False)
            pos = transfer.sendfile(server.fileno(), f.fileno(), 0, 8 * MiB, 8 * MiB)
            assert 0 < pos < 8 * MiB  # the socket filled
            client.close()
            with pytest.raises(transfer.TransferFailed) as info:
                transfer.sendfile(server.fileno(), f.fileno(), pos, 8 * MiB, 8 * MiB)
            assert info.value.moved == 0 and "sendfile failed" in str(info.value)


def test_send_buffers_counts_what_went_before_a_failure() -> None:
    class Body:
        def __init__(self) -> None:
            self.left = [b"a" * 1000, b"b" * 1000]

        def view(self) -> memoryview | None:
            return memoryview(self.left[0]) if self.left else None

        def advance(self, n: int) -> bool:
            self.left[0] = self.left[0][n:]
            if not self.left[0]:
                self.left.pop(0)
            return not self.left

    class Breaking(Body):
        def view(self) -> memoryview | None:
            if len(self.left) == 1:
                raise OSError(5, os.strerror(5))  # the second read failed
            return super().view()

    server, client = socket.socketpair()
    with server, client:
        server.setblocking(False)
        with pytest.raises(transfer.TransferFailed) as info:
            transfer.send_buffers(server, Breaking(), b"", 1 << 20)  # type: ignore[arg-type]
        assert info.value.moved == 1000 and info.value.file_changed
        assert client.recv(4096) == b"a" * 1000


class _SslSink:
    """An SSL socket's send: takes everything, or blocks once ``room`` is used up."""

    def __init__(self, room: int = 1 << 40) -> None:
        self.room, self.took = room, 0

    def send(self, data: memoryview) -> int:
        if self.took + len(data) > self.room:
            raise ssl.SSLWantWriteError()
        self.took += len(data)
        return len(data)


def test_ssl_sendfile_tells_a_spent_budget_from_a_full_socket() -> None:
    """The staged head counts against the budget, so file bytes alone never reach it:
    the caller must learn from the call whether SSL blocked, not from the count."""
    pool = BufferPool(256 * 1024, keep=1)
    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, os.urandom(2 * MiB))
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n"
        stage = transfer.Stage(pool.acquire())
        assert stage.put_head(head) == b""
        sink = _SslSink()
        pos, blocked = transfer.ssl_sendfile(sink, stage, fd, 0, 2 * MiB, 512 * 1024)  # type: ignore[arg-type]
        assert not blocked and sink.took == 512 * 1024 and pos == 512 * 1024 - len(head)
        full = _SslSink(room=100 * 1024)
        pos2, blocked = transfer.ssl_sendfile(full, stage, fd, pos, 2 * MiB, 512 * 1024)  # type: ignore[arg-type]
        assert blocked and pos2 == pos  # the chunk stays staged for the same SSL_write
        pos3, blocked = transfer.ssl_sendfile(sink, stage, fd, pos2, 2 * MiB, 8 * MiB)  # type: ignore[arg-type]
        assert not blocked and pos3 == 2 * MiB
    finally:
        os.close(fd)
        os.unlink(path)


def test_ssl_sendfile_stages_no_more_than_the_budget_left() -> None:
    """SSL_write takes a staged chunk whole, so the chunk is cut to what is left of the
    turn's budget (the head counted): a mover with 100 KiB left sends 100 KiB, not a
    whole 256 KiB buffer; and never less than a slice, so it still moves."""
    pool = BufferPool(256 * 1024, keep=1)
    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, os.urandom(MiB))
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n"
        stage = transfer.Stage(pool.acquire())
        assert stage.put_head(head) == b""
        sink = _SslSink()
        pos, blocked = transfer.ssl_sendfile(sink, stage, fd, 0, MiB, 100 * 1024)  # type: ignore[arg-type]
        assert not blocked and sink.took == 100 * 1024 and pos == 100 * 1024 - len(head)
        pos2, _ = transfer.ssl_sendfile(sink, stage, fd, pos, MiB, 1024)  # type: ignore[arg-type]
        assert pos2 - pos == transfer.MIN_SLICE
        pos3, _ = transfer.ssl_sendfile(sink, stage, fd, pos2, MiB, 8 * MiB)  # type: ignore[arg-type]
        assert pos3 == MiB and sink.took == MiB + len(head)
    finally:
        os.close(fd)
        os.unlink(path)


def test_ssl_send_buffers_hands_ssl_a_slice_and_the_same_one_again_after_a_block() -> None:
    """An AIO buffer is 1 MiB: SSL_write takes at most SSL_SLICE of it at a time (the
    turn's budget bounds how many slices), and a write that blocked is offered the very
    same bytes next time, as OpenSSL requires."""
    data = os.urandom(MiB)

    class Body:
        sent = 0

        def view(self) -> memoryview | None:
            return memoryview(data)[self.sent :]

        def advance(self, n: int) -> bool:
            self.sent += n
            return self.sent >= len(data)

    class Recording(_SslSink):
        def __init__(self, room: int = 1 << 40) -> None:
            super().__init__(room)
            self.offered: list[bytes] = []

        def send(self, data: memoryview) -> int:
            self.offered.append(bytes(data))
            return super().send(data)

    body = Body()
    sink = Recording()
    outcome, _, sent = transfer.ssl_send_buffers(sink, body, b"", 300 * 1024)  # type: ignore[arg-type]
    assert outcome is transfer.BLOCKED and sent == 2 * transfer.SSL_SLICE  # budget spent
    assert [len(o) for o in sink.offered] == [transfer.SSL_SLICE] * 2
    full = Recording(room=0)
    outcome, _, sent = transfer.ssl_send_buffers(full, body, b"", MiB)  # type: ignore[arg-type]
    assert outcome is transfer.BLOCKED and sent == 0
    outcome, _, sent = transfer.ssl_send_buffers(sink, body, b"", MiB)  # type: ignore[arg-type]
    assert sink.offered[2] == full.offered[0]  # the retry: the same bytes, the same length
    assert outcome is transfer.DONE and body.sent == MiB
    assert b"".join(sink.offered) == data
