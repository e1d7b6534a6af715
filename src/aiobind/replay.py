"""Answer a repeated request again in one call: recv, compare, send, sendfile, in C.

A keep-alive client of a file server often sends the very same request bytes again (a
benchmark, a poller, a health check, a browser revalidating). When the server knows
the answer to those bytes has not changed, :meth:`Replay.serve` makes the same three
system calls the server's Python path would (``recv``; ``send`` of the head with
``MSG_MORE``; ``sendfile`` of the body) without returning to the interpreter between
them. :meth:`Replay.serve_read` does the same for a body read by native AIO (``recv``;
``io_submit`` of a buffered read with its completion signalled on the caller's eventfd;
``io_getevents``; one ``sendmsg`` of head and body), through an AIO context of its own
so that it never reaps another reader's completions. Anything else it received is left
in :meth:`Replay.data` for the caller to handle as usual.

    replay = Replay()
    outcome = replay.serve(sock.fileno(), last_request, head, file_fd, 0, size)
    if outcome is OTHER:
        handle(replay.data())
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Final

from aiobind._native import ffi, lib
from aiobind.buffers import AlignedBuffer

# What :meth:`Replay.serve` did (a negative number is ``-errno`` of the recv: -EAGAIN
# when nothing had arrived).
CLOSED: Final = 0  # the peer shut down its side: nothing was received
OTHER: Final = 1  # other bytes arrived: :meth:`Replay.data`; nothing was sent
SERVED: Final = 2  # answered: every head and file byte went out
BLOCKED: Final = 3  # the socket filled part way: see ``head_sent`` and ``file_pos``
FAILED: Final = 4  # send or sendfile failed with ``errno``
SHRANK: Final = 5  # the file ended before ``stop``

# serve_tls: the largest head, and the first SSL_read's size (what follows it in the
# same record comes after, so that ``capacity`` must exceed this by a record, 16 KiB).
HEAD_ROOM: Final = 16 * 1024
TLS_FIRST_READ: Final = 32 * 1024

UNCOUNTED: Final[Any] = ffi.NULL  # ``cells`` for a call whose answer nobody counts


class Replay:
    """A receive buffer and the figures of the last call. One per thread of work (a
    worker's loop): :meth:`data` reads what the last call received. ``read_size`` is the
    largest body :meth:`serve_read` reads (its buffer and AIO context are made at the
    first call)."""

    __slots__ = (
        "_buf", "_cap", "_cb", "_ctx", "_data", "_out", "_sealed", "_slot", "_tally",
        "read_size",
    )  # fmt: skip

    def __init__(self, capacity: int = 64 * 1024, read_size: int = 64 * 1024) -> None:
        self._cap = capacity
        self._buf = ffi.new("char[]", capacity)
        self._out = ffi.new("long long[4]")
        self.read_size = read_size
        self._ctx = ffi.NULL
        self._cb = ffi.NULL
        self._data: AlignedBuffer | None = None
        self._sealed: Any = None  # serve_tls's head and body, made at its first call
        self._tally = ffi.new("struct aiob_tally *")  # counts nothing until tally_into
        self._slot: object = None

    def tally_into(
        self, cells: memoryview, hist: int, sum_us: int, bounds: Sequence[float]
    ) -> None:
        """Count every answered call in ``cells`` (64-bit counters this thread alone
        writes, e.g. a shared-memory metrics slot): the three cells a call names (see
        :meth:`cells`), a duration histogram from cell ``hist`` (a bucket per bound,
        ``<=``, then one for the rest) and the microseconds summed at ``sum_us``."""
        if cells.itemsize != 8 or not 0 <= hist < hist + len(bounds) < len(cells):
            raise ValueError("cells must be 64-bit and hold the histogram")
        if len(bounds) > len(self._tally.bounds) or not 0 <= sum_us < len(cells):
            raise ValueError("too many histogram bounds, or no room for the sum")
        self._slot = cells  # kept alive: the C side writes through this pointer
        self._tally.cells = ffi.cast("unsigned long long *", ffi.from_buffer(cells))
        self._tally.hist = hist
        self._tally.sum_us = sum_us
        self._tally.nbounds = len(bounds)
        for i, bound in enumerate(bounds):
            self._tally.bounds[i] = bound

    @staticmethod
    def cells(responses: int, body_bytes: int, way: int) -> Any:
        """Which cells count one kind of answer: for :meth:`serve`'s ``cells``."""
        return ffi.new("long[3]", [responses, body_bytes, way])

    def serve(
        self,
        sock: int,
        want: bytes,
        head: bytes,
        file: int,
        start: int,
        stop: int,
        cells: Any = UNCOUNTED,
        began: float = 0.0,
    ) -> int:
        """One recv on ``sock``; if it brought exactly ``want``, send ``head`` and then
        ``file``'s bytes ``[start, stop)``. Returns one of the outcomes above. An answer
        sent whole is counted in ``cells`` (from :meth:`cells`; NULL: not counted), with
        its duration from ``began`` (``time.monotonic()`` seconds)."""
        return lib.aiob_replay(  # type: ignore[no-any-return]
            sock, self._buf, self._cap, want, len(want), head, len(head), file, start, stop,
            self._out, self._tally, cells, began,
        )  # fmt: skip

    def serve_read(
        self,
        sock: int,
        want: bytes,
        head: bytes,
        file: int,
        start: int,
        stop: int,
        efd: int,
        cells: Any = UNCOUNTED,
        began: float = 0.0,
    ) -> int:
        """As :meth:`serve`, the body read with ``io_submit`` (signalled on ``efd``) and
        sent with the head in one ``sendmsg``. For a buffered (not O_DIRECT) ``file``:
        such a read is done when ``io_submit`` returns. :data:`OTHER` also when the read
        did not bring every byte (the request is in :meth:`data`, unanswered). After
        :data:`BLOCKED`, ``file_pos`` counts the body bytes sent and :meth:`body` holds
        the body. ``stop - start`` is at most ``read_size`` and more than 0."""
        if not 0 < stop - start <= self.read_size:
            raise ValueError(f"a body of 1 to {self.read_size} bytes, not {stop - start}")
        if self._data is None:
            self._open_reader()
        return lib.aiob_replay_read(  # type: ignore[no-any-return]
            sock, self._buf, self._cap, want, len(want), head, len(head), self._ctx,
            self._cb, efd, self._data.cdata, file, start, stop, self._out,  # type: ignore[union-attr]
            self._tally, cells, began,
        )  # fmt: skip

    def serve_tls(
        self,
        ssl: Any,
        want: bytes,
        head: bytes,
        file: int,
        start: int,
        stop: int,
        efd: int = -1,
        cells: Any = UNCOUNTED,
        began: float = 0.0,
    ) -> int:
        """As :meth:`serve`, through the TLS session ``ssl`` (an ``SSL *`` from
        :func:`aiobind.sslhandle.of`): SSL_read, and what SSL decrypted beyond it; the
        head and the body, read with ``pread`` (or, with ``efd`` >= 0, by one buffered
        ``io_submit`` signalled on it) into one buffer; one SSL_write. After
        :data:`BLOCKED` the whole write must be made again with the same bytes,
        :meth:`sealed` (OpenSSL's rule). A failed SSL_read is ``-errno`` as a failed recv
        is (``-EPROTO``: a TLS error); after :data:`FAILED`, :attr:`file_pos` is 0 when
        reading the file failed, else the write did. ``stop - start`` is at most
        ``read_size`` and more than 0, and ``head`` at most :data:`HEAD_ROOM` bytes."""
        if not 0 < stop - start <= self.read_size or len(head) > HEAD_ROOM:
            raise ValueError(f"a body of 1 to {self.read_size} bytes, not {stop - start}")
        if efd >= 0 and self._ctx == ffi.NULL:
            self._open_context()
        if self._sealed is None:
            self._sealed = ffi.new("char[]", self.read_size + HEAD_ROOM)
        ctx, cb = (self._ctx, self._cb) if efd >= 0 else (ffi.NULL, ffi.NULL)
        return lib.aiob_tls_replay(  # type: ignore[no-any-return]
            ssl, self._buf, TLS_FIRST_READ, self._cap, want, len(want), head, len(head),
            ctx, cb, efd, self._sealed, ffi.sizeof(self._sealed), file, start, stop,
            self._out, self._tally, cells, began,
        )  # fmt: skip

    def sealed(self) -> bytes:
        """After :meth:`serve_tls` gave :data:`BLOCKED`: the bytes to write again."""
        return ffi.buffer(self._sealed, self._out[2])[:]

    def _open_reader(self) -> None:
        if self._ctx == ffi.NULL:
            self._open_context()
        self._data = AlignedBuffer(self.read_size)

    def _open_context(self) -> None:
        holder = ffi.new("io_context_t *")
        rc = lib.aiob_setup(1, holder)
        if rc < 0:
            raise OSError(-rc, f"io_setup: {os.strerror(-rc)}")
        self._ctx = holder[0]
        self._cb = ffi.new("struct iocb *")

    def body(self, length: int) -> bytes:
        """The first ``length`` bytes :meth:`serve_read` read (a copy)."""
        assert self._data is not None
        return bytes(self._data.view[:length])

    def close(self) -> None:
        """Give back the AIO context and the read buffer (no read is ever left in flight:
        each call reaps its own)."""
        if self._ctx != ffi.NULL:
            lib.aiob_destroy(self._ctx)
            self._ctx = ffi.NULL
        if self._data is not None:
            self._data.close()
            self._data = None

    def data(self) -> bytes:
        """The bytes the last call received (after :data:`OTHER`, the request to handle)."""
        return ffi.buffer(self._buf, self._out[0])[:]

    @property
    def head_sent(self) -> int:
        return int(self._out[1])

    @property
    def file_pos(self) -> int:
        return int(self._out[2])

    @property
    def errno(self) -> int:
        return int(self._out[3])
