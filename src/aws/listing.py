"""Directory listings (opt-in per prefix, ``--listing PREFIX``): HTML, or JSON for a
client whose ``Accept`` names ``application/json`` and not ``text/html``.

Only a folder with no ``index.html`` is listed. Hidden names (a leading ``.``) are left
out, and a symlink is listed only if it could be served: it is opened under the same
confinement as a file (policy, hidden targets), so nothing outside the boundary shows,
not even its size. Names are escaped (HTML) and percent-encoded (links).

Bounded: at most :data:`LIMIT` entries are listed and :data:`SCAN_LIMIT` looked at (in
the directory's own order, then sorted by name); a larger folder says so (``truncated``)
instead of costing the loop a stat per entry of 100,000 entries and a body of megabytes.
The listing is built per request (a few ms at the limit), not cached.
"""

from __future__ import annotations

import html
import json
import os
import stat
import time
from typing import NamedTuple
from urllib.parse import quote_from_bytes

from aws import heads
from aws.files import FileCache
from aws.http import HttpError

LIMIT = 1000
SCAN_LIMIT = (
    10 * LIMIT
)  # entries looked at, hidden ones included: a folder of dotfiles is bounded too


class Entry(NamedTuple):
    name: bytes
    is_dir: bool
    size: int
    mtime: int


def read(cache: FileCache, segments: list[bytes]) -> tuple[list[Entry], bool]:
    """The visible entries of the folder ``segments`` names, sorted; and whether the
    folder held more than :data:`LIMIT`. Raises HttpError when it cannot be listed."""
    fd = cache.open_dir(segments)
    entries: list[Entry] = []
    truncated = False
    try:
        with os.scandir(fd) as it:
            for scanned, item in enumerate(it):
                name = os.fsencode(item.name)
                if scanned >= SCAN_LIMIT or (len(entries) >= LIMIT and name[:1] != b"."):
                    truncated = True
                    break
                if name[:1] == b".":
                    continue
                entry = _entry(cache, segments, item, name)
                if entry is not None:
                    entries.append(entry)
    except OSError as exc:
        raise HttpError(404, f"folder not readable: {exc.strerror}") from None
    finally:
        os.close(fd)
    entries.sort()
    return entries, truncated


def _entry(
    cache: FileCache, segments: list[bytes], item: os.DirEntry[str], name: bytes
) -> Entry | None:
    try:
        if item.is_symlink():
            try:
                fd = cache.open_beneath([*segments[:-1], name])
            except HttpError:
                return None  # a link that would not be served is not listed either
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
        else:
            st = item.stat(follow_symlinks=False)
    except OSError:
        return None  # gone since the scan
    if stat.S_ISDIR(st.st_mode):
        return Entry(name, True, 0, int(st.st_mtime))
    if stat.S_ISREG(st.st_mode):
        return Entry(name, False, st.st_size, int(st.st_mtime))
    return None


def wants_json(accept: bytes | None) -> bool:
    return accept is not None and b"application/json" in accept and b"text/html" not in accept


def body(url_path: bytes, entries: list[Entry], truncated: bool, as_json: bool) -> bytes:
    shown = url_path.decode("utf-8", "replace")
    if as_json:
        doc = {
            "path": shown,
            "truncated": truncated,
            "entries": [
                {
                    "name": e.name.decode("utf-8", "replace"),
                    "type": "dir" if e.is_dir else "file",
                    "size": e.size,
                    "mtime": e.mtime,
                }
                for e in entries
            ],
        }
        return json.dumps(doc, ensure_ascii=False).encode()
    title = html.escape(shown)
    rows = []
    if url_path.count(b"/") > 2:  # below the prefix folder: a way up
        rows.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
    for e in entries:
        slash = "/" if e.is_dir else ""
        href = quote_from_bytes(e.name) + slash
        label = html.escape(e.name.decode("utf-8", "replace")) + slash
        size = "-" if e.is_dir else str(e.size)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(e.mtime))
        rows.append(f'<tr><td><a href="{href}">{label}</a></td><td>{size}</td><td>{when}</td></tr>')
    note = f"<p>Only the first {LIMIT} entries are listed.</p>" if truncated else ""
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Index of {title}</title>'
        f"</head><body><h1>Index of {title}</h1>{note}<table>"
        "<tr><th>Name</th><th>Size</th><th>Modified</th></tr>\n" + "\n".join(rows) + "\n"
        "</table></body></html>\n"
    )
    return page.encode()


def response(
    url_path: bytes,
    entries: list[Entry],
    truncated: bool,
    accept: bytes | None,
    date: bytes,
    keep: bool,
    head_only: bool,
) -> bytes:
    as_json = wants_json(accept)
    data = body(url_path, entries, truncated, as_json)
    ctype = b"application/json" if as_json else b"text/html; charset=utf-8"
    fields = [
        (b"Content-Type", ctype),
        (b"Vary", b"Accept"),
        (b"Content-Length", b"%d" % len(data)),
    ]
    head = heads.build_head(200, date, keep, fields)
    return head if head_only else head + data
