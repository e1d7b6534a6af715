"""What one prefix serves beyond the bytes: variants, headers by path pattern, the
single-page-app fallback, listings, range limits and error pages.

One frozen :class:`Policy` per prefix, built at start from :class:`aws.config.Config`
and held by that prefix's :class:`aws.files.FileCache`. Everything a pattern decides
is worked out when a file is opened and baked into its pre-built heads, so a request
pays nothing per pattern.

Patterns are shell globs (``fnmatch``, case-sensitive) over the URL path of the file
served: ``/static/assets/*`` or ``*.html`` (``*`` also crosses ``/``). A directory's
index is matched as ``.../index.html``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aws.config import Config

Fields = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Policy:
    precompressed: bool = True
    # (pattern, value): the first pattern that matches gives the Cache-Control value.
    cache_control: tuple[tuple[str, str], ...] = ()
    # (pattern, name, value): every pattern that matches adds its header.
    headers: tuple[tuple[str, str, str], ...] = ()
    spa: bool = False  # an unknown path serves the prefix's index.html
    spa_any_path: bool = False  # ... even when it looks like a file (has an extension)
    listing: bool = False
    max_ranges: int = 100  # more ranges in one request: the whole file
    # status -> HTML body; the key 5 holds 5xx.html, the page of any 5xx without its own
    pages: Mapping[int, bytes] = field(default_factory=dict)

    def fields_for(self, url_path: bytes) -> Fields:
        """The extra response fields for the file at ``url_path``."""
        if not self.cache_control and not self.headers:
            return ()
        path = url_path.decode("utf-8", "surrogateescape")
        out: list[tuple[bytes, bytes]] = []
        for pattern, value in self.cache_control:
            if fnmatchcase(path, pattern):
                out.append((b"Cache-Control", value.encode("latin-1")))
                break
        for pattern, name, value in self.headers:
            if fnmatchcase(path, pattern):
                out.append((name.encode("ascii"), value.encode("latin-1")))
        return tuple(out)

    def page(self, status: int) -> bytes | None:
        """The custom body for an error status: ``NNN.html``, else ``5xx.html``."""
        body = self.pages.get(status)
        if body is None and status >= 500:
            body = self.pages.get(status // 100)
        return body


def for_prefix(config: Config, prefix: str, pages: Mapping[int, bytes] | None = None) -> Policy:
    return Policy(
        precompressed=config.precompressed,
        cache_control=config.cache_control,
        headers=config.header,
        spa=prefix in config.spa,
        spa_any_path=config.spa_any_path,
        listing=prefix in config.listing,
        max_ranges=config.max_ranges,
        pages=pages or {},
    )
