"""Reading /dynamic/ files with native AIO, completions arriving through the loop.

A worker owns one :class:`AioReader`: one aiobind context, one eventfd registered in the
worker's epoll, and one pool of page-aligned buffers. A response body is a
:class:`DynamicBody`: at most ``depth`` chunks (buffers) in flight or waiting to be sent,
so memory per connection is fixed whatever the file size, and chunk k+1 is read while
chunk k is being sent.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from typing import Protocol

import aiobind
from aws.loop import EPOLLIN, Loop

log = logging.getLogger("aws.aio")

ALIGN = 4096  # O_DIRECT needs block-aligned offsets, lengths and addresses


class BodyOwner(Protocol):
    def on_body_ready(self) -> None: ...


class FileChanged(Exception):
    """The file ended before the length promised in the response head."""


class Chunk:
    """One buffer's worth of a file: in flight, then ready to send."""

    __slots__ = ("body", "buf", "length", "offset", "result")

    def __init__(
        self, body: DynamicBody | None, buf: aiobind.AlignedBuffer, offset: int, length: int
    ) -> None:
        self.body = body  # None once the connection is gone: the reap frees the buffer
        self.buf = buf
        self.offset = offset
        self.length = length
        self.result: int | None = None


class AioReader:
    """The worker's AIO context, eventfd and buffer pool."""

    def __init__(self, loop: Loop, maxevents: int, chunk_size: int, keep_buffers: int) -> None:
        self.loop = loop
        self.ctx = aiobind.Context(maxevents)
        self.efd = aiobind.EventFD()
        self.efd_fd = self.efd.fileno()
        self.pool = aiobind.BufferPool(chunk_size, keep_buffers)
        self.chunk_size = self.pool.size
        # Chunks refused for lack of context slots (io_submit's EAGAIN): sent when
        # completions free slots, in order.
        self.backlog: deque[Chunk] = deque()
        loop.add(self.efd.fileno(), EPOLLIN, self)

    def submit(self, chunk: Chunk, fd: int) -> None:
        if self.backlog or not self._submit(chunk, fd):
            self.backlog.append(chunk)
            if self.ctx.in_flight == 0:
                # No completion will come to wake us: retry shortly instead.
                self.loop.call_later(0.01, self._drain_backlog)

    def _submit(self, chunk: Chunk, fd: int) -> bool:
        """False when the context has no room (EAGAIN): the caller queues the chunk."""
        try:
            self.ctx.submit_read(fd, chunk.buf, chunk.offset, chunk, chunk.length, self.efd_fd)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return False
            # The read could not even start: deliver it as a failed completion, from the
            # loop rather than from inside the caller's submit.
            err = -(exc.errno or errno.EIO)
            self.loop.call_soon(lambda: self._complete(chunk, err))
        return True

    def on_event(self, events: int) -> None:
        self.efd.read()
        self.reap_now()

    def reap_now(self) -> None:
        """Dispatch every completion in the ring (the eventfd count only says "something
        finished"), then submit what waited for a slot."""
        while True:
            done = self.ctx.reap()
            if not done:
                break
            for completion in done:
                try:
                    self._complete(completion.token, completion.result)  # type: ignore[arg-type]
                except Exception:
                    # One connection's failure must not strand the other completions.
                    log.exception("handling the completion of %r failed", completion.token)
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        backlog = self.backlog
        while backlog:
            chunk = backlog[0]
            if chunk.body is None:
                backlog.popleft()
                self.pool.release(chunk.buf)
            elif self._submit(chunk, chunk.body.fd):
                backlog.popleft()
            else:
                if self.ctx.in_flight == 0:  # no completion will come to retry: a timer will
                    self.loop.call_later(0.01, self._drain_backlog)
                break

    def _complete(self, chunk: Chunk, result: int) -> None:
        body = chunk.body
        if body is None:
            self.pool.release(chunk.buf)
            return
        chunk.result = result
        body.on_chunk(chunk)

    def on_error(self, exc: BaseException) -> None:
        log.error("AIO completion handling failed: %r", exc)

    def close(self) -> None:
        self.loop.remove(self.efd.fileno())
        self.ctx.close()
        self.efd.close()
        self.pool.close()


class DynamicBody:
    """The bytes ``[start, end)`` of a file, read by AIO into a fixed set of buffers."""

    __slots__ = ("chunks", "depth", "end", "fd", "next_offset", "owner", "reader", "sent_to")

    def __init__(
        self, reader: AioReader, owner: BodyOwner, fd: int, start: int, end: int, depth: int = 2
    ) -> None:
        self.reader = reader
        self.owner = owner
        self.fd = fd
        self.end = end
        self.sent_to = start
        self.next_offset = start - start % ALIGN
        self.depth = depth
        self.chunks: deque[Chunk] = deque()
        self._fill()

    def _fill(self) -> None:
        reader = self.reader
        size = reader.chunk_size
        while len(self.chunks) < self.depth and self.next_offset < self.end:
            offset = self.next_offset
            wanted = self.end - offset
            length = size if wanted >= size else (wanted + ALIGN - 1) // ALIGN * ALIGN
            chunk = Chunk(self, reader.pool.acquire(), offset, length)
            self.next_offset = offset + length
            self.chunks.append(chunk)
            reader.submit(chunk, self.fd)

    def on_chunk(self, chunk: Chunk) -> None:
        if self.chunks and chunk is self.chunks[0]:
            self.owner.on_body_ready()

    def view(self) -> memoryview | None:
        """The next bytes to send, or None while the next chunk is still being read.

        Raises ``OSError`` for a failed read and :class:`FileChanged` when the file came
        back shorter than the response promised.
        """
        chunk = self.chunks[0]
        result = chunk.result
        if result is None:
            return None
        if result < 0:
            raise OSError(-result, f"AIO read at offset {chunk.offset} failed")
        have = chunk.offset + result
        stop = min(chunk.offset + chunk.length, self.end)
        if have < stop:
            raise FileChanged(f"read {have} bytes where {stop} were expected")
        return chunk.buf.view[self.sent_to - chunk.offset : stop - chunk.offset]

    def advance(self, sent: int) -> bool:
        """Record ``sent`` bytes as gone; True when the whole body has been sent."""
        self.sent_to += sent
        chunk = self.chunks[0]
        if self.sent_to >= min(chunk.offset + chunk.length, self.end):
            self.chunks.popleft()
            self.reader.pool.release(chunk.buf)
            self._fill()
        return self.sent_to >= self.end

    def close(self) -> None:
        """Give back the buffers now, or at reaping time for reads still in flight."""
        pool = self.reader.pool
        while self.chunks:
            chunk = self.chunks.popleft()
            chunk.body = None
            if chunk.result is not None:  # reads in flight or queued free theirs later
                pool.release(chunk.buf)
