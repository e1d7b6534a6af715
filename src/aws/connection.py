"""One client connection as an explicit state machine.

Partial reads and partial writes are the normal case: every send loops until the kernel
says EAGAIN (a short count is not EAGAIN), then waits for EPOLLOUT; every read keeps
what it got and waits for more. The whole machine is :data:`TRANSITIONS`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes

from aws import http
from aws.aio import DynamicBody, FileChanged
from aws.conditions import evaluate
from aws.files import Redirect, Resource
from aws.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT

if TYPE_CHECKING:
    from aws.files import FileCache
    from aws.server import Server

log = logging.getLogger("aws.connection")

RECV_SIZE = 64 * 1024
READ_AHEAD_LIMIT = 64 * 1024  # pipelined bytes buffered while a response is in progress
MAX_PIPELINED_PER_TURN = 32  # then yield to the other connections of the loop
LINGER_TIMEOUT = 2.0
CORK_ABOVE = 256 * 1024  # static bodies this long are sent corked
MSG_MORE = socket.MSG_MORE


class State(enum.Enum):
    READ_HEAD = "reading a request head"
    READ_BODY = "discarding a request body"
    SEND_HEAD = "sending a head (and a small body)"
    SEND_FILE = "sending a static file with sendfile"
    AIO_WAIT = "waiting for an AIO read"
    SEND_BUFFER = "sending an AIO buffer"
    DONE = "response complete"
    LINGER = "closing: draining what the client still sends"
    CLOSED = "closed"

    # Members are singletons: hash by identity in C, not by name in Python (hot path).
    __hash__ = object.__hash__


# Module-level names for the members: on Python 3.11 ``State.X`` costs ~150 ns (the
# enum metaclass's lookup) where a global costs ~25 ns, and the hot path reads them often.
(READ_HEAD, READ_BODY, SEND_HEAD, SEND_FILE, AIO_WAIT, SEND_BUFFER, DONE, LINGER, CLOSED) = (
    State.READ_HEAD,
    State.READ_BODY,
    State.SEND_HEAD,
    State.SEND_FILE,
    State.AIO_WAIT,
    State.SEND_BUFFER,
    State.DONE,
    State.LINGER,
    State.CLOSED,
)
TRANSITIONS: dict[State, frozenset[State]] = {
    READ_HEAD: frozenset({READ_BODY, SEND_HEAD, AIO_WAIT, CLOSED}),
    READ_BODY: frozenset({SEND_HEAD, AIO_WAIT, CLOSED}),
    SEND_HEAD: frozenset({SEND_FILE, DONE, CLOSED}),
    SEND_FILE: frozenset({DONE, CLOSED}),
    # A dynamic response's head waits for the first chunk, so both leave in one sendmsg.
    AIO_WAIT: frozenset({SEND_BUFFER, CLOSED}),
    SEND_BUFFER: frozenset({AIO_WAIT, DONE, CLOSED}),
    DONE: frozenset({READ_HEAD, LINGER, CLOSED}),
    LINGER: frozenset({CLOSED}),
    CLOSED: frozenset(),
}
SENDING = frozenset({SEND_HEAD, SEND_FILE, SEND_BUFFER})


# Parsing is a pure function of the head's bytes and clients repeat their heads (same
# browser, same crawler, same load generator): remember the last few hundred results.
# Requests are never mutated after parsing, so sharing one is safe.
PARSE_MEMO_SIZE = 512
PARSE_MEMO_HEAD = 2048  # longer heads are rare and would make the memo large
_parsed: dict[bytes, http.Request] = {}


class IllegalTransition(RuntimeError):
    pass


class Connection:
    __slots__ = (
        "body",
        "busy",
        "corked",
        "deadline",
        "discard",
        "eof",
        "fd",
        "inbuf",
        "keep_alive",
        "linger",
        "mask",
        "out",
        "peer",
        "pending",
        "pos",
        "registered",
        "req",
        "requests",
        "res",
        "scan",
        "sent",
        "server",
        "sock",
        "state",
        "status",
        "stop",
    )

    def __init__(self, server: Server, sock: socket.socket, peer: object) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.state = READ_HEAD
        self.mask = 0
        self.registered = False  # in the epoll set: only once it has to wait for something
        self.inbuf = b""
        self.scan = 0  # where to resume looking for the end of a partial head
        self.eof = False  # the client shut down its sending side
        self.busy = False  # inside _process: completions must not recurse into it
        self.requests = 0
        self.req: http.Request | None = None
        self.pending: http.Request | None = None  # waiting for its body to be discarded
        self.discard = 0
        self.keep_alive = True
        self.out = b""  # head (or whole small response) bytes not yet sent
        self.res: Resource | None = None
        self.body: DynamicBody | None = None
        self.pos = 0
        self.stop = 0
        self.status = 0
        self.sent = 0
        self.corked = False
        self.linger = False  # the client may still be sending: close gently
        # Checked by the worker's periodic sweep (no timer object per connection).
        self.deadline: float | None = server.loop.now + server.config.header_timeout

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} peer={self.peer} state={self.state.name}>"

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
        self._on_readable()
        if self.state is READ_HEAD or self.state is READ_BODY:
            self._want(EPOLLIN)

    # -- timeouts ------------------------------------------------------------------------

    def timed_out(self) -> None:
        """Called by the worker's sweep once ``deadline`` has passed."""
        state = self.state
        if state is READ_HEAD and not self.inbuf and self.requests:
            self.close()  # an idle keep-alive connection: nothing to say
            return
        if state in (READ_HEAD, READ_BODY):
            log.info("%s: 408, no complete request within the timeout", self.peer)
            self._try_send_final(http.error_response(408, self.server.date.value, False))
            self.close()
            return
        if state is LINGER:
            self.close()
            return
        log.info(
            "%s: dropped, no progress for %ss while %s",
            self.peer,
            self.server.config.send_timeout,
            state.value,
        )
        self.close()

    def _try_send_final(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(data)

    # -- events --------------------------------------------------------------------------

    def on_event(self, events: int) -> None:
        state = self.state
        if state is READ_HEAD or state is READ_BODY:
            self._on_readable()
        elif state in SENDING:
            self._send()
        elif state is AIO_WAIT:
            if events & EPOLLIN:
                self._read_ahead()
            elif events & (EPOLLERR | EPOLLHUP):
                self.close()
        elif state is LINGER:
            self._linger()

    def on_error(self, exc: BaseException) -> None:
        self.close()

    def _recv(self) -> bytes | None:
        """Bytes from the socket; b"" at EOF; None when there are none yet."""
        try:
            return self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            log.debug("%s: recv failed: %s", self.peer, exc)
            return b""

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("%s: recv failed: %s", self.peer, exc)
            data = b""
        if not data:
            if self.inbuf or self.state is READ_BODY:
                log.debug("%s: closed with an incomplete request", self.peer)
            self.close()
            return
        if self.state is READ_BODY:
            self._discard_body(data)
            return
        if self.inbuf:
            self.inbuf += data
        else:
            if self.requests:  # the first byte of the next request starts its clock
                self.deadline = self.server.loop.now + self.server.config.header_timeout
            self.inbuf = data
        self._process()

    def _read_ahead(self) -> None:
        """Buffer pipelined bytes while a response is in progress (bounded)."""
        data = self._recv()
        if data is None:
            return
        if not data:
            self.eof = True
            self.keep_alive = False
            self._want(self.mask & ~EPOLLIN)
            return
        self.inbuf += data
        if len(self.inbuf) >= READ_AHEAD_LIMIT:
            self._want(self.mask & ~EPOLLIN)

    # -- requests ------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every complete request already buffered, in order."""
        if self.busy:
            return
        self.busy = True
        try:
            for _ in range(MAX_PIPELINED_PER_TURN):
                if self.state is not READ_HEAD:
                    return
                if not self.inbuf:
                    if self.eof:
                        self.close()
                    return
                if not self._next_request():
                    return
            if self.state is READ_HEAD and self.inbuf:
                self.server.loop.call_soon(self._resume)
        finally:
            self.busy = False

    def _resume(self) -> None:
        if self.state is READ_HEAD:
            self._process()

    def _next_request(self) -> bool:
        """Parse and start answering one request; False when none is complete."""
        buf = self.inbuf
        if buf[:2] == b"\r\n":
            buf = self.inbuf = http.skip_empty_lines(buf)
        if not buf:
            if self.eof:
                self.close()
            return False
        end = buf.find(b"\r\n\r\n", self.scan)
        if 0 <= end < http.MAX_REQUEST_LINE:
            end += 4  # a head this short is within every limit
        else:
            try:
                end = http.find_head_end(buf, self.scan)
            except http.HttpError as exc:
                self._fail(exc, None)
                return False
        if end < 0:
            self.scan = max(0, len(buf) - 3)
            return False
        self.inbuf = buf[end:]
        self.scan = 0
        head = buf[:end]
        req = _parsed.get(head)
        if req is None:
            try:
                req = http.parse_head(head)
            except http.HttpError as exc:
                self._fail(exc, None)
                return False
            if len(head) <= PARSE_MEMO_HEAD:
                if len(_parsed) >= PARSE_MEMO_SIZE:
                    _parsed.clear()
                _parsed[head] = req
        self.requests += 1
        length = req.content_length
        if length:
            if length > http.MAX_DISCARDED_BODY:
                self._fail(http.HttpError(413, "request body too large", close=True), req)
                return False
            have = len(self.inbuf)
            if have < length:
                self.discard = length - have
                self.inbuf = b""
                self.pending = req
                self._to(READ_BODY)
                return False
            self.inbuf = self.inbuf[length:]
        self._respond(req)
        return True

    def _discard_body(self, data: bytes) -> None:
        """Drop request-body bytes (a GET may carry one), then answer the request."""
        n = min(self.discard, len(data))
        self.discard -= n
        if self.discard:
            return
        req, self.pending = self.pending, None
        assert req is not None
        self.inbuf = data[n:]  # the next pipelined request, if any: read after the answer
        self._respond(req)

    # -- responses -----------------------------------------------------------------------

    def _respond(self, req: http.Request) -> None:
        server = self.server
        self.req = req
        self.keep_alive = req.keep_alive and not server.draining and not self.eof
        segments = req.segments
        if segments is None or req.method == "OPTIONS":
            self._simple(200, b"", ((b"Allow", http.ALLOW), (b"Content-Length", b"0")))
            return
        cache = server.caches.get(req.prefix)
        if cache is None:
            self._fail(http.HttpError(404, "outside /static/ and /dynamic/"), req)
            return
        try:
            if len(segments) == 1:
                raise Redirect()
            res = cache.acquire(segments[1:], server.loop.now, req.key)
        except http.HttpError as exc:
            self._fail(exc, req)
            return
        except Redirect:
            location = quote_from_bytes(req.path + b"/").encode()
            self._simple(301, b"", ((b"Location", location), (b"Content-Length", b"0")))
            return
        date = server.date.value
        if not req.conditional:
            self._respond_with(
                req, res, cache, 200, res.ok_head(date, self.keep_alive), 0, res.size
            )
            return
        decision = evaluate(req, res)
        status = decision.status
        if status == 200:
            head = res.ok_head(date, self.keep_alive)
        elif status == 206:
            head = http.build_head(
                206,
                date,
                self.keep_alive,
                [
                    *res.fields(),
                    (
                        b"Content-Range",
                        b"bytes %d-%d/%d" % (decision.start, decision.end - 1, res.size),
                    ),
                    (b"Content-Length", b"%d" % (decision.end - decision.start)),
                ],
            )
        elif status == 304:
            head = http.build_head(
                304,
                date,
                self.keep_alive,
                [(b"Last-Modified", res.last_modified), (b"ETag", res.etag)],
            )
        else:
            extra = ((b"Content-Range", b"bytes */%d" % res.size),) if status == 416 else ()
            res.release()
            self.status = status
            self._send_bytes(
                http.error_response(status, date, self.keep_alive, req.method == "HEAD", extra)
            )
            return
        self._respond_with(req, res, cache, status, head, decision.start, decision.end)

    def _respond_with(
        self,
        req: http.Request,
        res: Resource,
        cache: FileCache,
        status: int,
        head: bytes,
        start: int,
        stop: int,
    ) -> None:
        server = self.server
        self.status = status
        if req.method == "HEAD" or status == 304 or start == stop:
            res.release()
            self._send_bytes(head)
            return
        self.res = res
        self.pos = start
        self.stop = stop
        self.sent = 0
        if cache is server.static:
            if stop - start >= CORK_ABOVE:
                # A long transfer: only full segments until the end (nginx's tcp_nopush),
                # instead of a short one at the end of every sendfile call.
                with contextlib.suppress(OSError):  # not TCP (a unix socket): no cork
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                    self.corked = True
            self.out = head
            self._to(SEND_HEAD)
            self._send_head()
        else:
            self.out = head
            self._to(AIO_WAIT)
            self.body = DynamicBody(server.aio, self, res.fd, start, stop, server.config.aio_depth)
            if not res.direct:
                # A buffered read is done when io_submit returns: answer now, not a loop
                # turn and an eventfd read later.
                server.aio.reap_now()

    def _simple(self, status: int, body: bytes, fields: tuple[tuple[bytes, bytes], ...]) -> None:
        self.status = status
        self._send_bytes(
            http.build_head(status, self.server.date.value, self.keep_alive, fields) + body
        )

    def _fail(self, exc: http.HttpError, req: http.Request | None) -> None:
        """Answer with an error status; close afterwards if framing is now unknown."""
        if exc.status >= 500 or exc.status not in (404, 412, 416):
            log.info("%s: %d %s", self.peer, exc.status, exc.detail)
        else:
            log.debug("%s: %d %s", self.peer, exc.status, exc.detail)
        if exc.close or req is None:
            self.keep_alive = False
            self.inbuf = b""
            self.linger = True  # where the next request starts is unknown: read no more
        else:
            self.keep_alive = req.keep_alive and not self.server.draining and not self.eof
        self.req = req
        self.status = exc.status
        head_only = (req.method if req is not None else exc.method) == "HEAD"
        self._send_bytes(
            http.error_response(
                exc.status, self.server.date.value, self.keep_alive, head_only, exc.headers
            )
        )

    def _send_bytes(self, data: bytes) -> None:
        self.out = data
        self.res = None
        self._to(SEND_HEAD)
        self._send_head()

    # -- sending -------------------------------------------------------------------------

    def _send(self) -> None:
        state = self.state
        if state is SEND_FILE:
            self._send_file()
        elif state is SEND_BUFFER:
            self._send_body()
        else:
            self._send_head()

    def _block(self) -> None:
        """The socket is full: wait for EPOLLOUT, and for at most send_timeout."""
        self._want(EPOLLOUT)
        self.deadline = self.server.loop.now + self.server.config.send_timeout

    def _send_head(self) -> None:
        out = self.out
        sock = self.sock
        # A file follows: let the head wait for its first bytes (one segment, no Nagle).
        flags = MSG_MORE if self.res is not None else 0
        while out:
            try:
                n = sock.send(out, flags)
            except BlockingIOError:
                self.out = out
                self._block()
                return
            except OSError as exc:
                self._abort(f"send failed: {exc}")
                return
            out = out[n:]
        self.out = b""
        if self.res is None:
            self._finish()
            return
        self._to(SEND_FILE)
        self._send_file()

    def _send_file(self) -> None:
        res = self.res
        assert res is not None
        budget = self.server.config.sendfile_chunk
        fd, in_fd, pos, stop = self.fd, res.fd, self.pos, self.stop
        sendfile = os.sendfile
        while pos < stop:
            try:
                n = sendfile(fd, in_fd, pos, min(stop - pos, budget))
            except BlockingIOError:
                break
            except OSError as exc:
                self.pos = pos
                self._abort(f"sendfile failed: {exc}")
                return
            if n == 0:
                self.pos = pos
                res.checked = float("-inf")  # the next request re-checks the file at once
                self._abort("file shrank during the transfer")
                return
            pos += n
            budget -= n
            if budget <= 0:
                break  # level-triggered EPOLLOUT brings us back next turn
        self.sent += pos - self.pos
        self.pos = pos
        if pos < stop:
            self._block()
            return
        self._finish()

    def on_body_ready(self) -> None:
        """The AIO read the response is waiting for has completed."""
        if self.state is AIO_WAIT:
            self._to(SEND_BUFFER)
            self._send_body()

    def _send_body(self) -> None:
        body = self.body
        assert body is not None
        sock = self.sock
        budget = self.server.config.sendfile_chunk
        while True:
            try:
                view = body.view()
            except (OSError, FileChanged) as exc:
                if self.res is not None:
                    self.res.checked = float("-inf")  # the next request re-checks the file
                self._abort(f"reading the file failed: {exc}")
                return
            if view is None:
                self._to(AIO_WAIT)
                self.deadline = None  # the disk is ours to wait for, not the client's fault
                self._want(0 if self.eof or len(self.inbuf) >= READ_AHEAD_LIMIT else EPOLLIN)
                return
            out = self.out
            try:
                n = sock.sendmsg([out, view]) if out else sock.send(view)
            except BlockingIOError:
                view.release()
                self._block()
                return
            except OSError as exc:
                # The buffers go back to the pool now: no view of them may outlive that.
                view.release()
                self._abort(f"send failed: {exc}")
                return
            if out:
                if n < len(out):
                    self.out = out[n:]
                    continue
                self.out = b""
                n -= len(out)
            view.release()
            self.sent += n
            budget -= n
            if body.advance(n):
                self._finish()
                return
            if budget <= 0:
                self._block()
                return

    # -- ending a response ---------------------------------------------------------------

    def _release_body(self) -> None:
        res = self.res
        if res is not None:
            self.res = None
            res.release()
        if self.body is not None:
            self.body.close()
            self.body = None

    def _finish(self) -> None:
        self._to(DONE)
        if self.corked:
            self.corked = False
            with contextlib.suppress(OSError):  # push the last partial segment now
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        self._release_body()
        server = self.server
        if server.access_log is not None:
            server.log_access(self)
        if not self.keep_alive or server.draining:
            if (self.inbuf or self.linger) and not self.eof:
                self._start_linger()
            else:
                self.close()
            return
        self._to(READ_HEAD)
        self.req = None
        if self.mask != EPOLLIN:
            self._want(EPOLLIN)
        self.deadline = server.loop.now + server.config.keepalive_timeout
        if self.inbuf:
            self._process()

    def _start_linger(self) -> None:
        """Close gently: a close with unread bytes would reset the connection and
        could destroy the response before the client reads it (nginx's lingering_close)."""
        self._to(LINGER)
        self.inbuf = b""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._want(EPOLLIN)
        self.deadline = self.server.loop.now + LINGER_TIMEOUT

    def _linger(self) -> None:
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
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self.deadline = None
        self._release_body()
        server = self.server
        server.loop.forget(self.fd)
        self.sock.close()
        server.closed(self)

    @property
    def idle(self) -> bool:
        """Between requests with nothing buffered: safe to close when draining."""
        return self.state is READ_HEAD and not self.inbuf
