"""The error every layer raises for a request it answers with an error status."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws.heads import REASONS

if TYPE_CHECKING:
    from aws.http import Request


class HttpError(Exception):
    """A request the server answers with an error status.

    ``close`` says the connection cannot be reused: after it, where the next request
    starts is unknown (or the client is hostile), so we stop reading. ``method`` is the
    request's method when the request line could be read (a HEAD gets no error body),
    and ``line`` that line as it came, for the access log.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        close: bool = False,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        method: str | None = None,
        request: Request | None = None,
    ) -> None:
        super().__init__(f"{status} {REASONS.get(status, '')}: {detail}")
        self.status = status
        self.detail = detail
        self.close = close
        self.headers = headers
        self.method = method
        self.request = request  # the parsed head, when the error is about its body
        self.line: bytes | None = None
