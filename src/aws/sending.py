"""Moving a reply's bytes for one connection: the half of the machine that sends.

:class:`Sending` is the base of :class:`aws.connection.Connection`, which reads the
requests, decides with :mod:`aws.respond` and hands each :class:`~aws.respond.Reply`
to :meth:`Sending._start`. From there every body goes out one of the ways
:mod:`aws.transfer` implements (the head with MSG_MORE, sendfile over what the page
cache holds, AIO buffers, multipart parts), in the SEND_HEAD, SEND_FILE, AIO_WAIT and
SEND_BUFFER states, until ``_finish`` (the connection's) ends the response. The
attributes live in the connection's ``__slots__``; they are declared here for the reader
and the type checker.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from aws import respond, transfer
from aws.aio import DynamicBody
from aws.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from aws.multipart import Cursor, MultipartBody
from aws.states import AIO_WAIT, SEND_BUFFER, SEND_FILE, SEND_HEAD, State

if TYPE_CHECKING:
    from aws.files import Resource
    from aws.http import Framer
    from aws.worker_context import Worker

READ_AHEAD_LIMIT = 64 * 1024  # pipelined bytes buffered while a response is in progress
WARM_WINDOW = 4 << 20  # a cold /static/ range is asked into the page cache this much at a time
WARM_AHEAD = 2 * WARM_WINDOW  # and kept asked this far ahead of what is sent
MIN_WINDOW = 64 << 10  # sent as it is when it could not be kept in the page cache


class Sending:
    __slots__ = ()

    # How the head's bytes go out: a plain send (MSG_MORE when a body follows); a TLS
    # connection writes them through its SSL object instead.
    send_out = staticmethod(transfer.send_bytes)

    server: Worker
    again: object
    sock: socket.socket
    fd: int
    state: State
    mask: int
    framer: Framer
    eof: bool
    began: float
    status: int
    out: bytes
    res: Resource | None
    body: DynamicBody | MultipartBody | None
    parts: Cursor | None
    pos: int
    stop: int
    sent: int
    outq: int
    corked: bool
    bulk: bool
    queued: bool
    warm_to: int
    warm_for: int
    warm_ahead: int
    warm_pending: set[int]
    requests: int
    path: str
    deadline: float | None

    def _to(self, new: State) -> None:
        raise NotImplementedError

    def _want(self, mask: int) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _abort(self, why: str) -> None:
        raise NotImplementedError

    def _replayable(self, reply: respond.Reply) -> None:
        raise NotImplementedError

    def _start(self, reply: respond.Reply) -> None:
        server = self.server
        self.again = None
        self.began = server.loop.now
        self.status = reply.status
        self.out = reply.head
        res = self.res = reply.res
        if res is None:
            self.path = ""
            self.sent = 0  # the error page rides in the head: counted once it is all sent
            self.stop = reply.stop
            self._to(SEND_HEAD)
            self._send_head(EPOLLOUT)
            return
        start = self.pos = reply.start
        stop = self.stop = reply.stop
        self.sent = 0
        long = stop - start >= transfer.CORK_ABOVE
        if long:
            self.bulk = True  # it moves in the worker's fair turns (aws.turns)
            transfer.hold_unsent(self.sock)
        if reply.way is respond.SENDFILE:
            self.path = "sendfile"
            if long:
                # Only full segments until the end (nginx's tcp_nopush), instead of a
                # short one at the end of every sendfile call.
                self.corked = transfer.cork(self.sock, True)
                self.warm_to = start  # a long body may be cold anywhere: ask as it goes
            elif res.probe:
                res.probe = False
                self.warm_to = start  # not served lately: ask once
            else:
                self.warm_to = stop  # served lately and short: in the page cache
                if stop - start <= server.replay_max:
                    self._replayable(reply)
            self._to(SEND_HEAD)
            self._send_head(EPOLLOUT)
            return
        if reply.way is respond.PARTS_SENDFILE or reply.way is respond.PARTS_AIO:
            self._start_parts(reply)
            return
        fd = res.fd
        direct = res.direct
        if not direct and res.probe:
            # A buffered io_submit reads a cold file inside the call, on the loop: a
            # small file not served lately is asked about, and read with O_DIRECT if cold.
            res.probe = False
            if transfer.warm_until(fd, start, stop) < stop and res.direct_fd() >= 0:
                fd = res.direct_fd()
                direct = True
        self.path = "aio-direct" if direct else "aio-buffered"
        if not direct and stop - start <= server.replay_max:
            self._replayable(reply)
        self._to(AIO_WAIT)
        self.body = DynamicBody(server.aio, self, fd, start, stop, server.config.aio_depth)
        if not direct:
            # A buffered read is done when io_submit returns: answer now, not a loop
            # turn and an eventfd read later.
            server.aio.reap_now()

    def _start_parts(self, reply: respond.Reply) -> None:
        """multipart/byteranges: delimiters and ranges, by sendfile or by AIO."""
        res = reply.res
        assert res is not None and isinstance(reply, respond.PartsReply)
        server = self.server
        if reply.way is respond.PARTS_SENDFILE:
            self.path = "sendfile"
            self.parts = Cursor(reply.segments)
            if reply.stop >= transfer.CORK_ABOVE:
                self.corked = transfer.cork(self.sock, True)
            self._to(SEND_HEAD)
            self._send_head(EPOLLOUT)
            return
        fd = res.fd
        direct = res.direct
        if not direct and not all(
            self._short_and_cached(fd, start, stop) for _, start, stop in reply.segments
        ):
            # A buffered io_submit reads a cold part inside the call, on the loop: a body
            # with a part that is cold, or too long to vouch for, is read with O_DIRECT.
            dfd = res.direct_fd()
            if dfd >= 0:
                fd, direct = dfd, True
        self.path = "aio-direct" if direct else "aio-buffered"
        self._to(AIO_WAIT)
        self.body = MultipartBody(server.aio, self, fd, reply.segments, server.config.aio_depth)
        if not direct:
            server.aio.reap_now()

    def _short_and_cached(self, fd: int, start: int, stop: int) -> bool:
        """Whether a part can be read buffered: no longer than one body's reads in flight
        (so the asking costs a few probes at most, whatever the part's size, where
        cachestat is refused), and in the page cache."""
        server = self.server
        short = stop - start <= server.config.aio_depth * server.aio.chunk_size
        return short and transfer.in_page_cache(fd, start, stop)

    def _block(self) -> None:
        """The socket is full: wait for EPOLLOUT, and for at most send_timeout."""
        self._want(EPOLLOUT)
        self.deadline = self.server.loop.now + self.server.config.send_timeout
        self.outq = -1

    def _send_head(self, events: int) -> None:
        try:
            self.out = self.send_out(self.sock, self.out, self.res is not None)
        except transfer.TransferFailed as exc:
            self._abort(str(exc))
            return
        if self.out:
            self._block()
        elif self.res is None:
            self.sent = self.stop
            self._finish()
        else:
            self._to(SEND_FILE)
            self._send_body(EPOLLOUT)

    def _send_body(self, events: int) -> None:
        """SEND_FILE's and SEND_BUFFER's event (EPOLLOUT), or the body can start: move its
        bytes now, or, for a long transfer, take a place in the worker's line for a share
        of a turn."""
        if self.bulk:
            self._wait_turn(events)
        else:
            self.take_turn(self.server.config.sendfile_chunk)

    def _wait_turn(self, events: int) -> None:
        """The socket can take bytes: wait for a share of a turn (:mod:`aws.turns`),
        with no interest in EPOLLOUT meanwhile and no send deadline (the wait is ours)."""
        turns = self.server.turns
        if events & (EPOLLERR | EPOLLHUP):
            turns.leave(self)  # the client is gone: the next send says so and ends it
            if not self.take_turn(transfer.MIN_SLICE) and self.state in (SEND_FILE, SEND_BUFFER):
                self._abort("the socket reported an error or a hang-up")
            return
        self._want(0)
        self.deadline = None
        turns.join(self)

    def take_turn(self, budget: int) -> int:
        """Move at most ``budget`` bytes of the body, in whichever way it is going (a
        long body's share of a turn); returns how many moved."""
        if self.state is SEND_FILE:
            return self._move_file(budget)
        if self.state is SEND_BUFFER:
            return self._move_buffers(budget)
        return 0  # no longer sending: nothing to move

    def _next_turn(self) -> None:
        """The budget ran out before the socket filled: a long transfer goes to the back
        of the line; a short one (a small --sendfile-chunk) comes back with EPOLLOUT."""
        if self.bulk:
            self.server.turns.join(self)
        else:
            self._block()

    def _move_file(self, budget: int) -> int:
        if self.parts is not None:
            return self._move_parts(budget)
        res = self.res
        assert res is not None
        begin = pos = self.pos
        stop = self.stop
        while True:
            if pos >= self.warm_to and not self._cached_ahead():
                return pos - begin
            end = self.warm_to
            try:
                new = transfer.sendfile(self.fd, res.fd, pos, end, budget)
            except transfer.TransferFailed as exc:
                self._failed_transfer(exc)
                return pos - begin + exc.moved
            moved = new - pos
            self.sent += moved
            self.pos = pos = new
            budget -= moved
            if new >= stop:
                self._finish()
            elif budget <= 0:
                self._next_turn()
            elif new < end:
                self._block()  # EAGAIN: the socket is full
            else:
                continue  # the end of what the page cache was known to hold: ask again
            return new - begin

    def _cached_ahead(self) -> bool:
        """Ask how far the page cache holds the body from ``pos`` (``warm_to``); when the
        next bytes are cold, start reading them without the loop (False)."""
        res = self.res
        assert res is not None
        if self.warm_for == self.requests:  # warming this body: keep ahead of it
            self._top_up()
        warm = transfer.warm_until(res.fd, self.pos, self.stop)
        if warm == self.pos:
            self._read_cold()
            return False
        self.warm_to = warm
        return True

    def _read_cold(self) -> None:
        """The next range is not in the page cache (the mixed path): read it by AIO and
        send it from the buffers, or with ``--static-cold cache`` wait for the warming
        threads to read it into the page cache; then go back to sendfile."""
        res = self.res
        assert res is not None
        server = self.server
        dfd = res.direct_fd() if server.warmer is None else -1
        if server.warmer is None and dfd < 0:
            # No O_DIRECT on this file system: sendfile it, waiting if it must.
            self.warm_to = self.stop
            self._send_body(EPOLLOUT)
            return
        self.path = "mixed"  # part of a sendfile response was cold
        self._wait_for_disk()
        if server.warmer is not None:
            if self.warm_for != self.requests:  # this response's first cold range
                self.warm_for = self.requests
                self.warm_pending = set()
            if not self._warm_coming():
                # Nothing asked covers it (or what was asked is in and gone again: the
                # kernel reclaims page cache): ask from here. Else its window is coming.
                self.warm_ahead = self.pos
                self._ask_warm()
            self._top_up()
            return
        self._read_direct(dfd, self.pos, self.stop)

    def _read_direct(self, dfd: int, pos: int, stop: int) -> None:
        """Read the cold extent from ``pos`` (to ``stop`` at most) by AIO through the
        O_DIRECT descriptor ``dfd``, into the body the buffers are sent from."""
        res = self.res
        assert res is not None
        server = self.server
        depth = server.config.aio_depth
        end = transfer.cold_until(res.fd, pos, min(stop, pos + depth * server.aio.chunk_size))
        transfer.refill(res.fd, pos, end)
        self.body = DynamicBody(server.aio, self, dfd, pos, end, depth)

    def _wait_for_disk(self) -> None:
        """AIO_WAIT for a read of ours, with no send deadline (the disk is ours to wait
        for, not the client's fault), reading ahead what the client pipelines."""
        self._to(AIO_WAIT)
        self.deadline = None
        self._want(0 if self.eof or len(self.framer.buf) >= READ_AHEAD_LIMIT else EPOLLIN)

    def _ask_warm(self) -> None:
        """Ask the next window after ``warm_ahead`` into the page cache."""
        res = self.res
        assert res is not None
        start = self.warm_ahead
        end = min(self.stop, start + WARM_WINDOW)
        warmer = self.server.warmer
        assert warmer is not None
        response = self.requests  # which response asked: a later one on this connection
        warmer.warm(res.fd, start, end, self, lambda: self._warmed(response, start))
        self.warm_ahead = end
        self.warm_pending.add(start)

    def _warm_coming(self) -> bool:
        """A window asked for and not in yet covers ``pos``."""
        pos = self.pos
        return any(start <= pos < start + WARM_WINDOW for start in self.warm_pending)

    def _top_up(self) -> None:
        """Keep WARM_AHEAD asked ahead of what is sent."""
        if self.warm_ahead < self.stop and self.warm_ahead - self.pos < WARM_AHEAD:
            self._ask_warm()

    def _warmed(self, response: int, start: int) -> None:
        """A window asked for is in the page cache: ask for the next one, and go on
        with sendfile if the transfer was waiting for it."""
        res = self.res
        if res is None or response != self.requests:
            return  # that response is over
        self.warm_pending.discard(start)
        self._top_up()
        if self.state is AIO_WAIT and self.body is None:
            warm = transfer.warm_until(res.fd, self.pos, self.stop)
            if warm == self.pos and not self._warm_coming():
                # Read and gone again already, or the read failed: sendfile a slice as
                # it is (on the loop, as with no probe) rather than ask forever.
                warm = self.pos + MIN_WINDOW
            if warm > self.pos:
                self.warm_to = min(warm, self.stop)
                self._to(SEND_FILE)
                self._send_body(EPOLLOUT)

    def _move_parts(self, budget: int) -> int:
        res = self.res
        assert res is not None and self.parts is not None
        try:
            outcome, sent = transfer.send_parts(
                self.sock, res.fd, self.parts, budget, self.send_out
            )
        except transfer.TransferFailed as exc:
            self._failed_transfer(exc)
            return exc.moved
        self.sent += sent
        if outcome is transfer.DONE:
            self.parts = None
            self._finish()
        elif outcome is transfer.COLD:
            self._read_cold_part()
        elif sent >= budget:
            self._next_turn()
        else:
            self._block()
        return sent

    def _read_cold_part(self) -> None:
        """A part of a ``/static/`` multipart body is not in the page cache: its cold
        range is read by AIO (O_DIRECT, whichever ``--static-cold``: a multipart body is
        a few ranges, not a download to keep) and sent from the buffers, then the parts
        go on by sendfile."""
        res, cursor = self.res, self.parts
        assert res is not None and cursor is not None
        dfd = res.direct_fd()
        if dfd < 0:
            # No O_DIRECT on this file system: sendfile this part and the rest, waiting if
            # they must. Asking on would find each cold part again and send it by one more
            # nested turn: a frame stack as deep as the parts are many.
            cursor.stop_asking()
            self._send_body(EPOLLOUT)
            return
        self.path = "mixed"
        self._wait_for_disk()
        self._read_direct(dfd, cursor.pos, cursor.stop)

    def on_body_ready(self) -> None:
        """The AIO read the response is waiting for has completed."""
        if self.state is AIO_WAIT:
            self._to(SEND_BUFFER)
            self._send_body(EPOLLOUT)

    def _move_buffers(self, budget: int) -> int:
        body = self.body
        assert body is not None
        try:
            outcome, self.out, sent = transfer.send_buffers(self.sock, body, self.out, budget)
        except transfer.TransferFailed as exc:
            self._failed_transfer(exc)
            return exc.moved
        self.sent += sent
        self._buffers_sent(outcome, body, sent >= budget)
        return sent

    def _buffers_sent(self, outcome: str, body: DynamicBody, spent: bool) -> None:
        """What follows a send of AIO buffers, whichever socket took them (``spent``:
        the budget ran out, not the socket's room)."""
        if outcome is transfer.DONE:
            cursor = self.parts
            if cursor is not None or (self.path == "mixed" and body.end < self.stop):
                # A cold range went out (of the body, or of a part): back to sendfile.
                if cursor is not None:
                    cursor.pos = body.end
                else:
                    self.pos = body.end
                body.close()
                self.body = None
                self._to(SEND_FILE)
                self._send_body(EPOLLOUT)
                return
            self._finish()
        elif outcome is transfer.BLOCKED:
            if spent:
                self._next_turn()
            else:
                self._block()
        else:
            self._wait_for_disk()

    def _failed_transfer(self, exc: transfer.TransferFailed) -> None:
        self.sent += exc.moved  # what went before the failure: the log says how much
        if exc.file_changed and self.res is not None:
            self.res.checked = float("-inf")  # the next request re-checks the file at once
        self._abort(str(exc))

    def _release_body(self) -> None:
        if self.bulk:
            self.bulk = False
            self.server.turns.leave(self)
        res = self.res
        if res is not None:
            self.res = None
            res.release()
        if self.body is not None:
            self.body.close()
            self.body = None
