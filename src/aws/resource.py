"""An open file as the response layer sees it: descriptor, validators, pre-built heads.

Refcounted: the open-file cache (:mod:`aws.files`) holds it, every reply that sends from
it holds one more reference, and a file dropped from the cache closes with its last user.
"""

from __future__ import annotations

import os

import aiobind
from aws import heads
from aws.mime import content_type


class Resource:
    """An open regular file and what a response needs to know about it.

    A precompressed variant (``x.br`` for ``x``) is a Resource of its own, with its own
    descriptor, ETag and heads; the file it stands for lists it in ``variants``.
    """

    __slots__ = (
        "_date",
        "_direct_fd",
        "_fields",
        "_heads",
        "checked",
        "codings",
        "content_type",
        "direct",
        "encoding",
        "etag",
        "fd",
        "identity",
        "last_modified",
        "mtime",
        "probe",
        "refs",
        "replies",
        "siblings",
        "size",
        "stale",
        "variants",
    )

    def __init__(
        self,
        fd: int,
        st: os.stat_result,
        name: bytes,
        direct: bool,
        now: float,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        encoding: bytes = b"",
        vary: bool = False,
        ctype: bytes | None = None,
    ):
        self.fd = fd
        self.size = st.st_size
        self.mtime = int(st.st_mtime)
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        # From size and mtime only, as nginx and Apache 2.4 do: the inode differs from
        # one machine to the next, so replicas behind one load balancer would disagree
        # and every cache would miss when it switched. Nanoseconds rather than nginx's
        # seconds: a same-size rewrite within a second must not keep a strong ETag
        # (If-Range would splice two versions), and rsync -a, cp -p, tar --format=pax
        # and image layers all carry the nanoseconds over. A variant names its coding,
        # so x.gz and x.br made in the same instant at the same size still differ.
        if encoding:
            self.etag = b'"%x-%x-%s"' % (st.st_mtime_ns, st.st_size, encoding)
        else:
            self.etag = b'"%x-%x"' % (st.st_mtime_ns, st.st_size)
        self.last_modified = heads.http_date(st.st_mtime)
        self.content_type = content_type(name) if ctype is None else ctype
        self.encoding = encoding
        self.direct = direct
        self.checked = now
        self.refs = 0
        self.stale = False
        # (Content-Encoding, Resource) in the server's order, or None: no variant;
        # ``codings`` are their names (set with them by the cache).
        self.variants: tuple[tuple[bytes, Resource], ...] | None = None
        self.codings: tuple[bytes, ...] = ()
        # What the siblings looked like when they were opened (None: not looked for).
        self.siblings: tuple[object, ...] | None = None
        self._date = b""
        self._heads: tuple[bytes, bytes] = (b"", b"")
        self.replies: object = None  # respond.py's whole-file replies, built once a second
        # Not served within the revalidation interval: its pages may have left the page
        # cache, so the next response asks (a hot file is asked about at most that often).
        self.probe = True
        self._direct_fd = -2  # -2: not opened yet, -1: the file system refuses O_DIRECT
        tail = [*extra]
        if encoding:
            tail.insert(0, (b"Content-Encoding", encoding))
        if vary:
            tail.insert(0, (b"Vary", b"Accept-Encoding"))
        self._fields = (
            (b"Content-Type", self.content_type),
            (b"Last-Modified", self.last_modified),
            (b"ETag", self.etag),
            (b"Accept-Ranges", b"bytes"),
            *tail,
        )

    def fields(self) -> list[tuple[bytes, bytes]]:
        return [*self._fields]

    def validator_fields(self) -> list[tuple[bytes, bytes]]:
        """What a 304 carries: the validators, and Vary, the coding, Cache-Control and
        the extra headers of the 200 it stands for (RFC 9110 15.4.5)."""
        return [f for f in self._fields if f[0] not in (b"Content-Type", b"Accept-Ranges")]

    def ok_head(self, date: bytes, keep_alive: bool) -> bytes:
        """The whole-file 200 head, built once per second per file."""
        if date is not self._date:
            fields = [*self._fields, (b"Content-Length", b"%d" % self.size)]
            self._heads = (
                heads.build_head(200, date, False, fields),
                heads.build_head(200, date, True, fields),
            )
            self._date = date
        return self._heads[keep_alive]

    def release(self) -> None:
        """One user fewer; a file dropped from the cache closes with its last user."""
        self.refs -= 1
        if self.stale and not self.refs:
            self.close()

    def direct_fd(self) -> int:
        """A second descriptor of the same file with O_DIRECT, for reading a cold range
        by AIO without waiting on the loop; -1 where the file system refuses it."""
        if self._direct_fd == -2:
            try:
                # Through our own descriptor: the same file, whatever its path does now.
                self._direct_fd = os.open(
                    f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC | aiobind.O_DIRECT
                )
            except OSError:
                self._direct_fd = -1
        return self._direct_fd

    def close(self) -> None:
        self.replies = None  # they point back here
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -2
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
