"""ASGI app for the granian peer: it answers 404 to everything.

granian serves /static itself, from its Rust core (`--static-path-route /static
--static-path-mount ROOT/static`), before a request ever reaches Python; the app only
exists because granian needs one, and a miss on the static route must not look like a
success.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

NOT_FOUND = b"not found\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(NOT_FOUND)).encode())]


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """404 for every HTTP request; lifespan and other scopes are acknowledged by ignoring them."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 404, "headers": HEADERS})
    await send({"type": "http.response.body", "body": NOT_FOUND})
