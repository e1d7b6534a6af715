"""HTTPS connections: the same machine as plain HTTP, entered through HANDSHAKE.

:class:`TlsConnection` is a :class:`~aws.connection.Connection` whose socket is a
non-blocking ``ssl.SSLSocket``. Only the byte movers differ: reads go through SSL (and
take what SSL already decrypted, ``pending()``, since epoll cannot see it), heads and
bodies go out through SSL_write, and ``/static/`` bodies are read into a pooled
page-aligned buffer first (:func:`aws.transfer.ssl_sendfile`), unless the kernel took
over the encryption (kTLS), when plain ``sendfile`` on the socket goes on working.
Plain connections do not pass through any of this: the TLS listener makes these.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiobind import replay, sslhandle
from aiobind.buffers import BufferPool
from aws import heads, respond, tls, transfer
from aws.connection import ON_EVENT, RECV_SIZE, Connection, Worker
from aws.loop import EPOLLIN, EPOLLOUT
from aws.states import HANDSHAKE, READ_HEAD, SEND_HEAD, State

if TYPE_CHECKING:
    from aws.config import Config

log = logging.getLogger("aws.tls")

_PLAIN_DRAIN = 4  # reads of what the plain client sent, so the close is no reset


class TlsSide:
    """One worker's TLS state: its context, its read buffers and which path it uses."""

    def __init__(self, config: Config) -> None:
        assert config.tls_cert is not None
        want_ktls, why = tls.ktls_plan()
        self.config = config
        self.context = tls.build_context(config.tls_cert, config.tls_key, want_ktls)
        self.ktls_requested = want_ktls
        self.buffers = BufferPool(config.tls_chunk, keep=config.tls_buffers)
        self.reported = False
        # The fast path (aws.replaying) over TLS needs the session's SSL object.
        why_not = sslhandle.available() if config.fast_path else "--no-fast-path"
        self.replays = why_not is None
        if why_not is not None and config.fast_path:
            log.info("TLS: no fast path for repeated requests: %s", why_not)
        if want_ktls:
            log.info("TLS: kernel TLS requested (%s); checked on each handshake", why)
        else:
            log.info(
                "TLS: no kernel TLS (%s): /static/ bodies are read into %d KiB buffers "
                "and written through SSL",
                why,
                config.tls_chunk // 1024,
            )

    def report(self, ktls: bool) -> None:
        """Log once per worker what the kernel did with the first handshake."""
        if self.reported or not self.ktls_requested:
            return
        self.reported = True
        if ktls:
            log.info("TLS: the kernel took over sending: /static/ bodies go by sendfile")
        else:
            log.info("TLS: the kernel did not take over sending: /static/ bodies by SSL_write")

    def close(self) -> None:
        self.buffers.close()


class TlsConnection(Connection):
    __slots__ = ("handle", "ktls", "stage", "tls")

    send_out = staticmethod(transfer.ssl_send_bytes)  # heads go through SSL, kTLS or not
    file_path = "tls-copy"

    def __init__(self, server: Worker, sock: ssl.SSLSocket, peer: object, side: TlsSide) -> None:
        super().__init__(server, sock, peer)
        self.state = HANDSHAKE
        self.tls = side
        self.ktls = False
        self.stage: transfer.Stage | None = None
        # The session's SSL *, for the fast path's C call (None: never replayed).
        self.handle: Any = None

    def on_event(self, events: int) -> None:
        TLS_ON_EVENT[self.state](self, events)

    def start(self) -> None:
        self._handshake(EPOLLIN)

    @property
    def idle(self) -> bool:
        # Nothing was asked yet: a drain may close it, as it closes idle keep-alives.
        return self.state is HANDSHAKE or super().idle

    # -- the handshake -------------------------------------------------------------------

    def _handshake(self, events: int) -> None:
        sock: ssl.SSLSocket = self.sock  # type: ignore[assignment]
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self._want(EPOLLOUT)
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:  # the client left halfway
            log.debug("%s: closed during the TLS handshake: %s", self.peer, exc)
            self.close()
            return
        except ssl.SSLError as exc:
            if exc.reason == "HTTP_REQUEST":
                self._plain_http()
                return
            log.info("%s: TLS handshake failed: %s", self.peer, exc.reason or exc)
            self.close()
            return
        except OSError as exc:  # reset, or EOF halfway
            log.debug("%s: closed during the TLS handshake: %s", self.peer, exc)
            self.close()
            return
        self.ktls = self.tls.ktls_requested and tls.kernel_sends(sock)
        self.tls.report(self.ktls)
        if self.tls.replays and not self.ktls:  # with kTLS the C call would skip the kernel
            self.handle = sslhandle.of(sock)
        self._to(READ_HEAD)
        self._want(EPOLLIN)
        self._on_readable(EPOLLIN)  # the request often follows the Finished at once

    def _plain_http(self) -> None:
        """A plain HTTP request on the TLS port: a 400 in clear text, then close (nginx
        answers 400 too, its internal 497). What the client sent is read first, so the
        close does not reset the connection under the answer."""
        log.info("%s: 400, plain HTTP sent to the TLS port", self.peer)
        raw = super(ssl.SSLSocket, self.sock)  # bypass SSL: the client speaks none
        with contextlib.suppress(OSError):
            for _ in range(_PLAIN_DRAIN):
                if not raw.recv(RECV_SIZE):
                    break
        reply = heads.error_response(400, self.server.date.value, False)
        page = len(reply) - reply.index(b"\r\n\r\n") - 4
        with contextlib.suppress(OSError):  # a full socket buffer: the client gets a close
            while reply:
                reply = reply[raw.send(reply) :]
        # logged and counted as nginx logs its 497: a 400, "-"
        self._log_unasked(400, 0 if reply else page, self.server.loop.now)
        self.close()

    def timed_out(self) -> None:
        if self.state is HANDSHAKE:
            log.info(
                "%s: TLS handshake not finished within %ss",
                self.peer,
                self.server.config.header_timeout,
            )
            self.close()
            return
        super().timed_out()

    # -- bytes in ------------------------------------------------------------------------

    def _on_readable(self, events: int) -> None:
        again = self.again
        if again is not None and not self.framer.buf and self._replay(again):
            return
        data = self._recv()
        if data is not None:
            self._received(data)

    def _recv(self) -> bytes | None:
        sock: ssl.SSLSocket = self.sock  # type: ignore[assignment]
        try:
            data = sock.recv(RECV_SIZE)
            # Decrypted bytes SSL holds back are invisible to epoll: take them now
            # (at most one record, 16 KiB, more).
            while sock.pending():
                data += sock.recv(sock.pending())
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return None
        except OSError as exc:  # SSLError included: a bad record ends the connection
            log.debug("%s: TLS recv failed: %s", self.peer, exc)
            return b""
        return data

    def _start_linger(self) -> None:
        self._forget_session()  # shutdown() frees the SSL object
        super()._start_linger()

    def close(self) -> None:
        self._forget_session()
        super().close()

    # -- the fast path (aws.replaying), through the SSL object -----------------------------

    def _forget_session(self) -> None:
        self.handle = None
        self.again = None

    def _replayable(self, reply: respond.Reply) -> None:
        if self.handle is not None and len(reply.head) <= replay.HEAD_ROOM:
            super()._replayable(reply)

    def _replay_call(
        self,
        done: replay.Replay,
        raw: bytes,
        reply: respond.Reply,
        fd: int,
        aio: bool,
        cells: object,
        now: float,
    ) -> int:
        efd = self.server.aio.efd_fd if aio else -1
        return done.serve_tls(
            self.handle, raw, reply.head, fd, reply.start, reply.stop, efd, cells, now
        )

    def _replay_rest(self, reply: respond.Reply, aio: bool) -> None:
        # SSL_write took part of the head and body: all of it goes again as a head-only
        # reply, the very bytes, as OpenSSL requires.
        self.sent, self.stop = 0, reply.stop - reply.start  # counted once all of it went
        self.out = self.server.replay.sealed()
        self._to(SEND_HEAD)
        self._block()

    def _replay_failure(self, reply: respond.Reply, aio: bool) -> str:
        done = self.server.replay
        what = "TLS send failed" if done.file_pos else "reading the file failed"
        return f"{what}: {OSError(done.errno, os.strerror(done.errno))}"

    # -- bytes out -----------------------------------------------------------------------

    def _send_head(self, events: int) -> None:
        if self.res is not None and not self.ktls and self.stage is None:
            # The head shares the first chunk's buffer and record: one SSL_write.
            self.stage = transfer.Stage(self.tls.buffers.acquire())
            self.path = "tls-copy"
            self.out = self.stage.put_head(self.out)
        super()._send_head(events)

    def _move_file(self, budget: int) -> int:
        if self.ktls:
            return super()._move_file(budget)  # the kernel encrypts what sendfile moves
        res, stage = self.res, self.stage
        assert res is not None and stage is not None
        begin = pos = self.pos
        stop = self.stop
        while True:
            # Before a chunk is read (never with one half taken by SSL): preadv would
            # wait for a cold one on the loop, so ask first, as sendfile does.
            if pos >= self.warm_to and stage.sent == stage.body == 0 and not self._cached_ahead():
                return pos - begin
            end = max(self.warm_to, pos + stage.body)  # a staged chunk goes as it is
            try:
                new, blocked = transfer.ssl_sendfile(
                    self.sock,  # type: ignore[arg-type]
                    stage,
                    res.fd,
                    pos,
                    min(end, stop),
                    budget,
                )
            except transfer.TransferFailed as exc:
                self._failed_transfer(exc)
                return pos - begin + exc.moved
            moved = new - pos
            self.sent += moved
            self.pos = pos = new
            budget -= moved
            if new >= stop:
                self._finish()
            elif blocked:
                self._block()
            elif budget <= 0 or new < end:
                self._next_turn()
            else:
                continue  # the end of what the page cache was known to hold: ask again
            return new - begin

    def _move_buffers(self, budget: int) -> int:
        body = self.body
        assert body is not None
        stage = self.stage
        if stage is not None and stage.filled and stage.sent == stage.body == 0:
            # The head waited in the stage for a first chunk that was cold: it goes ahead
            # of the AIO buffers instead (SSL has not seen it yet).
            self.out = bytes(stage.mem[: stage.filled]) + self.out
            stage.filled = 0
        try:
            outcome, self.out, sent = transfer.ssl_send_buffers(
                self.sock,  # type: ignore[arg-type]
                body,
                self.out,
                budget,
            )
        except transfer.TransferFailed as exc:
            self._failed_transfer(exc)
            return exc.moved
        self.sent += sent
        self._buffers_sent(outcome, body, sent >= budget)
        return sent

    def _start_parts(self, reply: respond.Reply) -> None:
        if not self.ktls and reply.way is respond.PARTS_SENDFILE:
            # Without kTLS nothing can sendfile into this socket: the parts of a /static/
            # file are read by AIO into buffers and go through SSL, as /dynamic/ ones do.
            assert isinstance(reply, respond.PartsReply) and reply.res is not None
            reply = respond.PartsReply(
                reply.head, reply.res, reply.stop, respond.PARTS_AIO, reply.segments
            )
        super()._start_parts(reply)

    def _release_body(self) -> None:
        stage = self.stage
        if stage is not None:
            self.stage = None
            self.tls.buffers.release(stage.buf)
        super()._release_body()


TLS_ON_EVENT: dict[State, Callable[[TlsConnection, int], None]] = {
    **ON_EVENT,  # type: ignore[dict-item]
    HANDSHAKE: TlsConnection._handshake,
    READ_HEAD: TlsConnection._on_readable,
    SEND_HEAD: TlsConnection._send_head,
}
