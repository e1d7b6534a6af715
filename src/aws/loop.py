"""One epoll event loop: file descriptors to handlers, a ready queue, and timers.

Level-triggered on purpose: a connection stopped by its per-turn byte budget while its
socket is still writable is simply reported again on the next turn, so no transfer can
stall waiting for an edge that never comes, and none can starve the others.

Time comes from one injected clock (``time.monotonic`` by default), so timeouts, keep-alive
and cache revalidation can be driven by a fake clock in tests instead of by sleeping.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import select
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from itertools import count
from time import monotonic
from typing import Protocol

Clock = Callable[[], float]

log = logging.getLogger("aws.loop")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP


class Handler(Protocol):
    def on_event(self, events: int) -> None: ...

    def on_error(self, exc: BaseException) -> None:
        """The handler raised: it must release what it holds (the loop goes on)."""


class Loop:
    def __init__(self, max_events: int = 1024, clock: Clock = monotonic) -> None:
        self.epoll = select.epoll()
        self.clock = clock
        self.handlers: dict[int, Handler] = {}
        self.ready: deque[Callable[[], None]] = deque()
        self.next_turn: list[Callable[[], None]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = count()
        self.max_events = max_events
        self.now = clock()
        self.running = False
        # How long each turn's work took (events, callbacks, timers; not the wait in
        # epoll): the longest a ready event waits behind the others. A histogram of
        # counts by ``turn_bounds`` (seconds, ``<=``; one more for the rest) and the
        # seconds summed, kept only when someone reads them (``watch``).
        self.turn_bounds: tuple[float, ...] = ()
        self.turn_counts: list[int] | None = None
        self.turn_seconds = [0.0]

    # -- registration -------------------------------------------------------------------

    def add(self, fd: int, mask: int, handler: Handler) -> None:
        self.epoll.register(fd, mask)
        self.handlers[fd] = handler

    def modify(self, fd: int, mask: int) -> None:
        self.epoll.modify(fd, mask)

    def forget(self, fd: int) -> None:
        """Drop the handler of an fd that is about to be closed.

        Closing the fd removes it from the epoll set, so no ``epoll_ctl`` is spent.
        """
        self.handlers.pop(fd, None)

    def remove(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)

    # -- scheduling ---------------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run after this turn's events (queued by a callback: after the next turn's)."""
        self.ready.append(callback)

    def call_next_turn(self, callback: Callable[[], None]) -> None:
        """Asked during a turn (by an event, a callback or a timer): run after the next
        turn's events. For work put off to bound the turn that is running, which a
        ``call_soon`` from an event would only lengthen."""
        self.next_turn.append(callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), callback))

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.call_at(self.clock() + delay, callback)

    def watch(self, bounds: tuple[float, ...], counts: list[int], seconds: list[float]) -> None:
        """Count each turn's duration into ``counts`` (``len(bounds) + 1`` of them) and
        add it to ``seconds[0]``."""
        self.turn_bounds, self.turn_counts, self.turn_seconds = bounds, counts, seconds

    # -- running ------------------------------------------------------------------------

    def run(self) -> None:
        self.running = True
        while self.running:
            self.run_once()

    def stop(self) -> None:
        self.running = False

    def _timeout(self) -> float:
        if self.ready or self.next_turn:
            return 0.0
        if self._timers:
            return min(max(0.0, self._timers[0][0] - self.clock()), 1.0)
        return 1.0

    def run_once(self) -> None:
        try:
            events = self.epoll.poll(self._timeout(), self.max_events)
        except InterruptedError:
            events = []
        self.now = self.clock()
        handlers = self.handlers
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler.on_event(mask)
            except Exception as exc:  # a worker never dies of one connection
                self.handler_failed(handler, exc)
        ready = self.ready
        for _ in range(len(ready)):
            callback = ready.popleft()
            try:
                callback()
            except Exception:
                log.exception("callback %r failed", callback)
        timers = self._timers
        if timers and timers[0][0] <= self.now:
            self._run_timers(timers)
        if self.next_turn:
            ready.extend(self.next_turn)
            self.next_turn.clear()
        counts = self.turn_counts
        if counts is not None:
            took = self.clock() - self.now
            counts[bisect_left(self.turn_bounds, took)] += 1
            self.turn_seconds[0] += took

    def _run_timers(self, timers: list[tuple[float, int, Callable[[], None]]]) -> None:
        now = self.now
        # Only the timers due when the turn began: one that a timer callback schedules for
        # ``now`` or earlier waits for the next turn, as it would under a moving clock, so a
        # clock that stands still (a test's) cannot spin this loop forever.
        due: list[Callable[[], None]] = []
        while timers and timers[0][0] <= now:
            due.append(heapq.heappop(timers)[2])
        for callback in due:
            try:
                callback()
            except Exception:
                log.exception("timer %r failed", callback)

    def handler_failed(self, handler: Handler, exc: Exception) -> None:
        """A handler (or a call made for it) raised: log, and let it release what it holds."""
        log.error("handler %r failed: %r", handler, exc, exc_info=exc)
        try:
            handler.on_error(exc)
        except Exception:
            log.exception("cleanup of %r failed too", handler)

    def close(self) -> None:
        self.epoll.close()
