"""Deciding a response: from a parsed request and the open-file caches to a :class:`Reply`.

Pure: no socket here, and nothing is sent. A reply is a status, the head's bytes, and
a body that is nothing (the head is the whole response), or a byte range of an open
file together with the way it leaves (:data:`SENDFILE` for ``/static/``, :data:`AIO`
for ``/dynamic/``). :mod:`aws.transfer` moves the bytes; :mod:`aws.connection` drives
the two. This is nginx's split of its static handler from its send chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote_from_bytes

from aws import heads, listing, multipart
from aws.conditions import evaluate
from aws.files import FileCache, Redirect, Resource
from aws.http import ALLOW, HttpError, Request
from aws.multipart import Segment
from aws.negotiate import choose

SENDFILE = "sendfile"  # zero-copy from the page cache
AIO = "aio"  # io_submit into aligned buffers, then send
# multipart/byteranges: a :class:`PartsReply`, its segments sent by sendfile or by AIO
PARTS_SENDFILE = "parts-sendfile"
PARTS_AIO = "parts-aio"

_EMPTY = ((b"Content-Length", b"0"),)


class Reply:
    """What to send. ``res`` is None when ``head`` is the whole response (then ``stop``
    is the length of the error page inside it); otherwise the body is ``res``'s bytes
    ``[start, stop)``, sent by ``way``. The reply holds one
    reference to ``res``: whoever ends the transfer calls ``res.release()``."""

    __slots__ = ("cells", "head", "res", "start", "status", "stop", "way")

    def __init__(
        self,
        status: int,
        head: bytes,
        res: Resource | None = None,
        start: int = 0,
        stop: int = 0,
        way: str = "",
    ) -> None:
        self.status = status
        self.head = head
        self.res = res
        self.start = start
        self.stop = stop
        self.way = way
        # Where a replay of it is counted, per way out (a reply of a whole file is shared
        # by plain and TLS connections); Replaying._replay fills it at the first one.
        self.cells: dict[str, object] | None = None


class PartsReply(Reply):
    """A ``multipart/byteranges`` reply: ``segments`` are the delimiters and the ranges
    of ``res`` (:mod:`aws.multipart`); ``[start, stop)`` is ``[0, body length)``."""

    __slots__ = ("segments",)

    def __init__(
        self, head: bytes, res: Resource, length: int, way: str, segs: list[Segment]
    ) -> None:
        super().__init__(206, head, res, 0, length, way)
        self.segments = segs


def answer(
    req: Request, caches: Mapping[bytes | None, FileCache], now: float, date: bytes, keep: bool
) -> Reply:
    """The reply to a request that parsed. Raises :class:`HttpError` (404, 403, 503...)."""
    segments = req.segments
    if segments is None or req.method == "OPTIONS":
        fields = ((b"Allow", ALLOW), *_EMPTY)
        return Reply(200, heads.build_head(200, date, keep, fields))
    cache = caches.get(req.prefix)
    if cache is None:
        raise _with_page(HttpError(404, "outside /static/ and /dynamic/"), caches)
    try:
        if len(segments) == 1:
            raise Redirect()
        try:
            res = cache.acquire(segments[1:], now, req.key)
        except HttpError as exc:
            if cache.policy.listing and exc.status == 404 and segments[-1] == b"":
                listed = _listing(req, cache, date, keep)
                if listed is not None:
                    return listed
            res = _fallback(exc, segments, cache, now, caches)
        if res.variants is not None:  # x.br, x.zst or x.gz stand beside it
            res = _pick_variant(req, res, res.variants)
    except Redirect:
        location = quote_from_bytes(req.path + b"/").encode()
        _, ask, query = req.target.partition(b"?")
        if ask:  # nginx's static module keeps the arguments on the way to the folder
            location += b"?" + query
        # --cache-control and --header apply to a folder's redirect as nginx's expires
        # and add_header do (301 is among their statuses), matched on the path as asked.
        extra = cache.policy.fields_for(req.path)
        fields = ((b"Location", location), *extra, *_EMPTY)
        return Reply(301, heads.build_head(301, date, keep, fields))
    if not req.conditional and req.method == "GET" and res.size:
        # The fast path, a plain GET of a whole file: its two replies (keep-alive or
        # not) are built once a second per file and shared, as its heads are. Measured
        # in-process: ~0.3 us a request less than building a Reply each time.
        replies = res.replies
        if replies is None or replies[0] is not date:  # type: ignore[index]
            way = cache.way
            replies = res.replies = (
                date,
                Reply(200, res.ok_head(date, False), res, 0, res.size, way),
                Reply(200, res.ok_head(date, True), res, 0, res.size, way),
            )
        return replies[2 if keep else 1]  # type: ignore[index,no-any-return]
    if not req.conditional:
        return _with_body(req, res, cache, 200, res.ok_head(date, keep), 0, res.size)
    decision = evaluate(req, res, cache.policy.max_ranges)
    status = decision.status
    if status == 206 and decision.parts is not None:
        if not res.encoding:
            return _multipart(res, cache, decision.parts, date, keep)
        # Parts of a compressed variant would each be pieces of one coded stream under
        # a multipart head that claims no coding: send the whole variant instead.
        status, decision.start, decision.end = 200, 0, res.size
    if status == 200:
        head = res.ok_head(date, keep)
    elif status == 206:
        fields = [
            *res.fields(),
            (b"Content-Range", b"bytes %d-%d/%d" % (decision.start, decision.end - 1, res.size)),
            (b"Content-Length", b"%d" % (decision.end - decision.start)),
        ]
        head = heads.build_head(206, date, keep, fields)
    elif status == 304:
        head = heads.build_head(304, date, keep, res.validator_fields())
    else:
        extra = ((b"Content-Range", b"bytes */%d" % res.size),) if status == 416 else ()
        if res.variants is not None or res.encoding:  # the answer still varied on it
            extra = (*extra, (b"Vary", b"Accept-Encoding"))
        res.release()
        head_only = req.method == "HEAD"
        return _whole(status, heads.error_response(status, date, keep, head_only, extra), head_only)
    return _with_body(req, res, cache, status, head, decision.start, decision.end)


class PagedError(HttpError):
    """An error answered with a custom page from the document root (``--error-pages``)."""

    def __init__(self, exc: HttpError, page: bytes) -> None:
        super().__init__(exc.status, exc.detail, exc.close, exc.headers, exc.method, exc.request)
        self.page = page


def _with_page(exc: HttpError, caches: Mapping[bytes | None, FileCache]) -> HttpError:
    """``exc``, or the same error carrying its custom page when there is one."""
    for cache in caches.values():  # every prefix holds the same pages
        page = cache.policy.page(exc.status)
        return exc if page is None else PagedError(exc, page)
    return exc


def _listing(req: Request, cache: FileCache, date: bytes, keep: bool) -> Reply | None:
    """A folder with no index.html, listed; None when there is no such folder."""
    assert req.segments is not None
    try:
        entries, truncated = listing.read(cache, req.segments[1:])
    except HttpError:
        return None
    accept = req.headers.get(b"accept")
    head_only = req.method == "HEAD"
    data = listing.response(req.path, entries, truncated, accept, date, keep, head_only)
    return _whole(200, data, head_only)


def _fallback(
    exc: HttpError,
    segments: list[bytes],
    cache: FileCache,
    now: float,
    caches: Mapping[bytes | None, FileCache],
) -> Resource:
    """A single-page app's index for an unknown path (starlette's ``html=True``, nginx's
    ``try_files $uri /index.html``), or ``exc`` with its page. A path that looks like a
    file (its last segment has an extension) still gets its 404 unless told otherwise:
    a missing script should not be answered with HTML."""
    policy = cache.policy
    if exc.status != 404 or not policy.spa or (b"." in segments[-1] and not policy.spa_any_path):
        raise _with_page(exc, caches) from None
    try:
        return cache.acquire([b""], now, b"")
    except (HttpError, Redirect):
        raise _with_page(exc, caches) from None


def _pick_variant(
    req: Request, res: Resource, variants: tuple[tuple[bytes, Resource], ...]
) -> Resource:
    """The variant Accept-Encoding prefers, or ``res``; the reference moves with it."""
    coding = choose(req.headers.get(b"accept-encoding"), res.codings)
    if coding is None:
        return res
    for name, variant in variants:
        if name == coding:
            variant.refs += 1
            res.release()
            return variant
    return res


def _multipart(
    res: Resource, cache: FileCache, ranges: list[tuple[int, int]], date: bytes, keep: bool
) -> Reply:
    boundary, segs, length = multipart.segments(ranges, res.size, res.content_type)
    fields = [
        (b"Content-Type", b"multipart/byteranges; boundary=" + boundary),
        *(f for f in res.fields() if f[0] != b"Content-Type"),
        (b"Content-Length", b"%d" % length),
    ]
    way = PARTS_AIO if cache.way is AIO else PARTS_SENDFILE
    return PartsReply(heads.build_head(206, date, keep, fields), res, length, way, segs)


def _with_body(
    req: Request, res: Resource, cache: FileCache, status: int, head: bytes, start: int, stop: int
) -> Reply:
    if req.method == "HEAD" or status == 304 or start == stop:
        res.release()
        return Reply(status, head)
    return Reply(status, head, res, start, stop, cache.way)


def error(
    exc: HttpError,
    req: Request | None,
    date: bytes,
    keep: bool,
    caches: Mapping[bytes | None, FileCache] | None = None,
) -> Reply:
    """The reply for a request refused with ``exc`` (a HEAD gets the head alone).
    ``caches``: where the custom pages are, for an error that does not carry its own
    (one found while parsing: 501, 505)."""
    head_only = (req.method if req is not None else exc.method) == "HEAD"
    if caches is not None and not isinstance(exc, PagedError):
        exc = _with_page(exc, caches)
    page = exc.page if isinstance(exc, PagedError) else None
    whole = heads.error_response(exc.status, date, keep, head_only, exc.headers, page)
    return _whole(exc.status, whole, head_only)


def _whole(status: int, whole: bytes, head_only: bool) -> Reply:
    """A reply whose body rides in its head (a page, a listing): ``stop`` is the body's
    length, for the log's bytes as nginx counts them."""
    body = 0 if head_only else len(whole) - whole.index(b"\r\n\r\n") - 4
    return Reply(status, whole, stop=body)
