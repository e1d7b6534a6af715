"""The fast path for a repeated request: the one place a connection's Python machine
is skipped.

:class:`Replaying` is a base of :class:`aws.connection.Connection` (as
:class:`aws.sending.Sending` is). After a short reply read from the page cache in one
turn, ``_replayable`` keeps what answering the same request again needs; on the next
readable event ``_replay`` checks that the answer cannot have changed and lets
:mod:`aiobind.replay` make the recv, the send (or the AIO read and sendmsg) and the
sendfile in one C call. What the C call could not finish goes back to the Python
machine, in the state the Python path would be in. The attributes live in the
connection's ``__slots__``.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING

from aiobind import replay
from aws import respond
from aws.states import SEND_FILE, SEND_HEAD

if TYPE_CHECKING:
    from aws.files import FileCache, Resource
    from aws.http import Request
    from aws.states import State
    from aws.worker_context import Worker

log = logging.getLogger("aws.connection")

# What Connection._replay needs to answer a request again: its bytes, the reply, the
# Date value in the reply's head, the cache and the cache's entry the reply came from.
Again = tuple[bytes, respond.Reply, bytes, "FileCache", "Resource"]


class Replaying:
    __slots__ = ()

    file_path = "sendfile"  # how a /static/ body leaves, for the log and the metrics

    server: Worker
    fd: int
    peer: object
    req: Request | None
    again: Again | None
    requests: int
    res: Resource | None
    began: float
    status: int
    path: str
    sent: int
    pos: int
    stop: int
    warm_to: int
    out: bytes
    deadline: float | None

    if TYPE_CHECKING:  # the connection's and Sending's; not stubs here, they would win

        def _to(self, new: State) -> None: ...
        def _block(self) -> None: ...
        def _abort(self, why: str) -> None: ...
        def _received(self, data: bytes) -> None: ...

    def _replay(self, again: Again) -> bool:
        """The one hot-path trick, and the only place the machine moves outside ``_to``:
        a keep-alive request whose bytes repeat the last one's, while everything its
        answer depends on is as it was, is answered by ``aiobind.replay`` in one C call
        that makes the same recv, send(MSG_MORE) and sendfile the Python path makes
        (READ_HEAD, SEND_HEAD, SEND_FILE, DONE and back, in C). Measured: see
        ARCHITECTURE.md. False: not applicable now (``again`` is dropped), read as usual.

        The answer is the same when the same bytes parse to the same request (parsing
        is a pure function of them), its Resource is still the fresh cache entry for its
        key (what ``FileCache.acquire`` would return without a stat), the Date second is
        the same and the worker is not draining (the keep-alive decision). A
        precompressed variant is checked through its file's entry, which stands for it
        in the cache (the variants are looked at again with it)."""
        raw, reply, date, cache, entry = again
        server = self.server
        res = reply.res
        req = self.req
        assert res is not None and req is not None
        if (
            server.date.value is not date
            or server.draining
            or res.probe
            or server.loop.now - entry.checked >= cache.valid
            or cache.entries.get(req.key) is not entry  # (a dropped entry's variants too)
        ):
            self.again = None
            return False
        done = server.replay
        aio = reply.way is respond.AIO
        path = "aio-buffered" if aio else self.file_path
        ways = reply.cells
        cells = ways.get(path) if ways is not None else None
        if cells is None:  # the first replay of this reply: where it is counted, if at all
            cells = server.tally(reply.status, req.prefix, path)
            reply.cells = {**(ways or {}), path: cells}
        now = server.loop.now
        outcome = self._replay_call(done, raw, reply, res.fd, aio, cells, now)
        if outcome == replay.SERVED:
            self.requests += 1
            cache.hits += 1
            self.status = reply.status
            self.sent = reply.stop - reply.start
            self.path = path
            finish = server.on_replay  # the metrics counted it in C already
            if finish is not None:
                self.began = now
                self.res = res  # no reference of its own: released by nobody
                try:
                    finish(self)
                finally:
                    self.res = None
            self.deadline = now + server.config.keepalive_timeout
            return True
        if outcome == replay.OTHER:
            self._received(done.data())
        elif outcome == replay.CLOSED or outcome < 0:
            if outcome != -errno.EAGAIN:
                if outcome < 0:
                    why = OSError(-outcome, os.strerror(-outcome))
                    log.debug("%s: recv failed: %s", self.peer, why)
                self._received(b"")
        else:
            self._replay_unfinished(outcome, reply, cache, aio)
        return True

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
        """The C call itself (a TLS connection makes its own)."""
        if aio:
            efd = self.server.aio.efd_fd
            return done.serve_read(
                self.fd, raw, reply.head, fd, reply.start, reply.stop, efd, cells, now
            )
        return done.serve(self.fd, raw, reply.head, fd, reply.start, reply.stop, cells, now)

    def _replay_unfinished(
        self, outcome: int, reply: respond.Reply, cache: FileCache, aio: bool
    ) -> None:
        """A replayed request whose answer did not all go out: the Python machine takes
        the rest from where the C call stopped, or ends the connection as it would."""
        res = reply.res
        assert res is not None
        self.requests += 1
        cache.hits += 1
        self.began = self.server.loop.now
        self.status = reply.status
        self.path = "aio-buffered" if aio else self.file_path
        self.sent = 0  # not the last response's count, if this one ends here
        if outcome == replay.BLOCKED:
            self._replay_rest(reply, aio)
            return
        # It ends here, under way: close() logs and counts it as such (the C call counts
        # only answers it sent whole).
        self._to(SEND_HEAD)
        if outcome == replay.SHRANK:
            res.checked = float("-inf")  # the next request re-checks the file at once
            self._abort("file shrank during the transfer")
        else:
            self._abort(self._replay_failure(reply, aio))

    def _replay_rest(self, reply: respond.Reply, aio: bool) -> None:
        """The socket filled part way: the Python machine sends the rest."""
        res = reply.res
        assert res is not None
        done = self.server.replay
        start, stop = reply.start, reply.stop
        if aio:
            # The rest, copied out of the replay's buffer (at most replay_max bytes), as
            # a head-only reply: the same bytes the Python path sends from AIO buffers.
            self.sent, self.stop = 0, stop - start  # what the head-only reply counts when done
            self.out = reply.head[done.head_sent :] + done.body(stop - start)[done.file_pos :]
            self._to(SEND_HEAD)
            self._block()
            return
        res.refs += 1
        self.res = res
        self.pos = pos = done.file_pos
        self.stop = self.warm_to = stop
        self.sent = pos - start
        self.out = reply.head[done.head_sent :]
        self._to(SEND_HEAD)
        if not self.out:
            self._to(SEND_FILE)
        self._block()

    def _replay_failure(self, reply: respond.Reply, aio: bool) -> str:
        """The log line of a C call that failed (FAILED), as the Python path words it."""
        done = self.server.replay
        what = "send" if aio or done.head_sent < len(reply.head) else "sendfile"
        return f"{what} failed: {OSError(done.errno, os.strerror(done.errno))}"

    def _replayable(self, reply: respond.Reply) -> None:
        """Called by ``_start`` for a short body read from the page cache in one turn."""
        req = self.req
        if req is not None and req.raw is not None:
            server = self.server
            cache = server.caches[req.prefix]
            entry = cache.entries.get(req.key)
            if entry is not None:
                self.again = (req.raw, reply, server.date.value, cache, entry)
