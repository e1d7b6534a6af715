"""One client connection as an explicit state machine.

The states and every legal move are the table in :mod:`aws.states`; :data:`ON_EVENT`
maps each state to the method that handles a readiness event in it, and every move
goes through :meth:`Connection._to`, which checks it against the table. What to answer
comes from :mod:`aws.respond`; the bytes move in :mod:`aws.transfer`; requests are cut
from the stream by :class:`aws.http.Framer`. This module only drives them.

Partial reads and partial writes are the normal case: every send loops until the kernel
says EAGAIN, then waits for EPOLLOUT; every read keeps what it got and waits for more.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

from aws import respond, transfer
from aws.aio import DynamicBody
from aws.http import Framer, HttpError, Request
from aws.loop import EPOLLERR, EPOLLHUP, EPOLLIN
from aws.multipart import Cursor, MultipartBody
from aws.replaying import Again, Replaying
from aws.sending import READ_AHEAD_LIMIT, Sending
from aws.states import (
    AIO_WAIT,
    ANSWERING,
    CLOSED,
    DONE,
    LINGER,
    READ_BODY,
    READ_HEAD,
    SEND_BUFFER,
    SEND_FILE,
    SEND_HEAD,
    SENDING,
    TRANSITIONS,
    IllegalTransition,
    State,
)
from aws.worker_context import Worker

if TYPE_CHECKING:
    from aws.files import Resource

log = logging.getLogger("aws.connection")

__all__ = ["SENDING", "TRANSITIONS", "Connection", "IllegalTransition", "State", "Worker"]

CONTINUE = b"100-continue"


RECV_SIZE = 64 * 1024
MAX_PIPELINED_PER_TURN = 32  # then wait for the next turn, behind the other connections
LINGER_TIMEOUT = 2.0


class Connection(Replaying, Sending):
    __slots__ = (
        "again",
        "began",
        "body",
        "bulk",
        "busy",
        "corked",
        "deadline",
        "eof",
        "fd",
        "framer",
        "keep_alive",
        "linger",
        "mask",
        "out",
        "outq",
        "parts",
        "path",
        "peer",
        "pending",
        "pos",
        "queued",
        "refused",
        "registered",
        "req",
        "requests",
        "res",
        "sent",
        "server",
        "sock",
        "state",
        "status",
        "stop",
        "warm_ahead",
        "warm_for",
        "warm_pending",
        "warm_to",
    )

    def __init__(self, server: Worker, sock: socket.socket, peer: object) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.state = READ_HEAD
        self.mask = 0
        self.registered = False  # in the epoll set: only once it has to wait for something
        self.framer = Framer()
        self.eof = False  # the client shut down its sending side
        self.busy = False  # inside _process: completions must not recurse into it
        self.requests = 0
        self.req: Request | None = None  # the last request answered (kept for _replay)
        self.refused: bytes | None = None  # the request line of a request refused unparsed
        self.outq = -1  # the socket's queue at the last send deadline (-1: not looked)
        # After a short reply that may be given again: the request's bytes, the reply,
        # the Date it carries, its cache and the cache's entry for it (see _replay).
        self.again: Again | None = None
        self.pending: Request | None = None  # waiting for its body to be discarded
        self.keep_alive = True
        self.out = b""  # head (or whole small response) bytes not yet sent
        self.parts: Cursor | None = None  # a multipart /static/ body's place
        self.res: Resource | None = None
        self.body: DynamicBody | MultipartBody | None = None
        self.pos = 0
        self.stop = 0
        self.status = 0
        self.sent = 0
        self.began = 0.0  # loop time the current response was decided (for its duration)
        self.corked = False
        self.bulk = False  # a long transfer: it moves in the worker's fair turns
        self.queued = False  # in their line, waiting for its share of a turn
        self.warm_to = 0  # the file is known to be in the page cache up to here
        # --static-cold cache (aws.warming): which response asked, the end of what it
        # asked into the page cache, and the starts of its windows not in yet.
        self.warm_for = -1
        self.warm_ahead = 0
        self.warm_pending: set[int] = set()
        # How the last body left, for the access log and metrics: "" (no body),
        # "sendfile", "mixed" (sendfile, and a cold part read by AIO or into the page
        # cache), "aio-direct" or "aio-buffered".
        self.path = ""
        self.linger = False  # the client may still be sending: close gently
        # Checked by the worker's periodic sweep (no timer object per connection).
        self.deadline: float | None = server.loop.now + server.config.header_timeout

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} peer={self.peer} state={self.state.name}>"

    @property
    def inbuf(self) -> bytes:
        """Received bytes not yet part of an answered request."""
        return self.framer.buf

    @property
    def idle(self) -> bool:
        """Between requests with nothing buffered: safe to close when draining."""
        return self.state is READ_HEAD and not self.framer.buf

    # -- the machine ---------------------------------------------------------------------

    def _to(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.name} -> {new.name}")
        self.state = new

    def _want(self, mask: int) -> None:
        if mask != self.mask:
            self.mask = mask
            if self.registered:
                self.server.loop.modify(self.fd, mask)
            else:
                self.registered = True
                self.server.loop.add(self.fd, mask, self)

    def start(self) -> None:
        """Read at once: the request has often arrived with the handshake, and a
        connection answered (and closed) right away never costs an epoll_ctl."""
        self._on_readable(EPOLLIN)
        if self.state is READ_HEAD or self.state is READ_BODY:
            self._want(EPOLLIN)

    def on_event(self, events: int) -> None:
        ON_EVENT[self.state](self, events)

    def on_error(self, exc: BaseException) -> None:
        self.close()

    # -- timeouts ------------------------------------------------------------------------

    def timed_out(self) -> None:
        """Called by the worker's sweep once ``deadline`` has passed."""
        state = self.state
        if state is READ_HEAD and not self.framer.buf and (self.requests or self.server.draining):
            self.close()  # idle (keep-alive, or nothing sent while draining): nothing to say
            return
        if state is READ_HEAD or state is READ_BODY:
            log.info("%s: 408, no complete request within the timeout", self.peer)
            server = self.server
            reply = respond.error(HttpError(408, "request timeout"), None, server.date.value, False)
            rest = reply.head
            with contextlib.suppress(OSError):  # a full socket: the client gets the close
                while rest:
                    rest = rest[self.sock.send(rest) :]
            began = server.loop.now - server.config.header_timeout
            self._log_unasked(408, max(0, reply.stop - len(rest)), began)  # nginx logs them
            self.close()
            return
        if state in SENDING and self._reading_still():
            return
        if state is not LINGER:
            log.info(
                "%s: dropped, no progress for %ss while %s",
                self.peer,
                self.server.config.send_timeout,
                state.value,
            )
        self.close()

    def _log_unasked(self, status: int, page: int, began: float) -> None:
        """Log and count an answer to no parsed request ("-" 408, or a 400 for plain
        HTTP on the TLS port): ``page`` bytes of its page went."""
        finish = self.server.on_response
        if finish is not None:
            self.req = self.refused = None
            self.status, self.path, self.sent, self.began = status, "", page, began
            finish(self)

    def _reading_still(self) -> bool:
        """Whether a client whose socket stayed full past --send-timeout is still taking
        bytes: a slow reader frees too little of a multi-megabyte send buffer for
        EPOLLOUT (a third of it), yet it is not one that stopped. The socket's queue
        (SIOCOUTQ) is read at each deadline: shorter than at the last one, the client
        read; the first deadline only takes the measure, for a quarter of the timeout."""
        try:
            queued = struct.unpack("i", fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            return False
        timeout = self.server.config.send_timeout
        if self.outq >= 0 and queued >= self.outq:
            return False  # nothing taken since the last look: it stopped
        wait = timeout / 4 if self.outq < 0 else timeout
        self.outq = queued
        self.deadline = self.server.loop.now + wait
        return True

    # -- reading -------------------------------------------------------------------------

    def _recv(self) -> bytes | None:
        """Bytes from the socket; b"" at EOF; None when there are none yet."""
        try:
            return self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            log.debug("%s: recv failed: %s", self.peer, exc)
            return b""

    def _on_readable(self, events: int) -> None:
        # The hot path of every request: recv is inlined here (each Python call saved is
        # ~60 ns on 3.11; measured with bench/micro.py). A TLS connection overrides it.
        again = self.again
        if again is not None and not self.framer.buf and self._replay(again):
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("%s: recv failed: %s", self.peer, exc)
            data = b""
        self._received(data)

    def _received(self, data: bytes) -> None:
        """New bytes of request heads (b"": the client closed)."""
        framer = self.framer
        if not data:
            if framer.buf:
                log.debug("%s: closed with an incomplete request", self.peer)
            self.close()
            return
        if framer.buf:
            framer.buf += data
        else:
            if self.requests or self.server.draining:
                # The next request's first byte starts its clock (and a first byte that
                # comes during a drain's grace gets the whole header timeout).
                self.deadline = self.server.loop.now + self.server.config.header_timeout
            framer.buf = data
        self._process()

    def _on_body_readable(self, events: int) -> None:
        data = self._recv()
        if data is None:
            return
        if not data:
            log.debug("%s: closed with an incomplete request", self.peer)
            self.close()
            return
        try:
            done = self.framer.skip_body(data)
        except HttpError as exc:  # a chunked body that is malformed or too large
            self.pending = None
            self._fail(exc, exc.request)
            return
        if done:
            req, self.pending = self.pending, None
            assert req is not None
            self._respond(req)  # what followed the body is read after the answer

    def _read_ahead(self, events: int) -> None:
        """While a response waits for the disk: buffer pipelined bytes (bounded)."""
        if not events & EPOLLIN:
            if events & (EPOLLERR | EPOLLHUP):
                self.close()
            return
        data = self._recv()
        if data is None:
            return
        if not data:
            self.eof = True
            self.keep_alive = False
            self._want(self.mask & ~EPOLLIN)
            return
        self.framer.feed(data)
        if len(self.framer.buf) >= READ_AHEAD_LIMIT:
            self._want(self.mask & ~EPOLLIN)

    # -- requests ------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every complete request already buffered, in order: in one turn, at
        most MAX_PIPELINED_PER_TURN of them and, once their bodies have sent a turn's
        budget (``--sendfile-chunk``), no more; the rest wait for the next turn."""
        if self.busy:
            return
        self.busy = True
        framer = self.framer
        budget = self.server.config.sendfile_chunk
        try:
            for _ in range(MAX_PIPELINED_PER_TURN):
                if budget <= 0:
                    break
                if self.state is not READ_HEAD:
                    return
                if not framer.buf:
                    if self.eof:
                        self.close()
                    return
                try:
                    req = framer.next_request()
                except HttpError as exc:
                    self.requests += exc.request is not None
                    self._fail(exc, exc.request)
                    return
                if req is None:
                    if self.eof and not framer.buf:
                        self.close()
                    return
                self.requests += 1
                if framer.discard:
                    if req.version == 11 and req.headers.get(b"expect", b"").lower() == CONTINUE:
                        # RFC 9110 10.1.1: the answer is known from the head alone, so it
                        # goes now, not after a body held back for a 100 (Continue). The
                        # client may then send the body or not: what comes is drained
                        # (linger) and the connection closes, as after any unread input.
                        framer.drop_body()
                        self.linger = True
                        self._respond(req, keep=False)
                        return
                    self.pending = req
                    self._to(READ_BODY)
                    return
                self._respond(req)
                if self.state is READ_HEAD:  # answered whole, at once
                    budget -= self.sent
            if self.state is READ_HEAD and framer.buf:
                # Pipelined answers a client sent at once would otherwise all go in
                # this turn: small requests of the other connections wait behind them.
                self.server.loop.call_next_turn(self._resume)
        finally:
            self.busy = False

    def _resume(self) -> None:
        if self.state is READ_HEAD:
            self._process()

    def _respond(self, req: Request, keep: bool = True) -> None:
        server = self.server
        self.req = req
        self.keep_alive = keep and req.keep_alive and not server.draining and not self.eof
        try:
            reply = respond.answer(
                req, server.caches, server.loop.now, server.date.value, self.keep_alive
            )
        except HttpError as exc:
            self._fail(exc, req)
            return
        self._start(reply)

    def _fail(self, exc: HttpError, req: Request | None) -> None:
        """Answer with an error status; close afterwards if framing is now unknown."""
        if exc.status >= 500 or exc.status not in (404, 412, 416):
            log.info("%s: %d %s", self.peer, exc.status, exc.detail)
        else:
            log.debug("%s: %d %s", self.peer, exc.status, exc.detail)
        if exc.close or req is None or self.linger:
            # Where the next request starts is unknown (or, after an Expect: 100-continue
            # answered at once, a body may follow): read no more.
            self.keep_alive = False
            self.framer.buf = b""
            self.linger = True
        else:
            self.keep_alive = req.keep_alive and not self.server.draining and not self.eof
        self.req = req
        self.refused = exc.line
        server = self.server
        self._start(respond.error(exc, req, server.date.value, self.keep_alive, server.caches))

    # -- ending a response ---------------------------------------------------------------

    def _finish(self) -> None:
        self._to(DONE)
        if self.corked:
            self.corked = False
            transfer.uncork(self.sock)
        server = self.server
        finish = server.on_response
        if finish is not None:
            finish(self)
        self._release_body()
        if (not self.keep_alive or server.draining) and not (
            self.keep_alive and server.keep_promised  # a reload's drain: once more
        ):
            if (self.framer.buf or self.linger) and not self.eof:
                self._start_linger()
            else:
                self.close()
            return
        self._to(READ_HEAD)
        if self.mask != EPOLLIN:
            self._want(EPOLLIN)
        self.deadline = server.loop.now + server.config.keepalive_timeout
        if self.framer.buf:
            self._process()

    def _start_linger(self) -> None:
        """Close gently: a close with unread bytes would reset the connection and
        could destroy the response before the client reads it (nginx's lingering_close)."""
        self._to(LINGER)
        self.framer.buf = b""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._want(EPOLLIN)
        self.deadline = self.server.loop.now + LINGER_TIMEOUT

    def _linger(self, events: int) -> None:
        for _ in range(4):
            data = self._recv()
            if data is None:
                return
            if not data:
                self.close()
                return

    def _abort(self, why: str) -> None:
        log.info("%s: connection ended early: %s", self.peer, why)
        self.close()

    def close(self) -> None:
        state = self.state
        if state is CLOSED:
            return
        if state in ANSWERING:
            finish = self.server.on_response
            if finish is not None:
                try:
                    finish(self)  # with what was sent of it; the json log says incomplete
                except Exception:  # a full disk under the log: the close must still happen
                    log.exception("%s: the log of a response that ended early failed", self.peer)
        self._to(CLOSED)
        self.deadline = None
        self._release_body()
        server = self.server
        server.loop.forget(self.fd)
        self.sock.close()
        server.closed(self)

    def _ignore(self, events: int) -> None:
        """DONE and CLOSED never wait for an event; a stale one is dropped."""


# What a readiness event means in each state (the loop's only entry into a connection).
ON_EVENT: dict[State, Callable[[Connection, int], None]] = {
    READ_HEAD: Connection._on_readable,
    READ_BODY: Connection._on_body_readable,
    SEND_HEAD: Connection._send_head,
    SEND_FILE: Connection._send_body,
    AIO_WAIT: Connection._read_ahead,
    SEND_BUFFER: Connection._send_body,
    DONE: Connection._ignore,
    LINGER: Connection._linger,
    CLOSED: Connection._ignore,
}
