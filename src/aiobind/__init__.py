"""aiobind: a small, safe binding to Linux native AIO (libaio) and eventfd.

ctx = Context(64)
efd = EventFD()
buf = AlignedBuffer(1 << 20)
fd, direct = open_direct("data.bin")
ctx.submit_read(fd, buf, 0, token="chunk-0", eventfd=efd)
...  # epoll says efd is readable
efd.read()
for done in ctx.reap():
    print(done.token, done.check())
"""

from aiobind.buffers import PAGE_SIZE, AlignedBuffer, BufferPool, round_up
from aiobind.context import Completion, Context, Read
from aiobind.eventfd import EventFD
from aiobind.files import (
    O_DIRECT,
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    open_direct,
    openat2,
    set_direct,
)
from aiobind.pagecache import CacheStat, cachestat, uptodate_at
from aiobind.process import get_comm, parent_death_signal, set_comm, set_parent_death_signal

__all__ = [
    "O_DIRECT",
    "PAGE_SIZE",
    "RESOLVE_BENEATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "AlignedBuffer",
    "BufferPool",
    "CacheStat",
    "Completion",
    "Context",
    "EventFD",
    "Read",
    "cachestat",
    "get_comm",
    "open_direct",
    "openat2",
    "parent_death_signal",
    "round_up",
    "set_comm",
    "set_direct",
    "set_parent_death_signal",
    "uptodate_at",
]
