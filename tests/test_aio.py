"""aws.aio alone: AioReader and DynamicBody on a real Loop, real files, real libaio and a
real eventfd. The only stand-in is the owner (the connection), which records when the
body says its next bytes are ready.

Files live under /var/tmp, a real disk here, so the O_DIRECT path is the one exercised
(``open_direct`` falls back to buffered reads where a file system refuses it, and the
"buffered" runs cover that path on purpose).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import aiobind
from aws.aio import ALIGN, AioReader, Chunk, DynamicBody, FileChanged
from aws.loop import Loop

pytestmark = pytest.mark.timeout(60)

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB
WAIT = 10.0  # seconds: generous bound for any set of completions to arrive
SIZES = [0, 1, 4095, 4096, 4097, 3 * MIB + 5]


class Owner:
    """The connection's side of a body: counts the "next bytes are ready" calls."""

    def __init__(self) -> None:
        self.ready = 0

    def on_body_ready(self) -> None:
        self.ready += 1


class OrderedReader(AioReader):
    """Records the order in which chunks are asked for and actually submitted."""

    def __init__(self, *args: int, loop: Loop) -> None:
        self.asked: list[tuple[int, int]] = []
        self.submitted: list[tuple[int, int]] = []
        super().__init__(loop, *args)

    def submit(self, chunk: Chunk, fd: int) -> None:
        self.asked.append((fd, chunk.offset))
        super().submit(chunk, fd)

    def _submit(self, chunk: Chunk, fd: int) -> bool:
        accepted = super()._submit(chunk, fd)
        if accepted:
            self.submitted.append((fd, chunk.offset))
        return accepted


@pytest.fixture(scope="module")
def disk() -> Iterator[Path]:
    base = Path("/var/tmp") if os.path.isdir("/var/tmp") else Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix="aws-test-aio-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def new_reader(loop: Loop, maxevents: int = 64, chunk: int = CHUNK, keep: int = 8) -> AioReader:
    return AioReader(loop, maxevents, chunk, keep)


@pytest.fixture
def reader(loop: Loop) -> Iterator[AioReader]:
    r = new_reader(loop)
    yield r
    settled(loop, r)
    r.close()


@pytest.fixture
def files(disk: Path) -> Iterator[Callable[..., tuple[int, bytes]]]:
    """``make(size, direct=True)``: a file of ``size`` distinct bytes, opened; closed and
    removed after the test."""
    opened: list[tuple[int, Path]] = []

    def make(size: int, direct: bool = True, name: str = "") -> tuple[int, bytes]:
        path = disk / f"{name or 'f'}-{size}-{len(opened)}.bin"
        data = random.Random(size).randbytes(size)
        path.write_bytes(data)
        if direct:
            fd, _ = aiobind.open_direct(path)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        opened.append((fd, path))
        return fd, data

    yield make
    for fd, path in opened:
        os.close(fd)
        path.unlink(missing_ok=True)


def pump(loop: Loop, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, "the AIO completions did not arrive in time"
        loop.run_once()


def settled(loop: Loop, reader: AioReader) -> None:
    """Every read reaped, nothing queued, every buffer back in the pool."""
    pump(loop, lambda: reader.ctx.in_flight == 0 and not reader.backlog)
    assert reader.pool.outstanding == 0


def wait_ready(loop: Loop, owner: Owner) -> None:
    seen = owner.ready
    pump(loop, lambda: owner.ready > seen)


def read_all(
    loop: Loop,
    body: DynamicBody,
    owner: Owner,
    out: bytearray | None = None,
    each_step: Callable[[], None] | None = None,
) -> bytes:
    """What the connection does: send each view whole, wait for on_body_ready on None.

    ``out`` collects the bytes as they come (for a caller that expects an exception).
    """
    out = bytearray() if out is None else out
    while True:
        assert len(body.chunks) <= body.depth
        if each_step is not None:
            each_step()
        view = body.view()
        if view is None:
            wait_ready(loop, owner)
            continue
        n = len(view)
        assert n > 0
        out += view
        view.release()  # as the connection does: no view may outlive the buffer's return
        if body.advance(n):
            return bytes(out)


# -- whole files and ranges --------------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("size", SIZES)
def test_a_body_is_the_file(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]], size: int, direct: bool
) -> None:
    fd, data = files(size, direct=direct)
    owner = Owner()
    body = DynamicBody(reader, owner, fd, 0, size, depth=2)
    if size == 0:
        # Nothing to read: no buffer taken, nothing submitted (the connection sends no body).
        assert reader.pool.outstanding == 0 and reader.ctx.in_flight == 0
        assert not body.chunks
    else:
        assert read_all(loop, body, owner) == data
        assert owner.ready >= 1
    body.close()


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (1, 2),
        (4095, 4097),  # across a page boundary
        (4096, 4096 + CHUNK),  # one aligned chunk exactly
        (CHUNK - 1, CHUNK + 1),  # across a chunk boundary
        (4097, 3 * MIB + 5),  # unaligned start, to the end of the file
        (3 * MIB + 4, 3 * MIB + 5),  # the last byte
        (12345, 2 * MIB + 7),  # stops short of the end of the file
    ],
)
def test_a_range_body_is_those_bytes(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]], start: int, end: int
) -> None:
    fd, data = files(3 * MIB + 5)
    owner = Owner()
    body = DynamicBody(reader, owner, fd, start, end)
    assert body.next_offset % ALIGN == 0 or body.next_offset >= end
    assert read_all(loop, body, owner) == data[start:end]
    body.close()


@pytest.mark.parametrize("chunk", [4096, 10_000, MIB])
def test_chunk_sizes_round_up_to_pages(
    loop: Loop, files: Callable[..., tuple[int, bytes]], chunk: int
) -> None:
    r = new_reader(loop, chunk=chunk)
    try:
        assert r.chunk_size % aiobind.PAGE_SIZE == 0 and r.chunk_size >= chunk
        fd, data = files(MIB + 4097)
        owner = Owner()
        body = DynamicBody(r, owner, fd, 0, len(data), depth=3)
        assert read_all(loop, body, owner) == data
        body.close()
        settled(loop, r)
    finally:
        r.close()


# -- bounded memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_at_most_depth_buffers_in_flight(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]], depth: int
) -> None:
    fd, data = files(3 * MIB + 5)
    owner = Owner()
    body = DynamicBody(reader, owner, fd, 0, len(data), depth=depth)
    # The first reads are all submitted at once: the read-ahead is full from the start.
    assert reader.ctx.in_flight == depth
    assert reader.pool.outstanding == depth
    size = reader.chunk_size

    def check() -> None:
        # Never more than depth, and never less while there is that much left to read:
        # each sent chunk's buffer goes straight into the next read.
        assert reader.ctx.in_flight <= depth
        assert reader.pool.outstanding == len(body.chunks)
        left = -(-(len(data) - body.sent_to) // size)
        assert len(body.chunks) == min(depth, left)

    out = read_all(loop, body, owner, each_step=check)
    assert out == data
    body.close()
    assert reader.pool.outstanding == 0
    # buffers are reused, not mapped per chunk
    assert reader.pool.idle == depth


def test_owner_is_told_only_about_the_head_chunk(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]]
) -> None:
    fd, data = files(4 * CHUNK)
    owner = Owner()
    body = DynamicBody(reader, owner, fd, 0, len(data), depth=4)
    pump(loop, lambda: reader.ctx.in_flight == 0)
    # four chunks read, but only the first one was waited for
    assert owner.ready == 1
    assert read_all(loop, body, owner) == data
    assert owner.ready == 1  # the rest were ready by the time they became the head
    body.close()


# -- close -------------------------------------------------------------------------------------


def test_close_with_reads_in_flight_returns_every_buffer_once_reaped(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]]
) -> None:
    fd, data = files(3 * MIB + 5)
    owner = Owner()
    body = DynamicBody(reader, owner, fd, 0, len(data), depth=4)
    assert reader.ctx.in_flight == 4
    body.close()
    # The kernel may still be writing into them: nothing is given back yet.
    assert reader.pool.outstanding == 4
    assert not body.chunks
    pump(loop, lambda: reader.ctx.in_flight == 0)
    assert reader.pool.outstanding == 0
    assert reader.pool.idle == 4
    assert owner.ready == 0  # a closed body tells no one


def test_close_after_some_reads_completed(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]]
) -> None:
    fd, data = files(3 * MIB + 5)
    owner = Owner()
    body = DynamicBody(reader, owner, fd, 0, len(data), depth=3)
    wait_ready(loop, owner)
    view = body.view()
    assert view is not None
    assert view == data[: len(view)]
    n = len(view)
    view.release()
    body.advance(n)  # one chunk sent: its buffer back, the next read submitted
    assert reader.pool.outstanding == 3
    reaped_before_close = sum(1 for c in body.chunks if c.result is not None)
    body.close()
    assert reader.pool.outstanding == 3 - reaped_before_close
    pump(loop, lambda: reader.ctx.in_flight == 0)
    assert reader.pool.outstanding == 0


def test_close_of_a_body_waiting_in_the_backlog(
    loop: Loop, files: Callable[..., tuple[int, bytes]]
) -> None:
    r = new_reader(loop, maxevents=2)
    try:
        fd, data = files(MIB)
        first, second = Owner(), Owner()
        a = DynamicBody(r, first, fd, 0, len(data), depth=2)
        b = DynamicBody(r, second, fd, 0, len(data), depth=2)
        assert r.ctx.in_flight == 2
        assert len(r.backlog) == 2  # b's reads wait for a slot
        b.close()
        assert r.pool.outstanding == 4  # queued chunks are freed when the queue reaches them
        pump(loop, lambda: not r.backlog and r.ctx.in_flight == 0)
        assert r.pool.outstanding == 2  # a's, read and waiting to be sent
        assert second.ready == 0
        a.close()
        assert r.pool.outstanding == 0
    finally:
        r.close()


def test_reader_close_unregisters_and_closes_the_eventfd(loop: Loop) -> None:
    r = new_reader(loop)
    efd = r.efd_fd
    assert loop.handlers[efd] is r
    r.close()
    assert efd not in loop.handlers
    assert r.ctx.closed
    with pytest.raises(OSError):
        os.fstat(efd)


# -- the file changed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now", [CHUNK, CHUNK + 1, CHUNK + 4096, 2 * CHUNK - 1, 0], ids=lambda n: f"shrunk-to-{n}"
)
def test_a_file_that_shrank_raises_file_changed(
    loop: Loop, reader: AioReader, files: Callable[..., tuple[int, bytes]], now: int
) -> None:
    promised = 3 * CHUNK
    fd, data = files(promised)
    # The head promised ``promised`` bytes; the file is cut before the body reads it.
    os.truncate(os.readlink(f"/proc/self/fd/{fd}"), now)
    owner = Owner()
    body = DynamicBody(reader, owner, fd, 0, promised, depth=2)
    got = bytearray()
    with pytest.raises(FileChanged):
        read_all(loop, body, owner, out=got)
    # Whole chunks before the cut were delivered, and nothing past it.
    assert len(got) == now // CHUNK * CHUNK
    assert bytes(got) == data[: len(got)]
    body.close()


def test_a_read_that_cannot_start_fails_from_the_loop(
    loop: Loop, reader: AioReader, disk: Path
) -> None:
    path = disk / "write-only.bin"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # io_submit refuses it: EBADF
    try:
        owner = Owner()
        body = DynamicBody(reader, owner, fd, 0, 100)
        assert owner.ready == 0  # not from inside the constructor
        assert body.view() is None
        pump(loop, lambda: owner.ready > 0)
        with pytest.raises(OSError) as info:
            body.view()
        assert info.value.errno == errno.EBADF
        body.close()
        assert reader.pool.outstanding == 0
    finally:
        os.close(fd)
        path.unlink()


# -- a full context: io_submit's EAGAIN --------------------------------------------------------


def test_backlog_completes_everything_in_order(
    loop: Loop, files: Callable[..., tuple[int, bytes]]
) -> None:
    r = OrderedReader(2, CHUNK, 16, loop=loop)  # two slots for six bodies
    try:
        bodies = []
        for i in range(6):
            fd, data = files(5 * CHUNK + 3 + i, name=f"b{i}")
            owner = Owner()
            bodies.append((DynamicBody(r, owner, fd, 0, len(data), depth=2), owner, data))
        assert r.ctx.in_flight == 2
        assert len(r.backlog) == 10
        # Round-robin, as connections do: a few bytes of each at a time.
        outs = [bytearray() for _ in bodies]
        finished = [False] * len(bodies)
        deadline = time.monotonic() + WAIT
        while not all(finished):
            assert time.monotonic() < deadline
            progressed = False
            for i, (body, _owner, _data) in enumerate(bodies):
                if finished[i]:
                    continue
                view = body.view()
                if view is None:
                    continue
                progressed = True
                outs[i] += view
                n = len(view)
                view.release()
                finished[i] = body.advance(n)
            if not progressed:
                loop.run_once()
            assert r.ctx.in_flight <= 2
        for (body, owner, data), out in zip(bodies, outs, strict=True):
            assert bytes(out) == data
            assert owner.ready >= 1
            body.close()
        # Nothing lost, nothing twice, and the queue never reordered the reads.
        assert r.submitted == r.asked
        assert len(r.asked) == 6 * 6
        settled(loop, r)
    finally:
        r.close()
