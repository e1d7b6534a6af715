"""Timeouts in-process, on a fake clock: 408, keep-alive, send-timeout, linger and the
open-file cache's revalidation, without a single sleep.

A real ``Server`` and ``Loop`` over the session's document root; the loop reads a clock
the test moves, and the worker's sweep (every 0.25 s of that clock) does the rest.
"""

from __future__ import annotations

import os
import struct
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from aws import connection
from aws import states as S
from aws.config import Config
from aws.connection import LINGER_TIMEOUT
from tests.conftest import DocRoot
from tests.test_connection_states import Harness
from tests.test_loop import FakeClock

pytestmark = pytest.mark.timeout(30)
DEFAULTS = Config()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def harness(docroot: DocRoot, clock: FakeClock) -> Iterator[Harness]:
    h = Harness(docroot, clock=clock)
    yield h
    h.close()


def let_time_pass(h: Harness, clock: FakeClock, seconds: float, read: bool = True) -> None:
    """Move the clock in sweep-sized steps, a loop turn after each (and the client reads
    what arrived, unless it is playing a client that stopped reading)."""
    while seconds > 0:
        step = min(0.25, seconds)
        seconds -= step
        clock.advance(step)
        h.loop.run_once()
        if read:
            h._read_client()


def test_a_head_that_never_ends_gets_408_then_close(harness: Harness, clock: FakeClock) -> None:
    harness.client.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n")
    let_time_pass(harness, clock, DEFAULTS.header_timeout - 1)
    assert harness.conn.state is S.READ_HEAD and not harness.received
    let_time_pass(harness, clock, 1.5)
    assert harness.received.startswith(b"HTTP/1.1 408 ")
    assert harness.conn.state is S.CLOSED
    harness.pump_until(lambda: harness.client_eof)


def test_an_idle_keepalive_connection_closes_silently(harness: Harness, clock: FakeClock) -> None:
    harness.client.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    [(status, _)] = harness.responses(1)
    assert status == 200
    answered = len(harness.received)
    let_time_pass(harness, clock, DEFAULTS.keepalive_timeout - 1)
    assert harness.conn.state is S.READ_HEAD
    let_time_pass(harness, clock, 1.5)
    assert harness.conn.state is S.CLOSED
    harness.pump_until(lambda: harness.client_eof)
    assert len(harness.received) == answered  # nothing said: no 408 to an idle client


def test_a_client_that_stops_reading_is_dropped_after_send_timeout(
    harness: Harness, clock: FakeClock, docroot: DocRoot
) -> None:
    harness.client.sendall(b"GET /static/f67108864.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    for _ in range(5):
        harness.loop.run_once()  # the socketpair fills; the client reads nothing
    # Blocked on the client, by sendfile, or by AIO buffers where the page cache did not
    # hold the file (the mixed path).
    assert harness.conn.state in S.SENDING
    # At the deadline the socket's queue is measured; a quarter of the timeout later it
    # has not moved: the client stopped.
    let_time_pass(harness, clock, DEFAULTS.send_timeout * 1.25 - 1, read=False)
    assert harness.conn.state in S.SENDING
    let_time_pass(harness, clock, 1.5, read=False)
    assert harness.conn.state is S.CLOSED
    assert harness.conn.res is None  # the file reference went back


def test_a_slow_reader_whose_socket_stays_full_is_not_dropped(
    harness: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too slow to free the part of the buffer EPOLLOUT waits for, yet reading: its
    socket's queue (SIOCOUTQ) shrinks between deadlines, so it stays; once the queue
    stops shrinking, it is dropped. (A socketpair cannot play a slow TCP reader: a sip
    wakes EPOLLOUT. The queue the kernel would report is played here.)"""
    harness.client.sendall(b"GET /static/f67108864.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    for _ in range(5):
        harness.loop.run_once()
    assert harness.conn.state in S.SENDING
    queue = [4_000_000]

    def outq(fd: int, request: int, arg: bytes) -> bytes:
        assert request == termios.TIOCOUTQ
        return struct.pack("i", queue[0])

    monkeypatch.setattr(connection.fcntl, "ioctl", outq)
    let_time_pass(harness, clock, DEFAULTS.send_timeout + 0.5, read=False)  # measured
    for _ in range(4):  # four more timeouts, a little read before each
        queue[0] -= 16 * 1024
        let_time_pass(harness, clock, DEFAULTS.send_timeout, read=False)
        assert harness.conn.state in S.SENDING
    let_time_pass(harness, clock, DEFAULTS.send_timeout + 0.5, read=False)  # it stopped
    assert harness.conn.state is S.CLOSED


def test_linger_ends_when_its_timeout_passes(harness: Harness, clock: FakeClock) -> None:
    # A refused request with more bytes behind it: answer, half-close, drain, then close.
    harness.client.sendall(b"BREW /static/x HTTP/1.1\r\nHost: t\r\n\r\nmore bytes")
    harness.pump_until(lambda: harness.conn.state is S.LINGER)
    assert harness.received.startswith(b"HTTP/1.1 501 ")
    let_time_pass(harness, clock, LINGER_TIMEOUT - 0.5)
    assert harness.conn.state is S.LINGER
    let_time_pass(harness, clock, 1.0)
    assert harness.conn.state is S.CLOSED


def test_a_rewritten_file_is_seen_after_the_revalidation_interval(
    harness: Harness, clock: FakeClock, docroot: DocRoot
) -> None:
    path = Path(docroot.path) / "static" / "revalidate.txt"
    path.write_bytes(b"first\n")
    try:
        harness.client.sendall(b"GET /static/revalidate.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        assert harness.responses(1) == [(200, b"first\n")]
        harness.received.clear()
        tmp = path.with_name(".revalidate.tmp")
        tmp.write_bytes(b"second\n")
        os.replace(tmp, path)
        harness.client.sendall(b"GET /static/revalidate.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        assert harness.responses(1) == [(200, b"first\n")]  # still within the interval
        harness.received.clear()
        clock.advance(DEFAULTS.open_file_valid + 0.01)
        harness.client.sendall(b"GET /static/revalidate.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        assert harness.responses(1) == [(200, b"second\n")]
    finally:
        path.unlink()


def test_a_log_that_fails_does_not_keep_the_connection_or_stop_the_sweep(
    harness: Harness, clock: FakeClock
) -> None:
    """The line of a response cut short is written from close(): a full disk under the
    access log must not leave the connection open, nor end the worker's sweep."""

    def full_disk(conn: object) -> None:
        raise OSError(28, os.strerror(28))

    harness.server.on_response = full_disk  # type: ignore[assignment]
    harness.client.sendall(b"GET /static/f67108864.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    for _ in range(5):
        harness.loop.run_once()
    assert harness.conn.state in S.SENDING
    let_time_pass(harness, clock, DEFAULTS.send_timeout * 1.25 + 1, read=False)
    assert harness.conn.state is S.CLOSED
    assert harness.conn not in harness.server.conns
    sweeps = [cb for _, _, cb in harness.loop._timers if cb == harness.server._sweep]
    assert sweeps, "the sweep was not armed again"
