"""What a connection needs of the worker that owns it, and nothing more.

:class:`aws.server.Server` is the one implementation; the in-process tests and
``bench/micro.py`` drive connections through it too. Kept apart so the connection's
modules depend on this narrow seam, not on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aiobind.replay import Replay
    from aws.aio import AioReader
    from aws.config import Config
    from aws.connection import Connection
    from aws.files import FileCache
    from aws.heads import DateCache
    from aws.loop import Loop
    from aws.turns import Turns
    from aws.warming import Warmer


class Worker(Protocol):
    """What a connection needs of the worker that owns it, and nothing more."""

    loop: Loop
    config: Config
    date: DateCache
    aio: AioReader
    caches: Mapping[bytes | None, FileCache]
    draining: bool
    turns: Turns  # long transfers take each loop turn's byte budget in order
    warmer: Warmer | None  # brings cold /static/ ranges into the page cache (aws.warming)
    # Draining for a reload: a response sent as keep-alive keeps that promise for one
    # more request (answered with Connection: close) instead of a close under the client.
    keep_promised: bool
    # Called once per response, before its body is released (None: nobody asked).
    on_response: Callable[[Connection], None] | None

    replay: Replay  # the C fast path for a repeated request, and its largest body
    replay_max: int
    # For a replayed response: the Python hook left (the access log; None: nothing),
    # and the cells the C call counts it in (aiobind.replay.UNCOUNTED: metrics are off).
    on_replay: Callable[[Connection], None] | None
    tally: Callable[[int, bytes | None, str], object]

    def closed(self, conn: Connection) -> None: ...
