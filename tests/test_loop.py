"""aws.loop.Loop alone: a fake clock for timers, real epoll and real sockets for events.

``run_once`` blocks in ``epoll.poll`` for ``_timeout()`` seconds of real time (up to one)
when nothing is ready, whatever the fake clock says; every turn here therefore has
something to report at once (a queued callback, or a readable socket), and the timer tests
assert that they took far less real time than the fake time they covered.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from aws.loop import EPOLLHUP, EPOLLIN, EPOLLOUT, Loop

pytestmark = pytest.mark.timeout(30)

REAL_BUDGET = 0.5  # seconds of real time a whole fake-clock test may take


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock does not go back"
        self.t += seconds


class Recorder:
    """A handler that records its events and, if told to, fails on them."""

    def __init__(self, fail: BaseException | None = None, fail_cleanup: bool = False) -> None:
        self.events: list[int] = []
        self.errors: list[BaseException] = []
        self.fail = fail
        self.fail_cleanup = fail_cleanup

    def on_event(self, events: int) -> None:
        self.events.append(events)
        if self.fail is not None:
            raise self.fail

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        if self.fail_cleanup:
            raise RuntimeError("cleanup failed too")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[Loop]:
    lp = Loop(clock=clock)
    yield lp
    lp.close()


@pytest.fixture
def pairs() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    """Non-blocking socketpairs, all closed at the end of the test."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
        made.extend((a, b))
        return a, b

    yield make
    for s in made:
        s.close()


def turn(loop: Loop) -> None:
    """One loop turn that cannot block: a queued callback makes the poll timeout zero."""
    loop.call_soon(lambda: None)
    loop.run_once()


# -- the clock ---------------------------------------------------------------------------------


def test_now_is_read_from_the_injected_clock(loop: Loop, clock: FakeClock) -> None:
    assert loop.now == 1000.0
    clock.advance(7.25)
    assert loop.now == 1000.0  # refreshed once per turn, not on every read
    turn(loop)
    assert loop.now == 1007.25


def test_the_clock_is_read_once_per_turn_however_many_events(
    loop: Loop, clock: FakeClock, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    handlers = []
    for _ in range(5):
        a, b = pairs()
        b.send(b"x")
        h = Recorder()
        loop.add(a.fileno(), EPOLLIN, h)
        handlers.append(h)
    before = clock.reads
    loop.run_once()  # five readable sockets: the poll returns at once
    assert [len(h.events) for h in handlers] == [1] * 5
    assert clock.reads - before == 1


def test_a_watched_loop_counts_each_turns_work_not_its_wait(loop: Loop, clock: FakeClock) -> None:
    counts = [0] * 4
    seconds = [0.0]
    loop.watch((0.001, 0.01, 0.1), counts, seconds)
    loop.call_soon(lambda: clock.advance(0.004))  # a turn whose work took 4 ms
    loop.run_once()
    clock.advance(5.0)  # time between turns (in epoll) is not work
    loop.call_soon(lambda: None)
    loop.run_once()
    loop.call_soon(lambda: clock.advance(0.5))  # one that held the loop for 500 ms
    loop.run_once()
    assert counts == [1, 1, 0, 1]
    assert seconds[0] == pytest.approx(0.504)
    before = clock.reads
    loop.call_soon(lambda: None)
    loop.run_once()
    assert clock.reads - before == 2  # the turn's start and its end


def test_the_default_clock_is_monotonic() -> None:
    lp = Loop()
    try:
        assert lp.clock is time.monotonic
        lo = time.monotonic()
        turn(lp)
        assert lo <= lp.now <= time.monotonic()
    finally:
        lp.close()


def test_poll_timeout_follows_the_fake_clock(loop: Loop, clock: FakeClock) -> None:
    assert loop._timeout() == 1.0  # nothing to do: wake once a second anyway
    loop.call_later(0.25, lambda: None)
    assert loop._timeout() == 0.25
    clock.advance(0.2)
    assert loop._timeout() == pytest.approx(0.05)
    clock.advance(10)
    assert loop._timeout() == 0.0  # overdue
    loop.call_later(3600, lambda: None)
    loop.call_soon(lambda: None)
    assert loop._timeout() == 0.0  # a ready callback beats every timer


def test_a_far_timer_still_wakes_the_loop_once_a_second(loop: Loop) -> None:
    loop.call_later(3600, lambda: None)
    assert loop._timeout() == 1.0


# -- timers ------------------------------------------------------------------------------------


def test_timers_fire_in_order_at_the_fake_time_without_sleeping(
    loop: Loop, clock: FakeClock
) -> None:
    fired: list[tuple[str, float]] = []

    def at(name: str) -> Callable[[], None]:
        return lambda: fired.append((name, loop.now))

    real_start = time.monotonic()
    loop.call_later(30, at("keep-alive"))
    loop.call_later(10, at("header"))
    loop.call_at(1020.0, at("send"))
    loop.call_later(10, at("header-2"))  # same deadline: in the order scheduled
    turn(loop)
    assert fired == []
    clock.advance(9.999)
    turn(loop)
    assert fired == []
    clock.advance(0.001)  # exactly at the deadline: due
    turn(loop)
    assert fired == [("header", 1010.0), ("header-2", 1010.0)]
    clock.advance(25)  # past two deadlines at once: both, earliest first
    turn(loop)
    assert [name for name, _ in fired[2:]] == ["send", "keep-alive"]
    assert fired[2][1] == fired[3][1] == 1035.0  # they see the turn's time, not their own
    turn(loop)
    assert len(fired) == 4  # each fires once
    assert time.monotonic() - real_start < REAL_BUDGET


def test_call_later_counts_from_the_clock_not_from_the_last_turn(
    loop: Loop, clock: FakeClock
) -> None:
    fired: list[float] = []
    clock.advance(5)  # loop.now is stale (1000) until the next turn
    loop.call_later(1, lambda: fired.append(loop.now))
    clock.advance(0.5)
    turn(loop)
    assert fired == []  # due at 1006, not 1001
    clock.advance(0.5)
    turn(loop)
    assert fired == [1006.0]


@pytest.mark.timeout(5)
def test_a_timer_set_by_a_timer_for_now_runs_next_turn(loop: Loop, clock: FakeClock) -> None:
    # Under a clock that stands still, "now" stays due: run_once must still return.
    fired: list[int] = []

    def again() -> None:
        fired.append(len(fired))
        loop.call_later(0, again)

    loop.call_later(0, again)
    turn(loop)
    assert fired == [0]
    turn(loop)
    assert fired == [0, 1]


def test_a_failing_timer_is_logged_and_the_others_still_fire(
    loop: Loop, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("timer boom")

    loop.call_later(1, lambda: fired.append("before"))
    loop.call_later(2, boom)
    loop.call_later(3, lambda: fired.append("after"))
    clock.advance(3)
    with caplog.at_level(logging.ERROR, logger="aws.loop"):
        turn(loop)
    assert fired == ["before", "after"]
    assert any(r.exc_info and "timer boom" in str(r.exc_info[1]) for r in caplog.records)


# -- the ready queue ---------------------------------------------------------------------------


def test_call_soon_runs_in_order_and_what_it_queues_runs_next_turn(loop: Loop) -> None:
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        loop.call_soon(lambda: ran.append("queued by first"))

    loop.call_soon(first)
    loop.call_soon(lambda: ran.append("second"))
    loop.run_once()
    assert ran == ["first", "second"]
    assert len(loop.ready) == 1
    loop.run_once()  # the queued callback makes this poll non-blocking too
    assert ran == ["first", "second", "queued by first"]
    assert not loop.ready


def test_a_failing_callback_is_logged_and_the_rest_run(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    def boom() -> None:
        raise ValueError("callback boom")

    loop.call_soon(boom)
    loop.call_soon(lambda: ran.append(1))
    with caplog.at_level(logging.ERROR, logger="aws.loop"):
        loop.run_once()
    assert ran == [1]
    assert any(r.exc_info and "callback boom" in str(r.exc_info[1]) for r in caplog.records)


def test_run_turns_until_stop(loop: Loop) -> None:
    turns: list[int] = []

    def tick() -> None:
        turns.append(1)
        if len(turns) == 3:
            loop.stop()
        else:
            loop.call_soon(tick)

    loop.call_soon(tick)
    loop.run()
    assert len(turns) == 3
    assert loop.running is False


# -- events from real sockets ------------------------------------------------------------------


def test_readable_writable_and_hangup_are_delivered(
    loop: Loop, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    a, b = pairs()
    h = Recorder()
    loop.add(a.fileno(), EPOLLIN, h)
    assert loop.handlers[a.fileno()] is h
    turn(loop)
    assert h.events == []  # nothing to read yet
    b.send(b"ping")
    loop.run_once()
    assert h.events == [EPOLLIN]
    loop.modify(a.fileno(), EPOLLOUT)
    loop.run_once()
    assert h.events[-1] == EPOLLOUT  # the unread data no longer reported
    loop.modify(a.fileno(), EPOLLIN | EPOLLOUT)
    loop.run_once()
    assert h.events[-1] == EPOLLIN | EPOLLOUT
    loop.modify(a.fileno(), EPOLLIN)
    b.close()
    loop.run_once()
    assert h.events[-1] & EPOLLHUP  # reported even though only EPOLLIN was asked for
    assert h.events[-1] & EPOLLIN


def test_level_triggered_events_repeat_until_drained(
    loop: Loop, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    a, b = pairs()
    h = Recorder()
    loop.add(a.fileno(), EPOLLIN, h)
    b.send(b"unread")
    loop.run_once()
    loop.run_once()
    assert h.events == [EPOLLIN, EPOLLIN]
    assert a.recv(100) == b"unread"
    turn(loop)
    assert h.events == [EPOLLIN, EPOLLIN]


def test_max_events_shares_turns_among_ready_sockets(
    clock: FakeClock, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    # One event a turn and three sockets that stay readable: each gets a turn in three,
    # which is what keeps a busy connection from starving the others.
    lp = Loop(max_events=1, clock=clock)
    try:
        handlers = []
        for _ in range(3):
            a, b = pairs()
            b.send(b"x")
            h = Recorder()
            lp.add(a.fileno(), EPOLLIN, h)
            handlers.append(h)
        for _ in range(3):
            lp.run_once()
        assert [len(h.events) for h in handlers] == [1, 1, 1]
        for _ in range(3):
            lp.run_once()
        assert [len(h.events) for h in handlers] == [2, 2, 2]
    finally:
        lp.close()


def test_a_failing_handler_gets_on_error_and_the_loop_goes_on(
    loop: Loop,
    pairs: Callable[[], tuple[socket.socket, socket.socket]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    boom = RuntimeError("handler boom")
    bad, worse, good = Recorder(fail=boom), Recorder(fail=boom, fail_cleanup=True), Recorder()
    for h in (bad, worse, good):
        a, b = pairs()
        b.send(b"x")
        loop.add(a.fileno(), EPOLLIN, h)
    ran: list[int] = []
    loop.call_soon(lambda: ran.append(1))
    with caplog.at_level(logging.ERROR, logger="aws.loop"):
        loop.run_once()
    assert bad.errors == [boom]
    assert worse.errors == [boom]  # its on_error raised as well: logged, not propagated
    assert good.events == [EPOLLIN]  # same turn, after the failures
    assert ran == [1]  # the turn went on to the ready queue
    loop.run_once()
    assert len(good.events) == 2  # and the loop to the next turn
    assert any("cleanup of" in r.getMessage() for r in caplog.records)


def test_base_exceptions_are_not_swallowed(
    loop: Loop, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    # KeyboardInterrupt/SystemExit must stop a worker, not be treated as one bad connection.
    a, b = pairs()
    b.send(b"x")
    h = Recorder(fail=KeyboardInterrupt())
    loop.add(a.fileno(), EPOLLIN, h)
    with pytest.raises(KeyboardInterrupt):
        loop.run_once()
    assert h.errors == []


def test_forget_drops_the_handler_and_leaves_epoll_to_the_close(
    loop: Loop, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    a, b = pairs()
    fd = a.fileno()
    h = Recorder()
    loop.add(fd, EPOLLIN, h)
    b.send(b"x")
    loop.forget(fd)
    assert fd not in loop.handlers
    turn(loop)
    assert h.events == []  # the event still comes, but finds no handler
    with pytest.raises(FileExistsError):
        loop.add(fd, EPOLLIN, h)  # no epoll_ctl was spent: still registered
    loop.forget(fd)
    loop.forget(fd)  # forgetting twice, or an unknown fd, is harmless
    loop.forget(987654)
    # Closing the fd takes it out of the epoll set: the same number, now naming another
    # file description, registers afresh.
    c, d = pairs()  # before the close, so that c cannot take the freed number itself
    a.close()
    os.dup2(c.fileno(), fd)
    try:
        h2 = Recorder()
        loop.add(fd, EPOLLIN, h2)
        d.send(b"y")
        loop.run_once()
        assert h2.events == [EPOLLIN]
        assert h.events == []
    finally:
        loop.remove(fd)
        os.close(fd)


def test_remove_unregisters_now_and_tolerates_what_is_gone(
    loop: Loop, pairs: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    a, b = pairs()
    fd = a.fileno()
    h = Recorder()
    loop.add(fd, EPOLLIN, h)
    b.send(b"x")
    loop.remove(fd)
    assert fd not in loop.handlers
    turn(loop)
    assert h.events == []
    loop.add(fd, EPOLLIN, h)  # unregistered from epoll: adding again is allowed
    loop.run_once()
    assert h.events == [EPOLLIN]
    loop.remove(fd)
    loop.remove(fd)  # twice: epoll's ENOENT is swallowed
    loop.remove(987654)  # never known (EBADF)
    loop.remove(-1)  # not an fd at all (ValueError)
    a.close()
    loop.remove(fd)  # already closed


def test_close_closes_the_epoll_fd(clock: FakeClock) -> None:
    lp = Loop(clock=clock)
    fd = lp.epoll.fileno()
    lp.close()
    assert lp.epoll.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_call_next_turn_from_an_event_waits_for_the_next_turn(loop: Loop) -> None:
    """call_soon from an event runs in the same turn; call_next_turn, in the next."""
    ran: list[str] = []
    a, b = socket.socketpair()
    try:

        class Reader:
            def on_event(self, events: int) -> None:
                a.recv(16)
                loop.call_soon(lambda: ran.append("soon"))
                loop.call_next_turn(lambda: ran.append("next turn"))

            def on_error(self, exc: BaseException) -> None:
                raise AssertionError(exc)

        loop.add(a.fileno(), EPOLLIN, Reader())
        b.send(b"x")
        loop.run_once()
        assert ran == ["soon"]
        loop.run_once()  # nothing to read now: it does not block, and runs the callback
        assert ran == ["soon", "next turn"]
        assert not loop.ready and not loop.next_turn
    finally:
        loop.remove(a.fileno())
        a.close()
        b.close()
