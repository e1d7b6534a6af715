"""Fair turns for long transfers: one byte budget a loop turn, taken in order.

A small request waits behind whatever the loop does before it comes back to epoll, so
the bytes long transfers move in one turn bound its latency. Measured on the 2-core
dev VM (8 cached 256 MiB downloads, ``make bench-cold``): splitting that budget evenly,
1 MiB / 8 per download per turn, made ~7 ``sendfile`` calls per MiB against nginx's
0.5, and cost 0.43 ms of core per MiB against nginx's 0.37. The call, not the byte, was
the difference. So the whole budget goes to the first transfer in line, the rest of it
(if that one's socket fills first) to the next, and a transfer whose share ran out goes
to the back of the line: one or two calls per MiB, and still one budget a turn.

The line is run after the turn's events (a ready callback): a request that came in
with them is answered before any long transfer moves, and waits behind at most one
budget, the one of the turn that was running when it arrived.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from aws.loop import Handler, Loop


class Mover(Handler, Protocol):
    queued: bool  # in the line (only the line sets it)

    def take_turn(self, budget: int) -> int:
        """Move at most ``budget`` bytes; returns how many moved. A mover whose budget
        ran out while its socket could take more calls :meth:`Turns.join` again."""
        ...


class Turns:
    def __init__(self, loop: Loop, budget: int, least: int = 0) -> None:
        self.loop = loop
        self.slice = least
        self.set_budget(budget)
        self.line: deque[Mover] = deque()
        self.posted = False

    def set_budget(self, budget: int) -> None:
        """A turn's bytes (a reload may change ``--sendfile-chunk``)."""
        self.budget = budget
        # What is left of a budget below this ends the round: a sliver would cost its
        # mover a call and its place in line for a few bytes.
        self.least = max(1, min(self.slice, budget))

    def __len__(self) -> int:
        return len(self.line)

    def join(self, mover: Mover) -> None:
        """Wait in line for a share of a turn (the socket can take bytes)."""
        if mover.queued:
            return
        mover.queued = True
        self.line.append(mover)
        if not self.posted:
            self.posted = True
            self.loop.call_soon(self._run)

    def leave(self, mover: Mover) -> None:
        """Out of the line before its turn (the connection ends)."""
        if mover.queued:
            mover.queued = False
            self.line.remove(mover)  # rare, and the line is short: O(n) is fine

    def _run(self) -> None:
        self.posted = False
        line = self.line
        left = self.budget
        least = self.least
        while line and left >= least:
            mover = line.popleft()
            mover.queued = False
            try:
                left -= mover.take_turn(left)
            except Exception as exc:  # as for a failing event handler: the others go on
                self.loop.handler_failed(mover, exc)
        if line and not self.posted:
            self.posted = True
            self.loop.call_soon(self._run)
