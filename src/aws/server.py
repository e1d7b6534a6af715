"""What one worker serves with: its loop, caches, AIO reader and connections.

The listening socket is accepted from in batches; the connection table is swept a few
times a second for deadlines (one pass over a bounded table instead of a timer object
per connection, and nothing to cancel when a connection closes).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import TextIO

from aws import errorpages, heads, sitepolicy
from aws.aio import AioReader
from aws.config import Config
from aws.connection import Connection
from aws.files import FileCache
from aws.loop import EPOLLIN, Loop
from aws.respond import AIO, SENDFILE
from aws.tls_connection import TlsConnection, TlsSide

log = logging.getLogger("aws.server")

ACCEPT_BATCH = 64
SWEEP_INTERVAL = 0.25
ACCEPT_PAUSE = 0.1  # after EMFILE/ENFILE: stop polling the listener this long
_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Server:
    def __init__(
        self,
        config: Config,
        loop: Loop,
        listener: socket.socket | None,
        tls_listener: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.listener: socket.socket | None = listener
        # HTTPS beside the plain port: its own listener, context and buffers.
        self.tls: TlsSide | None = TlsSide(config) if tls_listener is not None else None
        self.tls_accept: TlsAcceptor | None = None
        self.date = heads.DateCache()
        self.conns: set[Connection] = set()
        self.draining = False
        self.bulk = 0  # long transfers in progress (they share each turn's byte budget)
        self.accept_paused = False
        self.refused = 0
        self.pauses = 0
        self._buffered_logged: set[str] = set()
        root = os.path.abspath(config.root)
        # Cached descriptors must not crowd out connections: each prefix may keep at
        # most an eighth of this process's descriptor limit open.
        cached = max(
            1, min(config.open_file_cache, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 8)
        )
        # Checked by the command line before any worker starts.
        pages = errorpages.load(root, config.error_pages) if config.error_pages else {}
        common = {
            "max_entries": cached,
            "valid": config.open_file_valid,
            "symlinks": config.symlinks,
        }
        self.static = FileCache(
            root,
            "static",
            direct=False,
            way=SENDFILE,
            policy=sitepolicy.for_prefix(config, "static", pages),
            **common,
        )
        # Like nginx's directio: small /dynamic/ files are read through the page cache.
        self.dynamic = FileCache(
            root,
            "dynamic",
            direct=True,
            way=AIO,
            on_buffered=self._buffered_once,
            directio=config.directio,
            policy=sitepolicy.for_prefix(config, "dynamic", pages),
            **common,
        )
        self.caches: dict[bytes | None, FileCache] = {
            b"static": self.static,
            b"dynamic": self.dynamic,
        }
        self.aio = AioReader(
            loop, config.aio_maxevents, config.aio_chunk, keep_buffers=4 * config.aio_depth
        )
        self.access_log: TextIO | None = None
        if config.access_log == "-":
            self.access_log = os.fdopen(os.dup(1), "w", buffering=1)
        elif config.access_log:
            self.access_log = open(config.access_log, "a", buffering=1)  # noqa: SIM115
        if listener is not None:  # None: HTTPS only (--plain off)
            listener.setblocking(False)
            loop.add(listener.fileno(), EPOLLIN, self)
        if tls_listener is not None:
            tls_listener.setblocking(False)
            self.tls_accept = TlsAcceptor(self, tls_listener)
            loop.add(tls_listener.fileno(), EPOLLIN, self.tls_accept)
        loop.call_later(SWEEP_INTERVAL, self._sweep)

    # -- accepting -----------------------------------------------------------------------

    def on_event(self, events: int) -> None:
        if self.listener is not None:
            self.accept(self.listener, Connection)

    def accept(
        self, listener: socket.socket, make: Callable[[Server, socket.socket, object], Connection]
    ) -> None:
        conns = self.conns
        limit = self.config.max_connections
        family = listener.family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = listener._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _PAUSE_ERRNOS:
                    self._pause_accepting(exc)
                    return
                continue  # ECONNABORTED and friends: that client is gone, next
            if len(conns) >= limit:
                os.close(fd)
                self.refused += 1
                if self.refused & (self.refused - 1) == 0:  # log at powers of two
                    log.warning(
                        "connection limit %d reached: %d refused so far", limit, self.refused
                    )
                continue
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            try:
                conn = make(self, sock, peer)
            except OSError as exc:  # the TLS wrap of a client already gone
                log.debug("%s: %s", peer, exc)
                sock.close()
                continue
            conns.add(conn)
            try:
                conn.start()
            except Exception:
                log.exception("%r failed", conn)
                conn.close()

    def on_error(self, exc: BaseException) -> None:
        log.error("accepting failed: %r", exc)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: a level-triggered listener would wake us forever, so stop
        polling it for a moment and keep serving the connections we have."""
        if self.accept_paused or not self._listeners():
            return
        self.pauses += 1
        if self.pauses & (self.pauses - 1) == 0:  # log at powers of two, not 10 times a second
            log.warning(
                "accept failed (%s): pausing accepts for %.1fs (%d pauses so far)",
                exc.strerror,
                ACCEPT_PAUSE,
                self.pauses,
            )
        self.accept_paused = True
        for sock in self._listeners():
            self.loop.modify(sock.fileno(), 0)
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self.accept_paused = False
        for sock in self._listeners():
            self.loop.modify(sock.fileno(), EPOLLIN)

    def _listeners(self) -> list[socket.socket]:
        tls = self.tls_accept.listener if self.tls_accept is not None else None
        return [sock for sock in (self.listener, tls) if sock is not None]

    def _close_listeners(self) -> None:
        for sock in self._listeners():
            self.loop.remove(sock.fileno())
            sock.close()
        self.listener = None
        if self.tls_accept is not None:
            self.tls_accept.listener = None

    # -- bookkeeping ---------------------------------------------------------------------

    def _sweep(self) -> None:
        self.date.refresh()
        now = self.loop.now
        for conn in [c for c in self.conns if c.deadline is not None and c.deadline <= now]:
            try:
                conn.timed_out()
            except Exception:
                log.exception("timing out %r failed", conn)
                conn.close()
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def closed(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if self.draining and not self.conns:
            self.loop.stop()

    def _buffered_once(self, directory: str) -> None:
        if directory not in self._buffered_logged:
            self._buffered_logged.add(directory)
            log.warning(
                "%s: the file system refuses O_DIRECT; AIO reads there are buffered "
                "(and io_submit may block)",
                directory,
            )

    def log_access(self, conn: Connection) -> None:
        assert self.access_log is not None
        req = conn.req
        line = "-"
        if req is not None:
            version = "1.1" if req.version == 11 else "1.0"
            line = f"{req.method} {req.target.decode('latin-1')} HTTP/{version}"
        peer = conn.peer[0] if isinstance(conn.peer, tuple) else conn.peer
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
        self.access_log.write(f'{peer} - - [{stamp}] "{line}" {conn.status} {conn.sent}\n')

    # -- shutting down -------------------------------------------------------------------

    def drain(self) -> None:
        """Stop accepting, close idle connections, let transfers in flight finish."""
        if self.draining:
            return
        self.draining = True
        self._close_listeners()
        for conn in [c for c in self.conns if c.idle]:
            conn.close()
        if not self.conns:
            self.loop.stop()

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        self._close_listeners()
        if self.tls is not None:
            self.tls.close()
        self.aio.close()
        self.static.close()
        self.dynamic.close()
        if self.access_log is not None:
            self.access_log.close()


class TlsAcceptor:
    """The TLS listener's handler: accepts like the plain one, into TLS connections."""

    def __init__(self, server: Server, listener: socket.socket) -> None:
        self.server = server
        self.listener: socket.socket | None = listener
        assert server.tls is not None
        side = server.tls

        def make(owner: Server, sock: socket.socket, peer: object) -> Connection:
            # side.context looked up each time: a reload takes effect at the next accept.
            ssock = side.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            return TlsConnection(owner, ssock, peer, side)

        self._make = make

    def on_event(self, events: int) -> None:
        if self.listener is not None:
            self.server.accept(self.listener, self._make)

    def on_error(self, exc: BaseException) -> None:
        log.error("accepting TLS failed: %r", exc)
