"""The connection state machine: the table itself, and the states real requests go through.

The second half drives a real :class:`aws.connection.Connection` in-process: a real
``Server`` and ``Loop`` over a real document root, one end of a ``socketpair`` handed to the
connection, the other end played by the test, and ``loop.run_once()`` pumped until the
response has arrived. A subclass records every state the connection enters.
"""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aws import states as S
from aws.config import Config
from aws.connection import (
    MAX_PIPELINED_PER_TURN,
    SENDING,
    TRANSITIONS,
    Connection,
    IllegalTransition,
    State,
)
from aws.loop import Loop
from aws.metrics import WorkerCounters
from aws.server import Server
from tests.conftest import DocRoot, file_name

BIG = 1024 * 1024 + 3  # larger than a socketpair buffer and than one AIO chunk

# -- the table ---------------------------------------------------------------------------


def _walk(path: list[State]) -> None:
    """Every step of ``path`` is allowed by the table."""
    for a, b in itertools.pairwise(path):
        assert b in TRANSITIONS[a], f"{a.name} -> {b.name} is not in TRANSITIONS"


def test_every_state_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(S.STATES)
    for targets in TRANSITIONS.values():
        assert isinstance(targets, frozenset)
        assert targets <= set(S.STATES)


def test_closed_is_terminal_and_reachable_from_everywhere() -> None:
    assert TRANSITIONS[S.CLOSED] == frozenset()
    for state in S.STATES:
        if state is not S.CLOSED:
            assert S.CLOSED in TRANSITIONS[state], state.name
            assert state not in TRANSITIONS[state], f"{state.name} loops onto itself"


def test_every_state_is_reachable_from_an_entry() -> None:
    assert set(S.ENTRIES) == {S.READ_HEAD, S.HANDSHAKE}
    seen = set(S.ENTRIES)
    todo = list(S.ENTRIES)
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S.STATES)


def test_sending_states() -> None:
    assert frozenset({S.SEND_HEAD, S.SEND_FILE, S.SEND_BUFFER}) == SENDING


def test_static_happy_path() -> None:
    _walk([S.READ_HEAD, S.SEND_HEAD, S.SEND_FILE, S.DONE, S.READ_HEAD])


def test_dynamic_happy_path() -> None:
    _walk([S.READ_HEAD, S.AIO_WAIT, S.SEND_BUFFER, S.DONE, S.READ_HEAD])
    # any number of further chunks that were not read yet when the previous one was sent
    _walk([S.READ_HEAD, *[S.AIO_WAIT, S.SEND_BUFFER] * 5, S.DONE, S.READ_HEAD])


def test_other_legal_paths() -> None:
    _walk([S.READ_HEAD, S.READ_BODY, S.SEND_HEAD, S.SEND_FILE, S.DONE, S.READ_HEAD])
    _walk([S.READ_HEAD, S.READ_BODY, S.AIO_WAIT, S.SEND_BUFFER, S.DONE])
    _walk([S.READ_HEAD, S.SEND_HEAD, S.DONE, S.LINGER, S.CLOSED])  # an error, then closing
    _walk([S.READ_HEAD, S.SEND_HEAD, S.DONE, S.CLOSED])


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.READ_HEAD, S.SEND_FILE),
        (S.READ_HEAD, S.SEND_BUFFER),
        (S.READ_HEAD, S.DONE),
        (S.SEND_HEAD, S.AIO_WAIT),
        (S.SEND_FILE, S.SEND_BUFFER),
        (S.AIO_WAIT, S.DONE),
        (S.DONE, S.SEND_HEAD),
        (S.LINGER, S.READ_HEAD),
        (S.CLOSED, S.READ_HEAD),
        (S.CLOSED, S.CLOSED),
    ],
)
def test_illegal_transition_raises(src: State, dst: State) -> None:
    assert dst not in TRANSITIONS[src]
    conn = Connection.__new__(Connection)  # _to only needs .state
    conn.state = src
    with pytest.raises(IllegalTransition, match=f"{src.name} -> {dst.name}"):
        conn._to(dst)
    assert conn.state is src  # unchanged


def test_legal_transition_through_to() -> None:
    conn = Connection.__new__(Connection)
    conn.state = S.READ_HEAD
    for nxt in (S.SEND_HEAD, S.SEND_FILE, S.DONE, S.READ_HEAD, S.AIO_WAIT, S.SEND_BUFFER):
        conn._to(nxt)
        assert conn.state is nxt


# -- a real connection, in-process -------------------------------------------------------


class RecordingConnection(Connection):
    """A Connection that records every state it enters (it gets a __dict__: no __slots__)."""

    def __init__(self, server: Server, sock: socket.socket, peer: object) -> None:
        super().__init__(server, sock, peer)
        self.trace: list[State] = [self.state]

    def _to(self, new: State) -> None:
        super()._to(new)
        self.trace.append(new)


class Harness:
    """A real Server and Loop; the test plays the client over a socketpair."""

    def __init__(
        self,
        root: DocRoot,
        clock: Callable[[], float] = time.monotonic,
        counters: WorkerCounters | None = None,
        **options: object,
    ) -> None:
        self.loop = Loop(clock=clock)
        # Poll briefly instead of until the next sweep timer: the test pumps the loop itself.
        self.loop._timeout = lambda: 0.002  # type: ignore[method-assign]
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        config = Config(root=str(root.path), **options)  # type: ignore[arg-type]
        self.server = Server(config, self.loop, self.listener, counters=counters)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.client = theirs
        self.conn = RecordingConnection(self.server, ours, "socketpair")
        self.server.conns.add(self.conn)
        self.conn.start()
        self.received = bytearray()
        self.client_eof = False

    def _read_client(self) -> None:
        while True:
            try:
                chunk = self.client.recv(1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                self.client_eof = True
                return
            self.received += chunk

    def pump_until(self, done: object, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, (
                f"stuck in {self.conn.state.name}; trace {[s.name for s in self.conn.trace]}"
            )
            self.loop.run_once()
            self._read_client()

    def responses(self, count: int, head_only: tuple[bool, ...] = ()) -> list[tuple[int, bytes]]:
        """Pump until ``count`` whole responses arrived; returns (status, body) each."""
        out: list[tuple[int, bytes]] = []

        def parsed() -> bool:
            out.clear()
            buf = bytes(self.received)
            for i in range(count):
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return False
                head = buf[:end].decode("latin-1")
                status = int(head.split(" ", 2)[1])
                m = re.search(r"(?im)^content-length: *(\d+)", head)
                assert m is not None, head
                length = 0 if (i < len(head_only) and head_only[i]) else int(m.group(1))
                if len(buf) < end + 4 + length:
                    return False
                out.append((status, buf[end + 4 : end + 4 + length]))
                buf = buf[end + 4 + length :]
            return True

        self.pump_until(parsed)
        return out

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.loop.close()


@pytest.fixture
def harness(docroot: DocRoot) -> Iterator[Harness]:
    docroot.warm_small()  # the traces below are of cached files: a cold one goes by AIO
    h = Harness(docroot)
    yield h
    h.close()


def _get(path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def _names(trace: list[State]) -> list[str]:
    return [s.name for s in trace]


def _settle(h: Harness) -> None:
    """A few more turns: anything left to do (there should be nothing) gets done."""
    for _ in range(5):
        h.loop.run_once()


@pytest.mark.parametrize("size", [1, 4097, BIG])
def test_static_get_states(harness: Harness, docroot: DocRoot, size: int) -> None:
    path = f"/static/{file_name(size)}"
    harness.client.sendall(_get(path))
    [(status, body)] = harness.responses(1)
    assert status == 200
    assert body == docroot.content(path)
    _settle(harness)
    assert _names(harness.conn.trace) == [
        "READ_HEAD",
        "SEND_HEAD",
        "SEND_FILE",
        "DONE",
        "READ_HEAD",
    ]
    assert harness.conn.state is S.READ_HEAD
    assert harness.conn.res is None  # the file was released


_DYNAMIC = re.compile(r"READ_HEAD (AIO_WAIT SEND_BUFFER )+DONE READ_HEAD")


@pytest.mark.parametrize("size", [1, 4097, BIG])
def test_dynamic_get_states(harness: Harness, docroot: DocRoot, size: int) -> None:
    path = f"/dynamic/{file_name(size)}"
    harness.client.sendall(_get(path))
    [(status, body)] = harness.responses(1)
    assert status == 200
    assert body == docroot.content(path)
    _settle(harness)
    trace = " ".join(_names(harness.conn.trace))
    assert _DYNAMIC.fullmatch(trace), trace
    if size < 512 * 1024:  # one AIO chunk: exactly one wait
        assert trace == "READ_HEAD AIO_WAIT SEND_BUFFER DONE READ_HEAD"
    assert harness.conn.body is None  # the AIO buffers were given back


def test_pipelined_pair_states(harness: Harness, docroot: DocRoot) -> None:
    a, b = "/static/f4097.bin", "/dynamic/f4095.bin"
    harness.client.sendall(_get(a) + _get(b))
    (s1, b1), (s2, b2) = harness.responses(2)
    assert (s1, s2) == (200, 200)
    assert b1 == docroot.content(a)
    assert b2 == docroot.content(b)
    _settle(harness)
    assert _names(harness.conn.trace) == [
        "READ_HEAD",
        "SEND_HEAD",
        "SEND_FILE",
        "DONE",
        "READ_HEAD",
        "AIO_WAIT",
        "SEND_BUFFER",
        "DONE",
        "READ_HEAD",
    ]
    assert harness.conn.requests == 2


def test_pipelined_answers_stop_at_a_turns_budget(docroot: DocRoot) -> None:
    """Requests a client pipelined at once are answered, in one turn, only until their
    bodies have sent a turn's budget (--sendfile-chunk); the rest wait for the next
    turns, behind the other connections' events, and all come back in order."""
    docroot.warm_small()
    h = Harness(docroot, sendfile_chunk=16 * 1024)
    try:
        path = "/static/f4097.bin"
        h.client.sendall(_get(path) * 10)
        h.loop.run_once()  # 4 x 4,097 bytes: the budget is spent
        assert h.conn.requests == 4
        h.loop.run_once()
        assert h.conn.requests == 8
        answers = h.responses(10)
        assert answers == [(200, docroot.content(path))] * 10
    finally:
        h.close()


def test_more_pipelined_requests_than_a_turn_takes_wait_for_the_next_turn(
    harness: Harness, docroot: DocRoot
) -> None:
    """Small answers cost no budget to speak of, but one turn answers at most
    MAX_PIPELINED_PER_TURN; the rest go in the next turn, not later in the same one."""
    path = "/static/f1.bin"
    harness.client.sendall(_get(path) * (MAX_PIPELINED_PER_TURN + 8))
    harness.loop.run_once()
    assert harness.conn.requests == MAX_PIPELINED_PER_TURN
    harness.loop.run_once()
    assert harness.conn.requests == MAX_PIPELINED_PER_TURN + 8
    answers = harness.responses(MAX_PIPELINED_PER_TURN + 8)
    assert answers == [(200, docroot.content(path))] * (MAX_PIPELINED_PER_TURN + 8)


def test_pipelined_static_pair_states(harness: Harness, docroot: DocRoot) -> None:
    a, b = f"/static/{file_name(BIG)}", "/static/f0.bin"
    harness.client.sendall(_get(a) + _get(b))
    (s1, b1), (s2, b2) = harness.responses(2)
    assert (s1, s2) == (200, 200)
    assert b1 == docroot.content(a)
    assert b2 == b""
    _settle(harness)
    # an empty file has no body to send: its head goes out alone
    assert _names(harness.conn.trace) == [
        "READ_HEAD",
        "SEND_HEAD",
        "SEND_FILE",
        "DONE",
        "READ_HEAD",
        "SEND_HEAD",
        "DONE",
        "READ_HEAD",
    ]


def test_not_found_keeps_the_connection(harness: Harness) -> None:
    harness.client.sendall(_get("/static/missing.bin"))
    [(status, body)] = harness.responses(1)
    assert status == 404
    assert b"404" in body
    _settle(harness)
    assert _names(harness.conn.trace) == ["READ_HEAD", "SEND_HEAD", "DONE", "READ_HEAD"]
    # and it goes on serving
    harness.client.sendall(_get("/static/hello.txt"))
    harness.received.clear()
    [(status, body)] = harness.responses(1)
    assert (status, body) == (200, b"hello\n")


def test_head_request_states(harness: Harness) -> None:
    harness.client.sendall(_get("/dynamic/f4097.bin", method="HEAD"))
    [(status, body)] = harness.responses(1, head_only=(True,))
    assert status == 200
    assert body == b""
    _settle(harness)
    assert _names(harness.conn.trace) == ["READ_HEAD", "SEND_HEAD", "DONE", "READ_HEAD"]


def test_connection_close_states(harness: Harness, docroot: DocRoot) -> None:
    path = "/static/f4096.bin"
    harness.client.sendall(_get(path, "Connection: close\r\n"))
    [(status, body)] = harness.responses(1)
    assert status == 200
    assert body == docroot.content(path)
    harness.pump_until(lambda: harness.client_eof)
    assert _names(harness.conn.trace) == ["READ_HEAD", "SEND_HEAD", "SEND_FILE", "DONE", "CLOSED"]
    assert harness.conn not in harness.server.conns


def test_malformed_request_lingers_then_closes(harness: Harness) -> None:
    harness.client.sendall(b"BROKEN\r\n\r\n")
    [(status, body)] = harness.responses(1)
    assert status == 400
    assert b"400" in body
    harness.pump_until(lambda: harness.client_eof)  # the server shut down its side
    assert harness.conn.state is S.LINGER
    harness.client.shutdown(socket.SHUT_WR)  # the client goes away: linger ends
    harness.pump_until(lambda: harness.conn.state is S.CLOSED)
    assert _names(harness.conn.trace) == ["READ_HEAD", "SEND_HEAD", "DONE", "LINGER", "CLOSED"]
    assert harness.conn not in harness.server.conns


def test_request_with_body_states(harness: Harness) -> None:
    head = _get("/static/hello.txt", "Content-Length: 10\r\n")
    harness.client.sendall(head + b"01234")  # half of the body
    harness.pump_until(lambda: harness.conn.state is S.READ_BODY)
    harness.client.sendall(b"56789")
    [(status, body)] = harness.responses(1)
    assert (status, body) == (200, b"hello\n")
    _settle(harness)
    assert _names(harness.conn.trace) == [
        "READ_HEAD",
        "READ_BODY",
        "SEND_HEAD",
        "SEND_FILE",
        "DONE",
        "READ_HEAD",
    ]


def test_the_readme_draws_this_table() -> None:
    """The README's diagram is the table's own drawing (``python -m aws.states``)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- state-machine:begin -->\n```mermaid\n", 1)[1]
    drawn = block.split("```\n<!-- state-machine:end -->", 1)[0]
    assert drawn == S.mermaid(), "README diagram is stale: paste `python -m aws.states` there"
    for state in S.STATES:
        for nxt, trigger in S.MACHINE[state].items():
            assert f"{state.name} --> {nxt.name}: {trigger}" in drawn
