"""aiobind against the real kernel: real files, real io_submit/io_getevents, real eventfds.

Nothing here is mocked. ``tmp_path`` is on ext4 in CI, so O_DIRECT is taken; where a test
needs O_DIRECT it asserts what ``open_direct`` reported, and if a file system ever refuses
O_DIRECT the buffered fallback is what gets checked, never a silent skip.

Kernel behaviour these tests pin down (Linux 6.x, fs/aio.c):

* ``io_setup(nr)`` with ``nr`` above ``fs.aio-max-nr`` fails with EAGAIN, but only up to
  about 4 Mi events: beyond that its ring-size overflow check fires first and it says
  EINVAL. The test therefore asks for ``aio-max-nr + 1`` when that is below the overflow
  bound, and otherwise lowers the sysctl for a moment (root only, restored in ``finally``).
* A bad or write-only fd is refused by ``io_submit`` itself (EBADF, nothing queued); a
  misaligned O_DIRECT read is accepted and *completes* with ``-EINVAL``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiobind import (
    O_DIRECT,
    PAGE_SIZE,
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_SYMLINKS,
    AlignedBuffer,
    BufferPool,
    Completion,
    Context,
    EventFD,
    Read,
    get_comm,
    open_direct,
    openat2,
    parent_death_signal,
    round_up,
    set_comm,
    set_direct,
    set_parent_death_signal,
)

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB
SIZES = [0, 1, 4095, 4096, 4097, MIB + 3]
WAIT = 10.0  # seconds: generous upper bound for any single completion
AIO_MAX_NR = Path("/proc/sys/fs/aio-max-nr")
# fs/aio.c ioctx_alloc: nr is doubled, and 2 * nr * sizeof(struct io_event) above
# 0x10000000 is refused with EINVAL before the aio-max-nr check (EAGAIN) is reached.
IO_SETUP_EINVAL_ABOVE = 0x10000000 // 32 // 2


# -- helpers ---------------------------------------------------------------------------


class WeakBytearray(bytearray):
    """A bytearray that can be weakly referenced (plain bytearray cannot)."""


def make_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed ^ size).randbytes(size)
    path.write_bytes(data)
    return data


def odirect_accepted(path: Path | str) -> bool:
    """Ask the kernel directly whether ``path``'s file system takes O_DIRECT."""
    try:
        fd = os.open(path, os.O_RDONLY | O_DIRECT)
    except OSError as exc:
        assert exc.errno == errno.EINVAL, exc
        return False
    os.close(fd)
    return True


def has_odirect(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)


def reap_one(ctx: Context) -> Completion:
    done = ctx.reap(min_nr=1, max_nr=1, timeout=WAIT)
    assert len(done) == 1, "no completion within the wait bound"
    return done[0]


def reap_all(ctx: Context, count: int) -> list[Completion]:
    out: list[Completion] = []
    deadline = time.monotonic() + WAIT
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} completions"
        out += ctx.reap(min_nr=1, timeout=1.0)
    return out


def aio_rings() -> int:
    """How many AIO ring mappings this process has (each live context maps one)."""
    return Path("/proc/self/maps").read_text().count("/[aio]")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def opened(path: Path | str, flags: int = os.O_RDONLY) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def ctx() -> Iterator[Context]:
    with Context(64) as c:
        yield c
    assert c.closed


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("aio") / "big.bin"
    return path, make_file(path, 4 * MIB, seed=7)


@pytest.fixture
def direct_big(big: tuple[Path, bytes]) -> Iterator[tuple[int, bool, bytes]]:
    path, data = big
    fd, direct = open_direct(path)
    try:
        assert direct == odirect_accepted(path)
        yield fd, direct, data
    finally:
        os.close(fd)


# -- whole-file reads ------------------------------------------------------------------


def read_sequentially(ctx: Context, fd: int, buf: object, chunk: int) -> tuple[bytes, list[int]]:
    """Read ``fd`` chunk by chunk until a short read, which is the end of the file."""
    view = buf.view if isinstance(buf, AlignedBuffer) else memoryview(buf)  # type: ignore[arg-type]
    out = bytearray()
    counts: list[int] = []
    offset = 0
    while True:
        ctx.submit_read(fd, buf, offset, token=offset, length=chunk)
        done = reap_one(ctx)
        assert done.token == offset
        n = done.check()
        counts.append(n)
        out += view[:n]
        offset += n
        if n < chunk:
            return bytes(out), counts


@pytest.mark.parametrize("size", SIZES)
def test_direct_read_is_byte_identical(tmp_path: Path, ctx: Context, size: int) -> None:
    path = tmp_path / "f.bin"
    data = make_file(path, size)
    fd, direct = open_direct(path)
    try:
        assert direct == odirect_accepted(path)
        assert has_odirect(fd) == direct
        buf = AlignedBuffer(CHUNK)
        got, counts = read_sequentially(ctx, fd, buf, CHUNK)
    finally:
        os.close(fd)
    assert got == data
    # whole aligned chunks come back full; the last one comes back short (possibly 0
    # when the size is a chunk multiple) and that is the end of the file
    assert counts[:-1] == [CHUNK] * (size // CHUNK)
    assert counts[-1] == size % CHUNK
    assert ctx.in_flight == 0


@pytest.mark.parametrize("size", SIZES)
def test_buffered_read_is_byte_identical(tmp_path: Path, ctx: Context, size: int) -> None:
    path = tmp_path / "f.bin"
    data = make_file(path, size)
    chunk = 5000  # not a block multiple: buffered reads take any length and buffer
    with opened(path) as fd:
        assert not has_odirect(fd)
        got, counts = read_sequentially(ctx, fd, bytearray(chunk), chunk)
    assert got == data
    assert counts[:-1] == [chunk] * (size // chunk)
    assert counts[-1] == size % chunk


def test_double_buffered_read_across_a_file(tmp_path: Path, ctx: Context) -> None:
    size = MIB + 3
    path = tmp_path / "f.bin"
    data = make_file(path, size)
    fd, _direct = open_direct(path)
    bufs = [AlignedBuffer(CHUNK), AlignedBuffer(CHUNK)]
    nchunks = size // CHUNK + 1
    finished: dict[int, int] = {}
    out = bytearray()
    peak = 0
    try:
        for i in (0, 1):
            ctx.submit_read(fd, bufs[i], i * CHUNK, token=i)
        next_chunk = 2
        for want in range(nchunks):
            peak = max(peak, ctx.in_flight)
            while want not in finished:
                for done in ctx.reap(min_nr=1, timeout=WAIT):
                    finished[done.token] = done.check()  # type: ignore[index]
            n = finished.pop(want)
            out += bufs[want % 2].view[:n]
            # the buffer just consumed is the one the chunk after next goes into
            if next_chunk < nchunks:
                ctx.submit_read(fd, bufs[next_chunk % 2], next_chunk * CHUNK, token=next_chunk)
                next_chunk += 1
    finally:
        os.close(fd)
    assert bytes(out) == data
    assert peak == 2
    assert ctx.in_flight == 0


# -- eventfd + epoll -------------------------------------------------------------------


def test_eventfd_wakes_epoll_on_completion(direct_big: tuple[int, bool, bytes]) -> None:
    fd, _direct, data = direct_big
    buf = AlignedBuffer(4 * KIB)
    with Context(8) as ctx, EventFD() as efd, select.epoll() as ep:
        ep.register(efd.fileno(), select.EPOLLIN)
        assert ep.poll(0) == []
        ctx.submit_read(fd, buf, 8 * KIB, token="one", eventfd=efd)
        assert ep.poll(WAIT) == [(efd.fileno(), select.EPOLLIN)]
        assert efd.read() == 1
        assert efd.read() == 0  # read() reset the counter
        assert ep.poll(0) == []
        [done] = ctx.reap()
        assert done == Completion("one", 4 * KIB)
        assert buf.view[: 4 * KIB] == data[8 * KIB : 12 * KIB]

        # a batch signals once per completion; an int fd works as well as the object
        bufs = [AlignedBuffer(4 * KIB) for _ in range(3)]
        reads = [
            Read(fd, b, i * 4 * KIB, token=i, eventfd=efd.fileno()) for i, b in enumerate(bufs)
        ]
        assert ctx.submit(reads) == 3
        signalled = 0
        deadline = time.monotonic() + WAIT
        while signalled < 3 and time.monotonic() < deadline:
            if ep.poll(1.0):
                signalled += efd.read()
        assert signalled == 3
        assert sorted(c.token for c in reap_all(ctx, 3)) == [0, 1, 2]  # type: ignore[type-var]


# -- many in flight, capacity ----------------------------------------------------------


def test_512_reads_in_flight_batch_submitted(direct_big: tuple[int, bool, bytes]) -> None:
    fd, _direct, data = direct_big
    n, size = 512, 4 * KIB
    order = list(range(n))
    random.Random(1).shuffle(order)  # scattered offsets, in-buffer slots in order
    whole = AlignedBuffer(n * size)
    with Context(n) as ctx:
        reads = [
            Read(fd, whole.view[i * size : (i + 1) * size], order[i] * size, token=("r", i))
            for i in range(n)
        ]
        assert ctx.submit(reads) == n
        assert ctx.in_flight == n

        # past capacity: refused before the kernel, both ways, and nothing is leaked
        with pytest.raises(OSError) as one:
            ctx.submit_read(fd, AlignedBuffer(size), 0, token="extra")
        assert one.value.errno == errno.EAGAIN
        with pytest.raises(OSError) as batch:
            ctx.submit([Read(fd, AlignedBuffer(size), 0, token="extra")])
        assert batch.value.errno == errno.EAGAIN
        assert ctx.in_flight == n

        done = reap_all(ctx, n)
        assert ctx.in_flight == 0
    assert sorted(c.token for c in done) == [("r", i) for i in range(n)]  # type: ignore[type-var]
    assert all(c.result == size for c in done)
    for i in range(n):
        got = whole.view[i * size : (i + 1) * size]
        assert got == data[order[i] * size : (order[i] + 1) * size], i


def test_reap_respects_max_nr(direct_big: tuple[int, bool, bytes]) -> None:
    fd, _direct, _data = direct_big
    with Context(8) as ctx:
        ctx.submit([Read(fd, AlignedBuffer(4 * KIB), 0, token=i) for i in range(5)])
        first = ctx.reap(min_nr=2, max_nr=2, timeout=WAIT)
        assert len(first) == 2
        assert len(first) + len(reap_all(ctx, 3)) == 5


def test_reap_on_empty_ring_returns_at_once(ctx: Context) -> None:
    start = time.perf_counter()
    for _ in range(100):
        assert ctx.reap() == []
        assert ctx.reap(min_nr=0, timeout=None) == []  # min_nr=0: nothing to wait for
    assert time.perf_counter() - start < 0.5


# -- errors ----------------------------------------------------------------------------


def test_context_setup_failure_is_eagain_naming_io_setup() -> None:
    limit = int(AIO_MAX_NR.read_text())
    if limit + 1 <= IO_SETUP_EINVAL_ABOVE:
        # one event over fs.aio-max-nr: the kernel's EAGAIN path, no sysctl change needed
        with pytest.raises(OSError) as exc:
            Context(limit + 1)
    else:
        # aio-max-nr is so high that limit + 1 would hit the ring-size EINVAL check
        # first; lower the limit for a moment instead (root only), and always restore it
        original = AIO_MAX_NR.read_text()
        try:
            AIO_MAX_NR.write_text("1024\n")
            with pytest.raises(OSError) as exc:
                Context(2048)
        finally:
            AIO_MAX_NR.write_text(original)
    assert exc.value.errno == errno.EAGAIN
    assert "io_setup" in str(exc.value)
    assert "aio-max-nr" in str(exc.value)


def test_context_rejects_nonpositive_size() -> None:
    with pytest.raises(ValueError):
        Context(0)


@pytest.mark.parametrize(
    ("where", "length"),
    [("offset", 4 * KIB), ("address", 4 * KIB), ("length", 100)],
)
def test_misaligned_direct_read_completes_with_einval(
    direct_big: tuple[int, bool, bytes], ctx: Context, where: str, length: int
) -> None:
    fd, direct, data = direct_big
    buf = AlignedBuffer(8 * KIB)
    target = buf.view[1:] if where == "address" else buf
    offset = 1 if where == "offset" else 0
    ctx.submit_read(fd, target, offset, token=where, length=length)  # accepted at submit
    done = reap_one(ctx)
    assert done.token == where
    if not direct:  # the file system refused O_DIRECT: a buffered read has no alignment
        assert done.check() == length
        return
    assert done.result == -errno.EINVAL
    assert not done.ok
    assert done.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        done.check()
    assert exc.value.errno == errno.EINVAL
    # an aligned read on the same fd still works afterwards
    ctx.submit_read(fd, buf, 4 * KIB, token="ok", length=4 * KIB)
    assert reap_one(ctx).check() == 4 * KIB
    assert buf.view[: 4 * KIB] == data[4 * KIB : 8 * KIB]


def test_bad_fd_is_ebadf_at_submit(tmp_path: Path, ctx: Context) -> None:
    path = tmp_path / "f.bin"
    make_file(path, 8 * KIB)
    closed = os.open(path, os.O_RDONLY)
    os.close(closed)
    buf = AlignedBuffer(4 * KIB)
    with pytest.raises(OSError) as exc:
        ctx.submit_read(closed, buf, 0, token="bad")
    assert exc.value.errno == errno.EBADF
    assert "io_submit" in str(exc.value)
    assert ctx.in_flight == 0
    assert ctx.reap() == []  # nothing was queued, so no completion ever comes

    with opened(path, os.O_WRONLY) as wfd:  # open, but not for reading: also EBADF
        with pytest.raises(OSError) as exc:
            ctx.submit_read(wfd, buf, 0, token="wronly")
        assert exc.value.errno == errno.EBADF

    with opened(path) as fd:
        closed = os.dup(fd)  # a number that is certainly free right now
        os.close(closed)
        # first read bad: io_submit accepts nothing and the whole batch fails
        with pytest.raises(OSError) as exc:
            ctx.submit([Read(closed, buf, 0, "bad"), Read(fd, bytearray(10), 0, "good")])
        assert exc.value.errno == errno.EBADF
        assert ctx.in_flight == 0
        # bad read later in the batch: the kernel accepts the prefix and says how many
        assert ctx.submit([Read(fd, bytearray(10), 0, "good"), Read(closed, buf, 0, "bad")]) == 1
        assert ctx.in_flight == 1
        assert [c.token for c in reap_all(ctx, 1)] == ["good"]
    assert ctx.in_flight == 0


def test_completion_check() -> None:
    assert Completion("t", 7).check() == 7
    assert Completion("t", 0).ok
    assert Completion("t", 0).errno == 0
    failed = Completion("t", -errno.EIO)
    assert not failed.ok
    assert failed.errno == errno.EIO
    with pytest.raises(OSError) as exc:
        failed.check()
    assert exc.value.errno == errno.EIO


def test_bad_arguments_leak_no_slot(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    make_file(path, 100)
    gone = EventFD()
    gone.close()
    with Context(4) as ctx, opened(path) as fd:
        with pytest.raises(ValueError):
            ctx.submit_read(fd, bytearray(10), 0, token="t", length=11)
        with pytest.raises(BufferError):  # the kernel must be able to write into it
            ctx.submit_read(fd, b"read-only", 0, token="t")
        with pytest.raises(ValueError):
            ctx.submit_read(fd, bytearray(10), 0, token="t", eventfd=gone)
        with pytest.raises(OverflowError):
            ctx.submit_read(fd, bytearray(10), 1 << 70, token="t")
        with pytest.raises(ValueError):
            ctx.submit([Read(fd, bytearray(10), 0, "a"), Read(fd, bytearray(1), 0, "b", 5)])
        with pytest.raises(OverflowError):
            ctx.submit([Read(fd, bytearray(10), 0, "a"), Read(fd, bytearray(1), 1 << 70, "b")])
        assert ctx.in_flight == 0
        start = time.monotonic()
    assert time.monotonic() - start < 1.0  # close() had no phantom reads to wait for


# -- buffer lifetime, closing ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["aligned", "bytearray"])
def test_buffer_survives_owner_dropped_before_reap(tmp_path: Path, ctx: Context, kind: str) -> None:
    path = tmp_path / "f.bin"
    data = make_file(path, 64 * KIB)
    if kind == "aligned":
        fd, _direct = open_direct(path)
        owner = AlignedBuffer(64 * KIB)
        ref = weakref.ref(owner._map)  # the memory the kernel writes into
    else:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        owner = WeakBytearray(64 * KIB)  # type: ignore[assignment]
        ref = weakref.ref(owner)  # type: ignore[arg-type]
    try:
        ctx.submit_read(fd, owner, 0, token=kind)
        del owner
        gc.collect()
        memory = ref()
        assert memory is not None, "the context let the kernel's buffer be freed"
        done = reap_one(ctx)
        assert done.token == kind
        assert memory[: done.check()] == data
        del memory
        gc.collect()
        assert ref() is None, "the context kept the buffer after reaping it"
    finally:
        os.close(fd)


def test_aligned_buffer_cannot_be_unmapped_under_the_kernel(
    direct_big: tuple[int, bool, bytes], ctx: Context
) -> None:
    fd, _direct, data = direct_big
    buf = AlignedBuffer(4 * KIB)
    keep = buf._map
    ctx.submit_read(fd, buf, 0, token="busy")
    with pytest.raises(BufferError):  # the slot's pin is an export of the mapping
        buf.close()
    assert not keep.closed
    assert reap_one(ctx).check() == 4 * KIB
    assert keep[: 4 * KIB] == data[: 4 * KIB]
    buf.close()  # once reaped, closing works
    assert keep.closed


def test_close_with_reads_in_flight_leaks_nothing(big: tuple[Path, bytes]) -> None:
    path, _data = big
    gc.collect()
    fds_before, rings_before = open_fds(), aio_rings()
    fd, _direct = open_direct(path)
    whole = AlignedBuffer(4 * MIB)
    ref = weakref.ref(whole._map)
    ctx = Context(64)
    assert aio_rings() == rings_before + 1
    n = 64
    reads = [
        Read(fd, whole.view[i * CHUNK : (i + 1) * CHUNK], i * CHUNK, token=i) for i in range(n)
    ]
    assert ctx.submit(reads) == n
    del reads, whole
    assert ctx.in_flight == n
    ctx.close()
    assert ctx.closed
    assert ctx.in_flight == 0
    ctx.close()  # idempotent
    with pytest.raises(ValueError):
        ctx.reap()
    with pytest.raises(ValueError):
        ctx.submit_read(fd, AlignedBuffer(4 * KIB), 0, token="late")
    with pytest.raises(ValueError):
        ctx.submit([Read(fd, AlignedBuffer(4 * KIB), 0, token="late")])
    os.close(fd)
    gc.collect()
    assert ref() is None  # the pinned buffers were let go
    assert open_fds() == fds_before
    assert aio_rings() == rings_before


def test_context_manager(direct_big: tuple[int, bool, bytes]) -> None:
    fd, _direct, _data = direct_big
    with Context(8) as ctx:
        assert isinstance(ctx, Context)
        assert not ctx.closed
        ctx.submit_read(fd, AlignedBuffer(4 * KIB), 0, token="left in flight")
        assert ctx.in_flight == 1
    assert ctx.closed
    assert ctx.in_flight == 0

    with pytest.raises(RuntimeError), Context(8) as ctx2:
        ctx2.submit_read(fd, AlignedBuffer(4 * KIB), 0, token="x")
        raise RuntimeError("boom")
    assert ctx2.closed
    assert ctx2.in_flight == 0


# -- buffers ---------------------------------------------------------------------------


def test_aligned_buffer() -> None:
    buf = AlignedBuffer(1)
    assert buf.size == len(buf) == PAGE_SIZE
    assert buf.address % PAGE_SIZE == 0
    assert round_up(PAGE_SIZE + 1) == 2 * PAGE_SIZE
    with pytest.raises(ValueError):
        AlignedBuffer(0)
    buf.close()
    buf.close()  # idempotent


def test_buffer_pool_reuse_and_keep_bound() -> None:
    pool = BufferPool(10 * KIB, keep=2)
    assert pool.size == round_up(10 * KIB)
    first = pool.acquire()
    assert first.size == pool.size
    assert pool.outstanding == 1
    pool.release(first)
    assert pool.idle == 1
    assert pool.acquire() is first  # reused, not remapped
    pool.release(first)

    bufs = [pool.acquire() for _ in range(5)]
    assert len({id(b) for b in bufs}) == 5
    assert first in bufs
    assert pool.outstanding == 5
    assert pool.idle == 0
    for b in bufs:
        pool.release(b)
    assert pool.outstanding == 0
    assert pool.idle == 2  # the keep bound: the rest were unmapped
    assert sum(b._map.closed for b in bufs) == 3
    pool.close()
    assert pool.idle == 0
    assert all(b._map.closed for b in bufs)


# -- opening files ---------------------------------------------------------------------


def test_open_direct_on_tmpfs_matches_kernel(ctx: Context) -> None:
    # tmpfs takes O_DIRECT since Linux 6.6; older kernels refuse it. Either is fine as
    # long as open_direct reports what the kernel did and the fd reads correctly.
    shm = Path("/dev/shm")
    path = shm / f"aiobind-test-{os.getpid()}.bin"
    try:
        data = make_file(path, 10 * KIB)
        fd, direct = open_direct(path)
        try:
            assert direct == odirect_accepted(path)
            assert has_odirect(fd) == direct
            got, _counts = read_sequentially(ctx, fd, AlignedBuffer(CHUNK), CHUNK)
            assert got == data
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)


def test_open_direct_falls_back_where_refused(ctx: Context) -> None:
    # procfs never sets FMODE_CAN_ODIRECT, so it refuses O_DIRECT with EINVAL
    path = "/proc/version"
    assert not odirect_accepted(path)
    fd, direct = open_direct(path)
    try:
        assert direct is False
        assert not has_odirect(fd)
        assert set_direct(fd) is False
        ctx.submit_read(fd, bytearray(4096), 0, token="proc")
        assert reap_one(ctx).check() == len(Path(path).read_bytes())
    finally:
        os.close(fd)


def test_open_direct_and_set_direct_on_ext4(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    make_file(path, 10)
    expected = odirect_accepted(path)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, direct = open_direct("f.bin", dir_fd=dfd)
        os.close(fd)
        assert direct == expected
    finally:
        os.close(dfd)
    with opened(path) as fd:
        assert not has_odirect(fd)
        assert set_direct(fd) == expected
        assert has_odirect(fd) == expected
    with pytest.raises(FileNotFoundError):  # errors other than EINVAL propagate
        open_direct(tmp_path / "missing")


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_bytes(b"inside")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    (root / "in-link").symlink_to("sub/file.txt")
    (root / "rel-escape").symlink_to("../outside.txt")
    (root / "abs-escape").symlink_to(tmp_path / "outside.txt")
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield dfd, root
    finally:
        os.close(dfd)


def read_fd(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "path", ["../outside.txt", "sub/../../outside.txt", "/etc/hostname", "rel-escape", "abs-escape"]
)
def test_openat2_beneath_refuses_escapes(tree: tuple[int, Path], path: str) -> None:
    dfd, _root = tree
    with pytest.raises(OSError) as exc:
        openat2(dfd, path, os.O_RDONLY | os.O_CLOEXEC, RESOLVE_BENEATH)
    assert exc.value.errno == errno.EXDEV
    assert "openat2" in str(exc.value)


def test_openat2_beneath_accepts_in_tree_paths(tree: tuple[int, Path]) -> None:
    dfd, _root = tree
    flags = os.O_RDONLY | os.O_CLOEXEC
    for path in ("sub/file.txt", "sub/../sub/file.txt", "in-link", b"sub/file.txt"):
        assert read_fd(openat2(dfd, path, flags, RESOLVE_BENEATH)) == b"inside"
    # other resolve flags reach the kernel too
    with pytest.raises(OSError) as exc:
        openat2(dfd, "in-link", flags, RESOLVE_NO_SYMLINKS)
    assert exc.value.errno == errno.ELOOP
    assert read_fd(openat2(dfd, "/sub/file.txt", flags, RESOLVE_IN_ROOT)) == b"inside"
    with pytest.raises(FileNotFoundError):
        openat2(dfd, "sub/nope", flags, RESOLVE_BENEATH)
    with pytest.raises(ValueError):
        openat2(dfd, "sub/\0file.txt", flags, RESOLVE_BENEATH)


def test_pool_release_with_a_live_view_does_not_raise() -> None:
    # A connection torn down mid-send may still hold a slice of its buffer in a frame:
    # giving the buffer back must not fail (the mapping goes with the last view).
    pool = BufferPool(4096, keep=0)
    buf = pool.acquire()
    view = buf.view[10:20]
    pool.release(buf)
    assert pool.outstanding == 0 and pool.idle == 0
    assert len(view) == 10
    view.release()


# -- prctl: parent-death signal and comm -----------------------------------------------

# Run in a fresh interpreter so that no fork happens in the (possibly threaded) test
# process. A middle process forks a child, which sets its parent-death signal; the middle
# process then exits, and the child reports what it got.
_PDEATHSIG_SCRIPT = r"""
import os, select, signal, sys
import aiobind

ready_r, ready_w = os.pipe()
out_r, out_w = os.pipe()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
middle = os.fork()
if middle == 0:
    aiobind.set_parent_death_signal(signal.SIGUSR2)  # not inherited by its child
    me = os.getpid()
    if os.fork() == 0:
        inherited = aiobind.parent_death_signal()
        aiobind.set_parent_death_signal(signal.SIGUSR1)
        os.write(out_w, f"inherited={inherited} set={aiobind.parent_death_signal()}\n".encode())
        os.write(ready_w, b"x")
        info = signal.sigtimedwait({signal.SIGUSR1}, 10)
        got = info.si_signo if info else 0
        os.write(out_w, f"got={got} reparented={os.getppid() != me}\n".encode())
        os._exit(0)
    os.read(ready_r, 1)
    os._exit(0)
os.close(out_w)
os.waitpid(middle, 0)
out = b""
while select.select([out_r], [], [], 10)[0]:
    chunk = os.read(out_r, 100)
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode())
"""


def test_parent_death_signal_reaches_the_child_when_its_parent_dies() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PDEATHSIG_SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == f"inherited=0 set={int(signal.SIGUSR1)}"
    assert second == f"got={int(signal.SIGUSR1)} reparented=True"


def test_parent_death_signal_round_trip_and_bad_signal() -> None:
    before = parent_death_signal()
    try:
        set_parent_death_signal(signal.SIGTERM)
        assert parent_death_signal() == signal.SIGTERM
        set_parent_death_signal(0)
        assert parent_death_signal() == 0
        with pytest.raises(OSError) as exc:
            set_parent_death_signal(1000)
        assert exc.value.errno == errno.EINVAL
        assert "PR_SET_PDEATHSIG" in str(exc.value)
    finally:
        set_parent_death_signal(before)


def test_comm_is_per_thread_and_cut_to_15_bytes() -> None:
    process_comm = Path("/proc/self/comm").read_text().strip()
    seen: dict[str, str] = {}

    def rename() -> None:
        tid = threading.get_native_id()
        set_comm("aws-a-rather-long-name")
        seen["get"] = get_comm()
        seen["proc"] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        with pytest.raises(ValueError):
            set_comm("a\0b")
        set_comm(b"bytes")
        seen["bytes"] = get_comm()

    t = threading.Thread(target=rename)
    t.start()
    t.join(10)
    assert seen == {"get": "aws-a-rather-lo", "proc": "aws-a-rather-lo", "bytes": "bytes"}
    # the main thread's comm, the process's, did not change
    assert get_comm() == process_comm == Path("/proc/self/comm").read_text().strip()
