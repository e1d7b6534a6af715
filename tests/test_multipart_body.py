"""aws.multipart alone: the segments' bytes, MultipartBody on a real loop with real AIO
(O_DIRECT and buffered), and transfer.send_parts over a real socketpair with a small
budget, so every part is cut short and resumed."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aws import transfer
from aws.aio import AioReader
from aws.loop import Loop
from aws.multipart import Cursor, MultipartBody, segments
from tests.test_aio import CHUNK, Owner, disk, files, loop, new_reader, settled, wait_ready

__all__ = ["disk", "files", "loop"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(60)

RANGES = [(0, 1), (4095, 4097), (CHUNK - 10, 3 * CHUNK + 7), (200_000, 200_100)]


def expected(boundary: bytes, data: bytes, ranges: list[tuple[int, int]], ctype: bytes) -> bytes:
    out = b""
    for i, (start, end) in enumerate(ranges):
        out += b"\r\n" if i else b""
        out += b"--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (
            boundary,
            ctype,
            start,
            end - 1,
            len(data),
        )
        out += data[start:end]
    return out + b"\r\n--%s--\r\n" % boundary


def test_segments_describe_the_exact_body() -> None:
    data = bytes(range(256)) * 1000
    boundary, segs, length = segments(RANGES, len(data), b"text/plain")
    assert len(boundary) == 24 and boundary != segments(RANGES, len(data), b"x")[0]
    body = b"".join(head + data[start:stop] for head, start, stop in segs)
    assert body == expected(boundary, data, RANGES, b"text/plain")
    assert length == len(body)
    assert segs[-1][1:] == (0, 0)  # the closing delimiter has no file bytes


@pytest.fixture
def reader(loop: Loop) -> Iterator[AioReader]:
    r = new_reader(loop, keep=4)
    yield r
    settled(loop, r)
    r.close()


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("step", [1_000, 1 << 20])
def test_multipart_body_yields_every_part_in_order(
    loop: Loop,
    reader: AioReader,
    files: Callable[..., tuple[int, bytes]],
    direct: bool,
    step: int,
) -> None:
    fd, data = files(300_000, direct=direct)
    boundary, segs, length = segments(RANGES, len(data), b"application/octet-stream")
    owner = Owner()
    body = MultipartBody(reader, owner, fd, segs, depth=2)
    out = bytearray()
    while True:
        view = body.view()
        if view is None:
            wait_ready(loop, owner)
            continue
        n = min(len(view), step)  # a socket that takes part of what it is offered
        out += view[:n]
        view.release()
        assert reader.pool.outstanding <= 2
        if body.advance(n):
            break
    body.close()
    assert bytes(out) == expected(boundary, data, RANGES, b"application/octet-stream")
    assert len(out) == length


def test_closing_a_multipart_body_midway_gives_its_buffers_back(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]]
) -> None:
    fd, data = files(300_000)
    _, segs, _ = segments(RANGES, len(data), b"x")
    body = MultipartBody(reader, Owner(), fd, segs, depth=3)
    view = body.view()  # the first delimiter; the first part's reads are in flight
    assert view is not None
    view.release()
    body.close()  # settled() in the fixture checks every buffer came back


@pytest.mark.parametrize("budget", [700, 1 << 20])
def test_send_parts_resumes_across_turns(tmp_path: Path, budget: int) -> None:
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        boundary, segs, length = segments(RANGES, len(data), b"x")
        cursor = Cursor(segs)
        got = bytearray()
        turns = 0
        while True:
            outcome, sent = transfer.send_parts(a, fd, cursor, budget)
            turns += 1
            assert sent <= max(budget, len(segs[0][0])) or outcome is transfer.DONE
            b.setblocking(False)
            try:
                while chunk := b.recv(1 << 20):
                    got += chunk
            except BlockingIOError:
                pass
            if outcome is transfer.DONE:
                break
            assert turns < 10_000
        assert bytes(got) == expected(boundary, data, RANGES, b"x")
        assert len(got) == length
        assert turns > 1 or budget > length
    finally:
        a.close()
        b.close()
        os.close(fd)
