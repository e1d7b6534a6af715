"""Content-Type from a file name's extension.

Python's built-in table (not /etc/mime.types), so the answer does not change from one
machine to the next, plus the types of the web it lacks in 3.11 that nginx's mime.types
has: fonts above all, which a browser refuses as application/octet-stream under
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import mimetypes

_TYPES = mimetypes.MimeTypes(filenames=())
_MISSING = {
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".apng": "image/apng",
    ".jxl": "image/jxl",
    ".m4a": "audio/mp4",
    ".flac": "audio/flac",
    ".md": "text/markdown",
    ".map": "application/json",  # source maps
}
for _ext, _type in _MISSING.items():
    if _TYPES.guess_type("x" + _ext, strict=False)[0] is None:  # a later Python may know it
        _TYPES.add_type(_type, _ext, strict=False)
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
