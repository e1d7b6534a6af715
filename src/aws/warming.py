"""Bringing a cold range of a file into the page cache without the loop waiting
(``--static-cold cache``).

A few threads per worker each take a range and ``sendfile`` it to ``/dev/null``: the
kernel reads the pages into the page cache, with its own readahead, and discards them
without a copy, while the thread waits in the kernel with the GIL released. The loop
hears of each finished range through an eventfd in its epoll, and the transfer sends
the range with sendfile, from memory; it stays cached for the next request, which the
O_DIRECT reads of ``--static-cold direct`` would not leave.

Measured on the dev VM (an evicted 512 MiB file, curl, one at a time): the first
download ~1.6 GB/s and the next ones 1.9-2.6 GB/s from the page cache, against
1.21-1.36 GB/s every time with O_DIRECT. Filling the page cache costs the server's core
more than O_DIRECT does (~0.56 against ~0.42 ms a MiB while eight downloads stayed
cold), which is why it is a choice.

The eventfd is the threads' to close: a job may finish after the server that asked for
it is gone, and its write must not land on a descriptor number reused meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable

from aws.loop import EPOLLIN, Handler, Loop

log = logging.getLogger("aws.warming")

THREADS = 4  # ranges read at once (each thread has one in the kernel)

Job = tuple[int, int, int, Handler, Callable[[], None]]


def _own_description(fd: int) -> int:
    """The file opened again, for a readahead state of the window's own: a dup shares
    the file's with every other window the threads read at once, and their interleaved
    reads keep it small (a freshly opened 512 MiB file went at 0.34 GB/s through dups,
    1.4-1.9 GB/s otherwise). The dup when that cannot be (it is closed here)."""
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return fd
    os.close(fd)
    return own


class Warmer:
    def __init__(self, loop: Loop, threads: int = THREADS) -> None:
        self.loop = loop
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.finished: deque[tuple[Handler, Callable[[], None]]] = deque()
        # Opened here, not in a thread: a failure is the server's start failing, never
        # a thread gone and the ranges asked of it waited for forever.
        self.null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add(self.efd, EPOLLIN, self)
        self.count = threads
        self.running = 0  # threads started and not yet gone
        self.lock = threading.Lock()
        self.users = 1  # servers sharing it (a reload in one process)
        self.closed = False

    def share(self) -> Warmer:
        self.users += 1
        return self

    def warm(
        self, fd: int, start: int, end: int, handler: Handler, done: Callable[[], None]
    ) -> None:
        """Read ``[start, end)`` of ``fd`` into the page cache; ``done`` runs on the loop
        when it is there, or when reading it failed (the caller asks the page cache),
        and what it raises is ``handler``'s failure. Raises if it cannot be asked."""
        if self.closed:
            raise RuntimeError("the warmer is closed")
        if not self.running:
            self._start_threads()
        self.jobs.put((os.dup(fd), start, end, handler, done))  # its own: the cache may close fd

    def _start_threads(self) -> None:
        for i in range(self.count):
            thread = threading.Thread(target=self._run, name=f"aws-warm-{i}", daemon=True)
            with self.lock:
                self.running += 1
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: fewer read at once
                with self.lock:
                    self.running -= 1
                if not self.running:
                    raise
                log.warning("only %d warming threads started", self.running)
                return

    def _run(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                fd, pos, end, handler, done = job
                try:
                    fd = _own_description(fd)
                    while pos < end:
                        n = os.sendfile(self.null, fd, pos, end - pos)
                        if n == 0:  # the file is shorter now: sendfile will say so
                            break
                        pos += n
                except OSError as exc:
                    log.debug("warming a range failed: %s", exc)
                finally:  # whatever happened, the transfer hears of it
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    self.finished.append((handler, done))
                    with contextlib.suppress(OSError):
                        os.eventfd_write(self.efd, 1)
        finally:
            with self.lock:
                self.running -= 1
                last = self.running == 0 and self.closed
            if last:
                os.close(self.efd)
                os.close(self.null)

    def on_event(self, events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.efd)
        finished = self.finished
        while finished:
            handler, done = finished.popleft()
            try:
                done()
            except Exception as exc:  # that transfer's failure: it is closed, not left waiting
                self.loop.handler_failed(handler, exc)

    def on_error(self, exc: BaseException) -> None:
        log.error("after warming a range: %r", exc)

    def close(self) -> None:
        self.users -= 1
        if self.users or self.closed:
            return
        self.loop.remove(self.efd)
        self.finished.clear()
        with self.lock:
            self.closed = True
            started = self.running
        while True:  # ranges nobody waits for any more: not read
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                os.close(job[0])
        for _ in range(started):
            self.jobs.put(None)  # each thread ends after the range it is on
        if not started:
            os.close(self.efd)
            os.close(self.null)
