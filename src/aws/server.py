"""What one worker serves with: its loop, caches, AIO reader and connections.

The listening socket is accepted from in batches; the connection table is swept a few
times a second for deadlines (one pass over a bounded table instead of a timer object
per connection, and nothing to cancel when a connection closes).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiobind.replay import UNCOUNTED, Replay
from aws import errorpages, heads, sitepolicy
from aws.aio import AioReader
from aws.config import Config
from aws.connection import RECV_SIZE, Connection
from aws.files import FileCache
from aws.logs import AccessLog, way_of
from aws.loop import EPOLLIN, Loop
from aws.metrics import BUCKETS, HIST, SUM_US, response_cells
from aws.respond import AIO, SENDFILE
from aws.tls_connection import TlsConnection, TlsSide
from aws.transfer import MIN_SLICE
from aws.turns import Turns
from aws.warming import Warmer

if TYPE_CHECKING:
    from aws.metrics import WorkerCounters

log = logging.getLogger("aws.server")

ACCEPT_BATCH = 64
SWEEP_INTERVAL = 0.25
ACCEPT_PAUSE = 0.1  # after EMFILE/ENFILE: stop polling the listener this long
_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


Make = Callable[["Server", socket.socket, object], Connection]


class Acceptor:
    """One listening socket in the loop (TCP, Unix, inherited from systemd, or the TLS
    port), and how its accepted sockets become connections."""

    __slots__ = ("make", "server", "sock")

    def __init__(self, server: Server, sock: socket.socket, make: Make = Connection) -> None:
        self.server = server
        self.sock = sock
        self.make = make

    def on_event(self, events: int) -> None:
        self.server.accept(self.sock, self.make)

    def on_error(self, exc: BaseException) -> None:
        log.error("accepting failed: %r", exc)


FIRST_BYTE_GRACE = 1.0  # s a drain waits for a connection that has sent nothing yet


class Server:
    def __init__(
        self,
        config: Config,
        loop: Loop,
        *listeners: socket.socket,
        tls_listeners: tuple[socket.socket, ...] = (),
        worker: int = 0,
        counters: WorkerCounters | None = None,
        accepting: bool = True,
        turns: Turns | None = None,
        warmer: Warmer | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.worker = worker
        self.acceptors = [Acceptor(self, sock) for sock in listeners]
        # HTTPS beside (or instead of) plain HTTP: its own listener, context and buffers.
        self.tls: TlsSide | None = TlsSide(config) if tls_listeners else None
        if self.tls is not None:
            make = _tls_maker(self.tls)
            self.acceptors += [Acceptor(self, sock, make) for sock in tls_listeners]
        self.date = heads.DateCache()
        self.conns: set[Connection] = set()
        self.draining = False
        self.keep_promised = False
        # Long transfers take one turn's byte budget in order (aws.turns): one line a
        # loop, so a server taking over at a reload shares the draining one's.
        if turns is None:
            turns = Turns(loop, config.sendfile_chunk, MIN_SLICE)
        else:
            turns.set_budget(config.sendfile_chunk)
        self.turns = turns
        # The fast path for a repeated request (Connection._replay): bodies up to this
        # long, all sent in one turn whatever the fair share (0: off).
        self.replay = Replay(RECV_SIZE, MIN_SLICE)
        self.replay_max = min(MIN_SLICE, config.sendfile_chunk) if config.fast_path else 0
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
        common = {
            "max_entries": cached,
            "valid": config.open_file_valid,
            "symlinks": config.symlinks,
        }
        # Checked by the command line before any worker starts.
        pages = errorpages.load(root, config.error_pages) if config.error_pages else {}
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
        self.access_log: AccessLog | None = None
        if config.access_log:
            self.access_log = AccessLog(config.access_log, config.log_format, worker)
        self.counters = counters
        # refused, pauses, cache hits, misses: as far as the counters have them
        self.reported = [0, 0, 0, 0]
        if counters is not None:
            counters.attach(self)
        self.on_response = self._response_hook()
        # A replayed response (Connection._replay) is counted by the C call itself, in
        # this worker's slot: only the access log, if any, is left to a Python hook.
        self.on_replay = self._response_hook(count=False)
        self.tally: Callable[[int, bytes | None, str], object] = lambda *_: UNCOUNTED
        if counters is not None:
            self.replay.tally_into(counters.cells, HIST, SUM_US, BUCKETS)
            self.tally = lambda status, prefix, path: Replay.cells(
                *response_cells(status, prefix, path)
            )
        # What to do once a drain has no connection left (a reload replaces it).
        self.on_drained: Callable[[], None] = loop.stop
        self._closed = False
        self._drain_done = False
        # Last of what can fail: a start that fails above must not leave it shared.
        self.warmer: Warmer | None = None
        if config.static_cold == "cache":
            self.warmer = Warmer(loop) if warmer is None else warmer.share()
        if accepting:
            self.start_accepting()
        loop.call_later(SWEEP_INTERVAL, self._sweep)

    def sockets(self) -> tuple[list[socket.socket], list[socket.socket]]:
        """The listening sockets, plain HTTP then TLS (a reload hands them on)."""
        plain = [a.sock for a in self.acceptors if a.make is Connection]
        return plain, [a.sock for a in self.acceptors if a.make is not Connection]

    def start_accepting(self) -> None:
        for acceptor in self.acceptors:
            acceptor.sock.setblocking(False)
            self.loop.add(acceptor.sock.fileno(), EPOLLIN, acceptor)

    def _response_hook(self, count: bool = True) -> Callable[[Connection], None] | None:
        """One bound call per response, or None: nothing at all when both are off
        (``count=False``: as if the metrics were off)."""
        access_log, counters = self.access_log, self.counters if count else None
        if access_log is None and counters is None:
            return None
        clock = time.monotonic

        def log_only(conn: Connection) -> None:
            access_log.write(conn, clock() - conn.began, way_of(conn))  # type: ignore[union-attr]

        if counters is None:
            return log_only
        tally = counters.counter(clock)
        if access_log is None:
            return tally  # type: ignore[return-value]
        write = access_log.write

        def both(conn: Connection) -> None:
            write(conn, tally(conn), way_of(conn))

        return both

    def reopen_logs(self) -> None:
        if self.access_log is not None and self.access_log.reopen():
            log.info("worker %d: reopened the access log %s", self.worker, self.config.access_log)

    # -- accepting -----------------------------------------------------------------------

    def accept(self, listener: socket.socket, make: Make = Connection) -> None:
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

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: a level-triggered listener would wake us forever, so stop
        polling it for a moment and keep serving the connections we have."""
        if self.accept_paused or not self.acceptors:
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
        for acceptor in self.acceptors:
            self.loop.modify(acceptor.sock.fileno(), 0)
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self.accept_paused = False
        for acceptor in self.acceptors:
            self.loop.modify(acceptor.sock.fileno(), EPOLLIN)

    # -- bookkeeping ---------------------------------------------------------------------

    def _sweep(self) -> None:
        if self._closed:
            return
        # Armed first: whatever fails below, deadlines and the Date go on being kept.
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self.date.refresh()
        if self.counters is not None:
            self.counters.sample()
        now = self.loop.now
        for conn in [c for c in self.conns if c.deadline is not None and c.deadline <= now]:
            try:
                conn.timed_out()
            except Exception:
                log.exception("timing out %r failed", conn)
                with contextlib.suppress(Exception):
                    conn.close()

    def closed(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if self.draining and not self.conns:
            self._drained()

    def _buffered_once(self, directory: str) -> None:
        if directory not in self._buffered_logged:
            self._buffered_logged.add(directory)
            log.warning(
                "%s: the file system refuses O_DIRECT; AIO reads there are buffered "
                "(and io_submit may block)",
                directory,
            )

    # -- shutting down -------------------------------------------------------------------

    def drain(self, keep_idle: bool = False) -> None:
        """Stop accepting and let transfers in flight finish.

        Idle keep-alive connections are closed now, or with ``keep_idle`` (a reload)
        kept until their next request, answered with ``Connection: close``, or their
        keep-alive timeout: a client that sends on a connection just closed under it
        has to resend, one answered with ``close`` just reconnects.
        """
        if self.draining:
            if not keep_idle:
                self.keep_promised = False
                self._drain_connections(False)  # a stop after a reload: no more waiting
            return
        self.draining = True
        self.keep_promised = keep_idle
        self._close_listeners()
        self._drain_connections(keep_idle)

    def hand_over(self) -> list[socket.socket]:
        """A reload in this process: stop accepting and drain as ``drain(keep_idle=True)``
        does, but give the listening sockets (still open) to the next server."""
        socks = [acceptor.sock for acceptor in self.acceptors]
        for sock in socks:
            self.loop.remove(sock.fileno())
        self.acceptors = []
        self.draining = True
        self.keep_promised = True
        self._drain_connections(True)
        return socks

    def _drain_connections(self, keep_idle: bool) -> None:
        # One accepted but with no request yet stays a moment: its client may be
        # sending, and then gets its answer (with Connection: close), not a reset. One
        # that sends nothing (a browser's preconnect) is closed after FIRST_BYTE_GRACE,
        # not --header-timeout: nothing was asked, so a client can just reconnect.
        if not keep_idle:
            grace = self.loop.now + FIRST_BYTE_GRACE
            for conn in [c for c in self.conns if c.idle]:
                if conn.requests:
                    conn.close()
                elif conn.deadline is None or conn.deadline > grace:
                    conn.deadline = grace
        if not self.conns:
            self._drained()

    def _drained(self) -> None:
        if not self._drain_done:
            self._drain_done = True
            self.on_drained()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in list(self.conns):
            conn.close()
        self._close_listeners()
        if self.tls is not None:
            self.tls.close()
        self.aio.close()
        if self.warmer is not None:
            self.warmer.close()
        self.replay.close()
        self.static.close()
        self.dynamic.close()
        if self.counters is not None:
            self.counters.detach(self)
        if self.access_log is not None:
            self.access_log.close()

    def _close_listeners(self) -> None:
        """This process's copies only: the supervisor keeps the sockets for the next
        workers, so connections queued meanwhile wait for them instead of being refused."""
        for acceptor in self.acceptors:
            self.loop.remove(acceptor.sock.fileno())
            acceptor.sock.close()
        self.acceptors = []


def _tls_maker(side: TlsSide) -> Make:
    def make(owner: Server, sock: socket.socket, peer: object) -> Connection:
        # side.context looked up each time: a renewed certificate takes effect at the
        # next accept.
        ssock = side.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return TlsConnection(owner, ssock, peer, side)

    return make
