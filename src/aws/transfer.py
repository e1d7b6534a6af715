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
import os
import socket

from aws.aio import DynamicBody, FileChanged
from aws.multipart import Cursor, MultipartBody

MSG_MORE = socket.MSG_MORE
CORK_ABOVE = 256 * 1024  # static bodies this long are sent corked (nginx's tcp_nopush)

# Outcomes, compared by identity.
DONE = "done"
BLOCKED = "blocked"  # the socket is full: wait for EPOLLOUT (or the budget was spent)
WAITING = "waiting"  # the next bytes are still being read from the disk


class TransferFailed(Exception):
    """The transfer cannot go on; the connection ends. ``file_changed`` asks the open-file
    cache to re-check the file at once."""

    def __init__(self, why: str, file_changed: bool = False) -> None:
        super().__init__(why)
        self.file_changed = file_changed


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
    while pos < stop:
        try:
            n = send(out_fd, in_fd, pos, min(stop - pos, budget))
        except BlockingIOError:
            return pos
        except OSError as exc:
            raise TransferFailed(f"sendfile failed: {exc}") from None
        if n == 0:  # before the promised end: the file shrank, do not spin
            raise TransferFailed("file shrank during the transfer", file_changed=True)
        pos += n
        budget -= n
        if budget <= 0:
            return pos  # level-triggered EPOLLOUT brings the connection back next turn
    return pos


def send_parts(sock: socket.socket, in_fd: int, cursor: Cursor, budget: int) -> tuple[str, int]:
    """A multipart body on ``/static/``: each segment's bytes with ``send`` (MSG_MORE
    while file bytes follow), then its range with ``sendfile``. Returns ``(DONE or
    BLOCKED, bytes sent)``; ``cursor`` keeps the place."""
    out_fd = sock.fileno()
    sent = 0
    while True:
        data = cursor.data
        if data:
            left = send_bytes(sock, data, cursor.pos < cursor.stop)
            sent += len(data) - len(left)
            cursor.data = left
            if left:
                return BLOCKED, sent
        pos = cursor.pos
        if pos < cursor.stop:
            if sent >= budget:
                return BLOCKED, sent  # level-triggered EPOLLOUT brings it back next turn
            new = sendfile(out_fd, in_fd, pos, cursor.stop, budget - sent)
            sent += new - pos
            cursor.pos = new
            if new < cursor.stop:
                return BLOCKED, sent
        if not cursor.advance():
            return DONE, sent
        if sent >= budget:
            return BLOCKED, sent


def send_buffers(
    sock: socket.socket, body: DynamicBody | MultipartBody, head: bytes, budget: int
) -> tuple[str, bytes, int]:
    """Send the AIO buffers that are read, the unsent ``head`` first in the same
    ``sendmsg``. Returns ``(outcome, head left, body bytes sent)``."""
    sent = 0
    while True:
        try:
            view = body.view()
        except (OSError, FileChanged) as exc:
            raise TransferFailed(f"reading the file failed: {exc}", file_changed=True) from None
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
            raise TransferFailed(f"send failed: {exc}") from None
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


def uncork(sock: socket.socket) -> None:
    """Push the last partial segment now."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
