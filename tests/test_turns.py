"""The fair-turn line alone (aws.turns), with movers that only count."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from aws.loop import Loop
from aws.turns import Turns


class Mover:
    """Moves what it is given, up to ``room`` a turn (its socket), and rejoins while
    it has bytes left and its share ran out first."""

    def __init__(self, turns: Turns, name: str, left: int, room: int = 1 << 30) -> None:
        self.turns, self.name, self.left, self.room = turns, name, left, room
        self.queued = False
        self.shares: list[int] = []
        self.errors: list[BaseException] = []

    def take_turn(self, budget: int) -> int:
        n = min(budget, self.left, self.room)
        self.left -= n
        self.shares.append(n)
        if self.left and n == budget:
            self.turns.join(self)
        return n

    def on_event(self, events: int) -> None:
        raise AssertionError("never registered")

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def test_one_budget_a_turn_goes_to_the_line_in_order(loop: Loop) -> None:
    turns = Turns(loop, 100)
    movers = [Mover(turns, n, 250) for n in "abc"]
    for m in movers:
        turns.join(m)
    order = []
    for _ in range(8):
        before = [len(m.shares) for m in movers]
        loop.run_once()
        moved = [sum(m.shares[b:]) for m, b in zip(movers, before, strict=True)]
        assert sum(moved) <= 100  # never more than one budget in a turn
        order.append("".join(m.name for m, n in zip(movers, moved, strict=True) if n))
    # a, b, c each take a whole budget in turn; the last 50 of each hand the rest on
    assert order == ["a", "b", "c", "a", "b", "c", "ab", "c"]
    assert [m.left for m in movers] == [0, 0, 0]
    assert not turns and not turns.posted


def test_a_full_socket_hands_the_rest_of_the_budget_to_the_next(loop: Loop) -> None:
    turns = Turns(loop, 100)
    full = Mover(turns, "full", 1000, room=30)  # takes 30, then waits for EPOLLOUT
    other = Mover(turns, "other", 1000)
    turns.join(full)
    turns.join(other)
    loop.run_once()
    assert full.shares == [30] and other.shares == [70]
    assert not full.queued and other.queued  # only the one whose share ran out is back


def test_joining_twice_is_one_place_and_leaving_takes_it(loop: Loop) -> None:
    turns = Turns(loop, 100)
    a, b = Mover(turns, "a", 500), Mover(turns, "b", 500)
    turns.join(a)
    turns.join(a)
    turns.join(b)
    assert len(turns) == 2
    turns.leave(a)
    turns.leave(a)  # not queued: nothing to do
    assert not a.queued and len(turns) == 1
    loop.run_once()
    assert a.shares == [] and b.shares == [100]


def test_a_mover_that_raises_is_ended_and_the_others_go_on(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    turns = Turns(loop, 100)

    class Broken(Mover):
        def take_turn(self, budget: int) -> int:
            raise RuntimeError("bug")

    broken, fine = Broken(turns, "broken", 100), Mover(turns, "fine", 100)
    turns.join(broken)
    turns.join(fine)
    with caplog.at_level(logging.ERROR, logger="aws.loop"):
        loop.run_once()
    assert [type(e) for e in broken.errors] == [RuntimeError]
    assert fine.shares == [100] and not turns
    assert "failed" in caplog.text


def test_a_sliver_of_budget_ends_the_round(loop: Loop) -> None:
    """What is left below ``least`` is not handed on: it would cost the next mover a
    call and its place in line for a few bytes."""
    turns = Turns(loop, 100, least=30)
    nearly = Mover(turns, "nearly", 1000, room=80)  # its socket fills 20 short
    nxt = Mover(turns, "next", 1000)
    turns.join(nearly)
    turns.join(nxt)
    loop.run_once()
    assert nearly.shares == [80] and nxt.shares == [] and nxt.queued
    loop.run_once()
    assert nxt.shares == [100]
