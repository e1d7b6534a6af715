"""Page-aligned buffers for direct I/O, and a small pool of them.

An anonymous ``mmap`` is page-aligned, so it satisfies O_DIRECT's alignment for buffer
address and (when the size is a page multiple) length. The same memory is handed to the
kernel for reading and to ``socket.send`` as a ``memoryview``, with no copy.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import Any

from aiobind._native import ffi

PAGE_SIZE = mmap.PAGESIZE


def round_up(n: int, align: int = PAGE_SIZE) -> int:
    return (n + align - 1) // align * align


class AlignedBuffer:
    """``size`` bytes (rounded up to a page) of page-aligned memory."""

    __slots__ = ("_map", "cdata", "size", "view")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("buffer size must be positive")
        self.size = round_up(size)
        self._map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.cdata: Any = ffi.from_buffer(self._map, require_writable=True)
        self.view = memoryview(self._map)

    @property
    def address(self) -> int:
        return int(ffi.cast("uintptr_t", self.cdata))

    def __len__(self) -> int:
        return self.size

    def __buffer__(self, flags: int) -> memoryview:  # PEP 688 (3.12+)
        return self.view

    def close(self) -> None:
        """Unmap the memory; fails with BufferError while a view of it is in use."""
        if self._map.closed:
            return
        self.view.release()
        self.cdata = None
        self._map.close()


class BufferPool:
    """Reuses aligned buffers of one size so a server does not mmap per request.

    ``acquire`` never fails for lack of pooled buffers (it maps a new one); ``release``
    keeps at most ``keep`` idle buffers and unmaps the rest, so idle memory is bounded.
    """

    def __init__(self, size: int, keep: int = 32) -> None:
        self.size = round_up(size)
        self.keep = keep
        self._idle: list[AlignedBuffer] = []
        self.outstanding = 0

    def acquire(self) -> AlignedBuffer:
        self.outstanding += 1
        return self._idle.pop() if self._idle else AlignedBuffer(self.size)

    def release(self, buf: AlignedBuffer) -> None:
        self.outstanding -= 1
        if len(self._idle) < self.keep:
            self._idle.append(buf)
            return
        # If a view of it is still alive, the memory goes with its last reference.
        with contextlib.suppress(BufferError):
            buf.close()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
