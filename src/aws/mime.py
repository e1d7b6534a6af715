"""Content-Type from a file name's extension.

Only Python's built-in table is used (not /etc/mime.types), so the answer does not
change from one machine to the next.
"""

from __future__ import annotations

import mimetypes

_TYPES = mimetypes.MimeTypes(filenames=())
_UTF8_TYPES = frozenset(
    {
        "application/javascript",
        "application/json",
        "application/xml",
        "image/svg+xml",
        "text/javascript",
    }
)
DEFAULT = b"application/octet-stream"


def content_type(name: bytes) -> bytes:
    guessed, encoding = _TYPES.guess_type(name.decode("utf-8", "surrogateescape"), strict=False)
    if guessed is None or encoding is not None:
        # A compressed file (.gz) is served as bytes, not as its inner type.
        return DEFAULT
    if guessed.startswith("text/") or guessed in _UTF8_TYPES:
        return f"{guessed}; charset=utf-8".encode()
    return guessed.encode()
