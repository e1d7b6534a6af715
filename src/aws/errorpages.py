"""Custom error pages: ``404.html``, ``5NN.html`` and ``5xx.html`` (any 5xx without a
page of its own) from a folder under the document root, read once when a worker starts.

The folder is opened beneath the root (``openat2(RESOLVE_BENEATH)``, as every file
served is), so ``--error-pages ../etc`` cannot reach outside it. Pages are held in
memory and sent with the head in one call, so each is capped at :data:`PAGE_LIMIT`.
A changed page is seen after a restart (or a reload), not at once.
"""

from __future__ import annotations

import os
import re
import stat

import aiobind

PAGE_LIMIT = 256 * 1024
_NAME = re.compile(r"(404|5[0-9][0-9]|5xx)\.html")
_RESOLVE = aiobind.RESOLVE_BENEATH | aiobind.RESOLVE_NO_MAGICLINKS
FIVE_XX = 5  # the key of 5xx.html (see aws.sitepolicy.Policy.page)


class PageError(ValueError):
    """The pages cannot be loaded; the message names the folder or the file."""


def load(root: str, directory: str) -> dict[int, bytes]:
    """Status -> page body for the pages in ``root/directory``."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            dir_fd = aiobind.openat2(
                root_fd, directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, _RESOLVE
            )
        except OSError as exc:
            raise PageError(f"error pages folder {directory!r}: {exc.strerror}") from None
    finally:
        os.close(root_fd)
    pages: dict[int, bytes] = {}
    try:
        for name in sorted(os.listdir(dir_fd)):
            m = _NAME.fullmatch(name)
            if m is None:
                continue
            key = FIVE_XX if m.group(1) == "5xx" else int(m.group(1))
            pages[key] = _read(dir_fd, name, f"{directory}/{name}")
    finally:
        os.close(dir_fd)
    return pages


def _read(dir_fd: int, name: str, shown: str) -> bytes:
    try:
        fd = aiobind.openat2(dir_fd, name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, _RESOLVE)
    except OSError as exc:
        raise PageError(f"error page {shown}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PageError(f"error page {shown}: not a regular file")
        if st.st_size > PAGE_LIMIT:
            raise PageError(f"error page {shown}: over {PAGE_LIMIT} bytes")
        return os.read(fd, PAGE_LIMIT)
    finally:
        os.close(fd)
