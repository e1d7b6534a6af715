"""The connection's states and the one table of moves between them (h11's ``_state.py``
is the model: the protocol as data, the code only looks it up).

Each entry of :data:`MACHINE` names the trigger of its move, so the table is also the
documentation: ``python -m aws.states`` draws it as a Mermaid diagram, and a test keeps
the copy in the README equal to that drawing.

States are plain sentinels, not an ``enum.Enum``: on Python 3.11 ``State.X`` costs
~80 ns per lookup through the enum metaclass where a module global costs ~10 ns
(measured with timeit on this machine), and the hot path of a keep-alive request looks
states up a dozen times. A sentinel imported as a module name has one spelling and the
global's speed.
"""

from __future__ import annotations

import sys


class State:
    """One state of a connection, compared by identity (``is``)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value  # what the connection is doing, for log lines

    def __repr__(self) -> str:
        return f"<State {self.name}>"


HANDSHAKE = State("HANDSHAKE", "in the TLS handshake")
READ_HEAD = State("READ_HEAD", "reading a request head")
READ_BODY = State("READ_BODY", "discarding a request body")
SEND_HEAD = State("SEND_HEAD", "sending a head (and a small body)")
SEND_FILE = State("SEND_FILE", "sending a static file (sendfile, or read + SSL_write)")
AIO_WAIT = State(
    "AIO_WAIT", "waiting for the disk: an AIO read, or a range read into the page cache"
)
SEND_BUFFER = State("SEND_BUFFER", "sending an AIO buffer")
DONE = State("DONE", "response complete")
LINGER = State("LINGER", "closing: draining what the client still sends")
CLOSED = State("CLOSED", "closed")

STATES: tuple[State, ...] = (
    HANDSHAKE,
    READ_HEAD,
    READ_BODY,
    SEND_HEAD,
    SEND_FILE,
    AIO_WAIT,
    SEND_BUFFER,
    DONE,
    LINGER,
    CLOSED,
)

_GONE = "peer reset, timeout or fatal error"

# Where an accepted connection starts, and why.
ENTRIES: dict[State, str] = {
    READ_HEAD: "accepted on the plain port",
    HANDSHAKE: "accepted on the TLS port",
}

# state -> {next state: what makes the connection take that move}
MACHINE: dict[State, dict[State, str]] = {
    # Non-blocking: each SSLWantRead/WantWrite waits for that event; the header timeout
    # runs from the accept, so a handshake stalled halfway is cut by the sweep.
    HANDSHAKE: {
        READ_HEAD: "handshake done (TLS 1.2+, ALPN http/1.1)",
        CLOSED: "handshake failed or timed out, plain HTTP on the TLS port (400), or " + _GONE,
    },
    READ_HEAD: {
        READ_BODY: "head with a body to discard",
        SEND_HEAD: "head answered (error, redirect, or a head before a file)",
        AIO_WAIT: "head answered with a /dynamic/ file: first read submitted",
        CLOSED: "client closed or " + _GONE,
    },
    READ_BODY: {
        SEND_HEAD: "body discarded (or a bad chunked one refused), answered",
        AIO_WAIT: "body discarded, /dynamic/ read submitted",
        CLOSED: "client closed mid-body or " + _GONE,
    },
    SEND_HEAD: {
        SEND_FILE: "head sent, a /static/ body follows",
        DONE: "head (and small body) sent",
        CLOSED: _GONE,
    },
    # Over TLS without kTLS the same state reads chunks and SSL_writes them.
    SEND_FILE: {
        DONE: "last byte sent by sendfile (or SSL_write)",
        AIO_WAIT: "the next range is not in the page cache: read it by AIO or into it",
        CLOSED: _GONE,
    },
    # A dynamic response's head waits for the first chunk, so both leave in one sendmsg.
    AIO_WAIT: {
        SEND_BUFFER: "the chunk to send next is read",
        SEND_FILE: "the cold range is in the page cache now: sendfile it",
        CLOSED: _GONE,
    },
    SEND_BUFFER: {
        AIO_WAIT: "buffer sent, the next chunk is still being read",
        SEND_FILE: "the cold range is sent: back to sendfile",
        DONE: "last byte sent",
        CLOSED: _GONE,
    },
    DONE: {
        READ_HEAD: "keep-alive: the next request (maybe already buffered)",
        LINGER: "closing with unread input: half-close and drain",
        CLOSED: "closing",
    },
    LINGER: {CLOSED: "client closed, or linger timeout"},
    CLOSED: {},
}

TRANSITIONS: dict[State, frozenset[State]] = {s: frozenset(MACHINE[s]) for s in STATES}
SENDING = frozenset({SEND_HEAD, SEND_FILE, SEND_BUFFER})
# A response is under way in these: one that ends here early (the client left, a send
# failed, the file shrank, no progress, a drain's deadline) is still logged and counted.
ANSWERING = SENDING | {AIO_WAIT}


class IllegalTransition(RuntimeError):
    pass


def mermaid() -> str:
    """The machine as a Mermaid state diagram, one edge per table entry."""
    lines = ["stateDiagram-v2"]
    lines += [f"    [*] --> {state.name}: {why}" for state, why in ENTRIES.items()]
    for state in STATES:
        for nxt, trigger in MACHINE[state].items():
            lines.append(f"    {state.name} --> {nxt.name}: {trigger}")
    lines.append("    CLOSED --> [*]")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(mermaid())
