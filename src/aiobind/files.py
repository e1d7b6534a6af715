"""Opening files for direct I/O, and opening them confined beneath a directory.

O_DIRECT is what makes native AIO truly asynchronous; file systems that do not take it
(tmpfs before Linux 6.6, some FUSE mounts) refuse with EINVAL, and we fall back to a
buffered descriptor and say so, so the caller can log it once.
"""

from __future__ import annotations

import errno
import fcntl
import os

from aiobind._native import lib

O_DIRECT: int = getattr(os, "O_DIRECT", 0o40000)
RESOLVE_BENEATH: int = lib.RESOLVE_BENEATH
RESOLVE_NO_MAGICLINKS: int = lib.RESOLVE_NO_MAGICLINKS
RESOLVE_NO_SYMLINKS: int = lib.RESOLVE_NO_SYMLINKS
RESOLVE_NO_XDEV: int = lib.RESOLVE_NO_XDEV
RESOLVE_IN_ROOT: int = lib.RESOLVE_IN_ROOT


def open_direct(path: str | os.PathLike[str], dir_fd: int | None = None) -> tuple[int, bool]:
    """Open ``path`` read-only, with O_DIRECT when the file system allows it.

    Returns ``(fd, direct)``: ``direct`` is False when the file system refused O_DIRECT
    and the descriptor is an ordinary buffered one.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | O_DIRECT, dir_fd=dir_fd), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return os.open(path, flags, dir_fd=dir_fd), False


def set_direct(fd: int) -> bool:
    """Turn on O_DIRECT for an open descriptor; False if its file system refuses."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


def openat2(dir_fd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(2)``: open ``path`` relative to ``dir_fd`` under ``resolve`` rules.

    With ``RESOLVE_BENEATH`` the kernel refuses (EXDEV) any path that would leave
    ``dir_fd``: ``..`` above it, absolute paths, and symlinks pointing outside.
    """
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded NUL byte in path")
    fd = lib.aiob_openat2(dir_fd, raw, flags, mode, resolve)
    if fd < 0:
        raise OSError(-fd, f"openat2({path!r}): {os.strerror(-fd)}", path)
    return fd
