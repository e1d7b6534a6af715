"""Several byte ranges in one response: ``206`` with ``multipart/byteranges``
(RFC 9110 14.6), sent without copying the file's bytes through Python on ``/static/``
(a ``sendfile`` per part) and read by AIO part after part on ``/dynamic/``.

The body is a list of segments ``(bytes, start, stop)``: the delimiter and the part's
head, then bytes ``[start, stop)`` of the file; the last segment is the closing
delimiter with no file bytes. At most ``max_ranges`` parts (the ranges are merged first),
so a response's description stays small whatever the file.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from aws.aio import DynamicBody

if TYPE_CHECKING:
    from aws.aio import AioReader, BodyOwner

Segment = tuple[bytes, int, int]


def segments(
    ranges: list[tuple[int, int]], size: int, content_type: bytes
) -> tuple[bytes, list[Segment], int]:
    """``(boundary, segments, body length)`` for the half-open ``ranges``."""
    # Random per response: a fixed boundary could be found in some file's bytes.
    boundary = secrets.token_hex(12).encode()
    out: list[Segment] = []
    length = 0
    for i, (start, end) in enumerate(ranges):
        head = b"%s--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (
            b"\r\n" if i else b"",
            boundary,
            content_type,
            start,
            end - 1,
            size,
        )
        out.append((head, start, end))
        length += len(head) + end - start
    closing = b"\r\n--%s--\r\n" % boundary
    out.append((closing, 0, 0))
    return boundary, out, length + len(closing)


class Cursor:
    """Where a multipart transfer is: the bytes of the current segment still to send,
    then its file range ``[pos, stop)``, known to be in the page cache up to
    ``warm_to`` (or not asked about, when ``asking`` is off)."""

    __slots__ = ("asking", "data", "index", "pos", "segments", "stop", "warm_to")

    def __init__(self, segs: list[Segment]) -> None:
        self.segments = segs
        self.index = 0
        self.data, self.pos, self.stop = segs[0]
        self.asking = True
        self.warm_to = self.pos  # not asked yet

    def stop_asking(self) -> None:
        """Send the rest as it is: a cold range has nowhere else to go."""
        self.asking = False
        self.warm_to = self.stop

    def advance(self) -> bool:
        """On to the next segment; False when there is none."""
        self.index += 1
        if self.index >= len(self.segments):
            return False
        self.data, self.pos, self.stop = self.segments[self.index]
        self.warm_to = self.pos if self.asking else self.stop
        return True


class MultipartBody:
    """The AIO body of a multipart response: looks like one :class:`DynamicBody` to
    :func:`aws.transfer.send_buffers` (``view``/``advance``/``close``). Each part's
    reads are submitted as soon as its delimiter is up, so the disk works while the
    delimiter goes out; one part's buffers at a time (``depth`` of them)."""

    __slots__ = ("_body", "_cursor", "_data", "depth", "fd", "owner", "reader")

    def __init__(
        self, reader: AioReader, owner: BodyOwner, fd: int, segs: list[Segment], depth: int
    ) -> None:
        self.reader = reader
        self.owner = owner
        self.fd = fd
        self.depth = depth
        self._cursor = Cursor(segs)
        self._body: DynamicBody | None = None
        self._data = memoryview(b"")
        self._enter()

    def _enter(self) -> None:
        cursor = self._cursor
        self._data = memoryview(cursor.data)
        if cursor.pos < cursor.stop:
            self._body = DynamicBody(
                self.reader, self.owner, self.fd, cursor.pos, cursor.stop, self.depth
            )

    def view(self) -> memoryview | None:
        if self._data:
            return self._data[:]  # the caller releases it; ours stays usable
        body = self._body
        return None if body is None else body.view()

    def advance(self, sent: int) -> bool:
        """Record ``sent`` bytes as gone; True when the whole body has been sent."""
        if self._data:
            self._data = self._data[sent:]
            if self._data or self._body is not None:
                return False
        else:
            assert self._body is not None
            if not self._body.advance(sent):
                return False
            self._body.close()
            self._body = None
        if not self._cursor.advance():
            return True
        self._enter()
        return False

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
