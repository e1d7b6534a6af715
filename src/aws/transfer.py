"""Moving a reply's bytes: each function sends until the kernel says EAGAIN or the
turn's byte budget is spent, and says what is left (nginx's ``ngx_linux_sendfile_chain``
returns the rest of its chain the same way).

A short count is not EAGAIN: every loop here goes on until ``BlockingIOError`` or the
budget. Failures raise :class:`TransferFailed` with a reason for the log. The state
machine in :mod:`aws.connection` only learns *done*, *blocked* (wait for EPOLLOUT) or
*waiting* (for the disk), so another way out (a TLS socket that cannot sendfile) is a
new function here, not a new state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
from collections.abc import Callable

from aiobind.buffers import AlignedBuffer
from aiobind.pagecache import PAGE, cachestat, pages, uptodate_at
from aws.aio import DynamicBody, FileChanged
from aws.multipart import Cursor, MultipartBody

MSG_MORE = socket.MSG_MORE
CORK_ABOVE = 256 * 1024  # static bodies this long are sent corked (nginx's tcp_nopush)
# A long body's socket takes at most this much not yet sent (TCP_NOTSENT_LOWAT): beyond
# it, sendfile stops and EPOLLOUT waits. Without it the kernel grows the send buffer to
# 4 MiB and a share of a turn lands in one socket as a megabyte that ACKs then send in
# bursts: with 8 cached downloads beside a small-file client (make bench-cold, dev VM)
# the small requests' p99 was 3.5-6.8 ms; with 256 KiB it was 0.73-0.87 ms, the
# downloads no slower, and 64 MiB c4 no slower either (2,288 against 2,061 MiB/s).
# 128 KiB gave the same p99 and fewer MiB/s; 512 KiB, the same p99 and fewer MiB/s too
# (1,764 against 1,934, 3 rounds alternated); 1 MiB, a p99 of 1.5 ms.
UNSENT_MAX = 256 * 1024

# sendfile from a range that is not in the page cache reads it on the loop: a cold
# 1 MiB took 2.25 ms against 117 us warm (dev machine), and every other client waits.
# So before sendfile, ranges that can be cold are asked about (cachestat, ~1 us), and a
# cold one is read by AIO (O_DIRECT: io_submit returns at once) and sent from buffers.
# Measured alternatives: posix_fadvise(WILLNEED) blocks the loop ~230 us per MiB to
# submit its reads; a preadv(RWF_NOWAIT) miss starts only ~16 KiB of readahead.
PROBE_SPAN = 4 << 20  # asked about at once: one cachestat per 4 MiB sent when warm
MIN_SLICE = 64 << 10  # a partly cached span is tried this small before going to AIO
# A cold range is read by AIO only up to where the page cache has the file again: a few
# reclaimed pages in a cached file (this VM's kernel reclaims on its own) are a hole of
# 64 KiB, not 3 MiB copied through buffers. A hole this small is also asked back into
# the page cache (WILLNEED: 11 us for 64 KiB, 33 us for 256 KiB, median, on this disk)
# so the next pass over it stays on sendfile: O_DIRECT reads leave nothing behind.
REFILL_MAX = 256 << 10
# cachestat is not always there to ask: Linux before 6.5 has none (ENOSYS), and this
# machine's 6.18 answers only for files the caller could write or owns (EPERM, as for
# mincore), so a server running as its own user, serving files root owns, gets no
# answer. Then a one-byte preadv(RWF_NOWAIT) every PROBE_STEP asks instead (~1-2 us
# each): a hole between two probes is missed, and sendfile reads it on the loop, as it
# would with no probe at all. A file system without RWF_NOWAIT cannot be asked: there,
# every range counts as warm.
PROBE_STEP = 256 << 10
_COUNTING = [True]  # cachestat exists here; ENOSYS turns it off for the process

# Outcomes, compared by identity.
DONE = "done"
BLOCKED = "blocked"  # the socket is full: wait for EPOLLOUT (or the budget was spent)
WAITING = "waiting"  # the next bytes are still being read from the disk
COLD = "cold"  # the next bytes are not in the page cache: sendfile would wait for them


class TransferFailed(Exception):
    """The transfer cannot go on; the connection ends. ``file_changed`` asks the open-file
    cache to re-check the file at once."""

    def __init__(self, why: str, file_changed: bool = False, moved: int = 0) -> None:
        super().__init__(why)
        self.file_changed = file_changed
        self.moved = moved  # body bytes the call had sent before it failed (for the log)


def send_bytes(sock: socket.socket, data: bytes, more: bool) -> bytes:
    """Send ``data``; returns what the kernel did not take (b"" when all went).

    ``more`` holds the last segment back for the body that follows (MSG_MORE: the head
    and the first file bytes share a segment, and no Nagle stall).
    """
    flags = MSG_MORE if more else 0
    while data:
        try:
            n = sock.send(data, flags)
        except BlockingIOError:
            return data
        except OSError as exc:
            raise TransferFailed(f"send failed: {exc}") from None
        data = data[n:]
    return data


def sendfile(out_fd: int, in_fd: int, pos: int, stop: int, budget: int) -> int:
    """``sendfile`` bytes ``[pos, stop)`` of ``in_fd``, at most ``budget`` of them this
    turn; returns the new position (``stop`` when done)."""
    send = os.sendfile
    begin = pos
    while pos < stop:
        try:
            n = send(out_fd, in_fd, pos, min(stop - pos, budget))
        except BlockingIOError:
            return pos
        except OSError as exc:
            raise TransferFailed(f"sendfile failed: {exc}", moved=pos - begin) from None
        if n == 0:  # before the promised end: the file shrank, do not spin
            raise TransferFailed("file shrank during the transfer", True, pos - begin)
        pos += n
        budget -= n
        if budget <= 0:
            return pos  # level-triggered EPOLLOUT brings the connection back next turn
    return pos


def send_parts(
    sock: socket.socket,
    in_fd: int,
    cursor: Cursor,
    budget: int,
    send: Callable[[socket.socket, bytes, bool], bytes] = send_bytes,
) -> tuple[str, int]:
    """A multipart body on ``/static/``: each segment's bytes with ``send`` (MSG_MORE
    while file bytes follow; through SSL on a kTLS socket, which takes no flags), then
    its range with ``sendfile`` over what the page cache holds. Returns ``(DONE,
    BLOCKED or COLD, bytes sent)``; ``cursor`` keeps the place (COLD: the part's next
    bytes, at ``cursor.pos``, would come from the disk)."""
    out_fd = sock.fileno()
    sent = 0
    try:
        while True:
            data = cursor.data
            if data:
                left = send(sock, data, cursor.pos < cursor.stop)
                sent += len(data) - len(left)
                cursor.data = left
                if left:
                    return BLOCKED, sent
            pos = cursor.pos
            while pos < cursor.stop:
                if sent >= budget:
                    return BLOCKED, sent  # level-triggered EPOLLOUT brings it back next turn
                if pos >= cursor.warm_to:
                    warm = warm_until(in_fd, pos, cursor.stop)
                    if warm == pos:
                        return COLD, sent
                    cursor.warm_to = warm
                end = cursor.warm_to
                new = sendfile(out_fd, in_fd, pos, end, budget - sent)
                sent += new - pos
                cursor.pos = pos = new
                if new < end and sent < budget:
                    return BLOCKED, sent
            if not cursor.advance():
                return DONE, sent
            if sent >= budget:
                return BLOCKED, sent
    except TransferFailed as exc:
        exc.moved += sent  # the parts that went before the failing call
        raise


def _next_view(body: DynamicBody | MultipartBody) -> memoryview | None:
    """The next read bytes of ``body`` (None: still being read), whichever socket they
    go to; a failed or short read ends the transfer."""
    try:
        return body.view()
    except (OSError, FileChanged) as exc:
        raise TransferFailed(f"reading the file failed: {exc}", file_changed=True) from None


def send_buffers(
    sock: socket.socket, body: DynamicBody | MultipartBody, head: bytes, budget: int
) -> tuple[str, bytes, int]:
    """Send the AIO buffers that are read, the unsent ``head`` first in the same
    ``sendmsg``. Returns ``(outcome, head left, body bytes sent)``."""
    sent = 0
    while True:
        try:
            view = _next_view(body)
        except TransferFailed as exc:
            exc.moved = sent
            raise
        if view is None:
            return WAITING, head, sent
        try:
            n = sock.sendmsg([head, view]) if head else sock.send(view)
        except BlockingIOError:
            view.release()
            return BLOCKED, head, sent
        except OSError as exc:
            # The buffers go back to the pool when the connection closes: no view of
            # them may outlive that.
            view.release()
            raise TransferFailed(f"send failed: {exc}", moved=sent) from None
        if head:
            if n < len(head):
                head = head[n:]
                view.release()
                continue
            n -= len(head)
            head = b""
        view.release()
        sent += n
        budget -= n
        if body.advance(n):
            return DONE, head, sent
        if budget <= 0:
            return BLOCKED, head, sent


def cork(sock: socket.socket, on: bool) -> bool:
    """TCP_CORK on or off; False where the socket is not TCP (a Unix socket)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)
    except OSError:
        return False
    return True


def hold_unsent(sock: socket.socket) -> None:
    """Keep at most UNSENT_MAX bytes waiting in a long body's socket (not on a Unix
    socket, which has no such option)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_MAX)


def uncork(sock: socket.socket) -> None:
    """Push the last partial segment now."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


def warm_until(fd: int, pos: int, stop: int) -> int:
    """How far from ``pos`` the file is in the page cache and readable without waiting
    (``pos`` itself when the next bytes would come from the disk)."""
    for span in (PROBE_SPAN, MIN_SLICE):
        end = min(stop, pos + span)
        if _readable(fd, pos, end):
            return end
        if end == stop:
            break
    return pos


def in_page_cache(fd: int, start: int, stop: int) -> bool:
    """Whether all of ``[start, stop)`` can be read without waiting for the disk (an
    empty range can)."""
    return stop <= start or _readable(fd, start, stop)


def _readable(fd: int, start: int, end: int) -> bool:
    """Every page of ``[start, end)`` in the page cache, and the last one readable (a
    page being read in is counted by cachestat before it can be read)."""
    return _cached(fd, start, end) is not False and _uptodate(fd, (end - 1) // PAGE * PAGE)


def _cached(fd: int, start: int, end: int) -> bool | None:
    """Whether every page of ``[start, end)`` is in the page cache; None when only
    probes could say, and they found no page missing."""
    if _COUNTING[0]:
        try:
            return cachestat(fd, start, end - start).cache >= pages(start, end - start)
        except OSError as exc:  # ENOSYS, or EPERM for a file we neither own nor could write
            if exc.errno == errno.ENOSYS:
                _COUNTING[0] = False
    for offset in range(start - start % PAGE, end, PROBE_STEP):
        if not _uptodate(fd, offset):
            return False
    return None


def _uptodate(fd: int, offset: int) -> bool:
    try:
        return uptodate_at(fd, offset)
    except OSError:  # no RWF_NOWAIT on this file system: nothing to ask, call it warm
        return True


def cold_until(fd: int, pos: int, limit: int) -> int:
    """Where the cold range from ``pos`` ends, ``limit`` at most: the start of the first
    whole ``MIN_SLICE`` span after it that is in the page cache."""
    if _none_cached(fd, pos, limit):
        return limit  # all of it cold (an evicted file): one call
    end = min(limit, (pos // MIN_SLICE + 1) * MIN_SLICE)
    while end < limit:
        nxt = min(limit, end + MIN_SLICE)
        if _readable(fd, end, nxt):
            return end
        end = nxt
    return limit


def _none_cached(fd: int, pos: int, limit: int) -> bool:
    if _COUNTING[0]:
        with contextlib.suppress(OSError):
            return cachestat(fd, pos, limit - pos).cache == 0
    # Only probes to ask: both ends cold is taken for all of it.
    return not _uptodate(fd, pos - pos % PAGE) and not _uptodate(fd, (limit - 1) // PAGE * PAGE)


def refill(fd: int, pos: int, end: int) -> None:
    """Ask a small cold hole back into the page cache (the disk reads it meanwhile)."""
    if end - pos <= REFILL_MAX:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, pos, end - pos, os.POSIX_FADV_WILLNEED)


# -- through an SSL socket (TLS without kernel TLS) ---------------------------------------
#
# SSL_write is all or nothing here (CPython does not set SSL_MODE_ENABLE_PARTIAL_WRITE),
# and after SSLWantWriteError it must be called again with the same bytes: OpenSSL has
# already sent some of their records. So the bytes to retry stay where they are (the
# head in ``out``, a read chunk in its pooled buffer, an AIO view unadvanced) until
# SSL_write takes them. The loops still advance by what send returned, so a partial
# write would be handled too.

_SSL_BLOCKED = (ssl.SSLWantWriteError, ssl.SSLWantReadError)
# SSL_write takes what it is given whole (no partial writes), so an AIO buffer (1 MiB)
# handed over at once was a megabyte encrypted in one call, whatever the turn's budget:
# loop turns of 1-2.5 ms beside HTTPS downloads. A buffer goes in slices of this much
# instead: a constant, so that a write retried after SSLWantWriteError offers the very
# same bytes again, as OpenSSL requires (the view is not advanced meanwhile).
SSL_SLICE = 256 << 10


def ssl_send_bytes(sock: ssl.SSLSocket, data: bytes, more: bool = False) -> bytes:
    """Send ``data`` through SSL; returns what it did not take yet (b"" when all went).
    ``more`` is :func:`send_bytes`'s, and has no meaning here: SSL frames the records."""
    while data:
        try:
            n = sock.send(data)
        except _SSL_BLOCKED:
            return data
        except OSError as exc:
            raise TransferFailed(f"TLS send failed: {exc}") from None
        data = data[n:]
    return data


class Stage:
    """A static body's next bytes, read into one pooled page-aligned buffer and held
    there until SSL_write has taken them: ``mem[sent:filled]`` is still to go, of which
    the last ``body`` bytes are file bytes (the head, if any, comes first)."""

    __slots__ = ("body", "buf", "filled", "mem", "sent")

    def __init__(self, buf: AlignedBuffer) -> None:
        self.buf = buf
        self.mem = buf.view
        self.filled = 0
        self.sent = 0
        self.body = 0

    def put_head(self, head: bytes) -> bytes:
        """Stage the head ahead of the file bytes, so that a small file leaves in one
        record and one write; returns the part that did not fit (sent on its own)."""
        room = len(self.mem) // 2
        if len(head) > room:
            return head
        self.mem[: len(head)] = head
        self.filled = len(head)
        return b""


def ssl_sendfile(
    sock: ssl.SSLSocket, stage: Stage, fd: int, pos: int, stop: int, budget: int
) -> tuple[int, bool]:
    """Read ``[pos, stop)`` of ``fd`` chunk by chunk into ``stage`` and write each through
    SSL, at most about ``budget`` bytes this turn (the staged head counts). Returns the
    position of the first file byte not yet taken by SSL (``stop`` when done: the stage
    is then empty), and whether SSL could take no more (False: done, or budget spent)."""
    mem = stage.mem
    preadv = os.preadv
    begin = pos
    while True:
        if stage.sent == 0 and stage.body == 0 and pos < stop:
            # Nothing of this chunk was offered to SSL yet: fill the rest of the buffer,
            # or what is left of the budget (SSL_write takes a chunk whole), not less
            # than a slice.
            start = stage.filled
            want = min(len(mem) - start, stop - pos, max(budget - start, MIN_SLICE))
            try:
                n = preadv(fd, [mem[start : start + want]], pos)
            except OSError as exc:
                why = f"reading the file failed: {exc}"
                raise TransferFailed(why, True, pos - begin) from None
            if n == 0:  # before the promised end: the file shrank
                raise TransferFailed("file shrank during the transfer", True, pos - begin)
            stage.filled = start + n
            stage.body = n
        if stage.sent == stage.filled:
            return pos, False  # only when pos == stop: every turn leaves with bytes staged
        try:
            n = sock.send(mem[stage.sent : stage.filled])
        except _SSL_BLOCKED:
            return pos, True
        except OSError as exc:
            raise TransferFailed(f"TLS send failed: {exc}", moved=pos - begin) from None
        stage.sent += n
        budget -= n
        if stage.sent < stage.filled:
            continue
        pos += stage.body
        stage.filled = stage.sent = stage.body = 0
        if pos >= stop or budget <= 0:
            return pos, False


def ssl_send_buffers(
    sock: ssl.SSLSocket, body: DynamicBody, head: bytes, budget: int
) -> tuple[str, bytes, int]:
    """:func:`send_buffers` through SSL: the head first (SSLSocket has no sendmsg), then
    each AIO buffer as it is read. Returns ``(outcome, head left, body bytes sent)``."""
    if head:
        head = ssl_send_bytes(sock, head)
        if head:
            return BLOCKED, head, 0
    sent = 0
    while True:
        try:
            view = _next_view(body)
        except TransferFailed as exc:
            exc.moved = sent
            raise
        if view is None:
            return WAITING, head, sent
        try:
            n = sock.send(view[:SSL_SLICE])
        except _SSL_BLOCKED:
            view.release()
            return BLOCKED, head, sent  # the view comes back unadvanced: the same bytes
        except OSError as exc:
            view.release()
            raise TransferFailed(f"TLS send failed: {exc}", moved=sent) from None
        view.release()
        sent += n
        budget -= n
        if body.advance(n):
            return DONE, head, sent
        if budget <= 0:
            return BLOCKED, head, sent
