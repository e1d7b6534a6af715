"""A non-blocking, close-on-exec eventfd: the bridge from AIO completions to epoll.

Each completion of a read submitted with this eventfd adds 1 to its counter; one
``read`` returns the count and resets it to zero.
"""

from __future__ import annotations

import os


class EventFD:
    def __init__(self, initval: int = 0) -> None:
        self._fd = os.eventfd(initval, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("eventfd is closed")
        return self._fd

    def read(self) -> int:
        """Return the counter and reset it; 0 when nothing was signalled."""
        try:
            return os.eventfd_read(self._fd)
        except BlockingIOError:
            return 0

    def write(self, n: int = 1) -> None:
        os.eventfd_write(self._fd, n)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> EventFD:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
