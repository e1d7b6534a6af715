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
    "Completion",
    "Context",
    "EventFD",
    "Read",
    "open_direct",
    "openat2",
    "round_up",
    "set_direct",
]
