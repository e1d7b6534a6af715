"""Settings shared by the supervisor and the workers (one frozen value, passed down)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8888
    root: str = "."
    workers: int = 1
    access_log: str | None = None
    symlinks: str = "root"  # the boundary symlinks may not leave: root, prefix or none
    # Timeouts, in seconds.
    header_timeout: float = 10.0  # a complete request head must arrive within this
    keepalive_timeout: float = 15.0  # idle time between requests on a kept-alive connection
    send_timeout: float = 60.0  # a client that reads nothing for this long is dropped
    drain_timeout: float = 30.0  # how long SIGTERM waits for transfers in flight
    # Limits.
    max_connections: int = 4096  # per worker; past it new connections are closed at once
    sendfile_chunk: int = 1 << 20  # bytes per connection per loop turn (nginx's sendfile_max_chunk)
    aio_chunk: int = 1024 * 1024  # bytes per AIO buffer (1 MiB: measured best on 64 MiB files)
    directio: int = 64 * 1024  # /dynamic/ files this large or larger are read with O_DIRECT
    aio_depth: int = 3  # AIO buffers per dynamic transfer (reads kept ahead of the socket)
    aio_maxevents: int = 256  # AIO reads in flight per worker
    open_file_cache: int = 1024  # open files kept per prefix per worker
    open_file_valid: float = 0.5  # seconds between re-checks: a replaced file shows within it
    backlog: int = 1024
