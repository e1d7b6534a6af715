"""Answer a repeated request again in one call: recv, compare, send, sendfile, in C.

A keep-alive client of a file server often sends the very same request bytes again (a
benchmark, a poller, a health check, a browser revalidating). When the server knows
the answer to those bytes has not changed, :meth:`Replay.serve` makes the same three
system calls the server's Python path would (``recv``; ``send`` of the head with
``MSG_MORE``; ``sendfile`` of the body) without returning to the interpreter between
them. Anything else it received is left in :attr:`Replay.data` for the caller to
handle as usual.

    replay = Replay()
    outcome = replay.serve(sock.fileno(), last_request, head, file_fd, 0, size)
    if outcome is OTHER:
        handle(replay.data())
"""

from __future__ import annotations

from typing import Final

from aiobind._native import ffi, lib

# What :meth:`Replay.serve` did (a negative number is ``-errno`` of the recv: -EAGAIN
# when nothing had arrived).
CLOSED: Final = 0  # the peer shut down its side: nothing was received
OTHER: Final = 1  # other bytes arrived: :meth:`Replay.data`; nothing was sent
SERVED: Final = 2  # answered: every head and file byte went out
BLOCKED: Final = 3  # the socket filled part way: see ``head_sent`` and ``file_pos``
FAILED: Final = 4  # send or sendfile failed with ``errno``
SHRANK: Final = 5  # the file ended before ``stop``


class Replay:
    """A receive buffer and the figures of the last :meth:`serve`. One per thread of
    work (a worker's loop): :meth:`data` reads what the last call received."""

    __slots__ = ("_buf", "_cap", "_out")

    def __init__(self, capacity: int = 64 * 1024) -> None:
        self._cap = capacity
        self._buf = ffi.new("char[]", capacity)
        self._out = ffi.new("long long[4]")

    def serve(self, sock: int, want: bytes, head: bytes, file: int, start: int, stop: int) -> int:
        """One recv on ``sock``; if it brought exactly ``want``, send ``head`` and then
        ``file``'s bytes ``[start, stop)``. Returns one of the outcomes above."""
        return lib.aiob_replay(  # type: ignore[no-any-return]
            sock, self._buf, self._cap, want, len(want), head, len(head), file, start, stop,
            self._out,
        )  # fmt: skip

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
