"""Accept-Encoding (RFC 9110 12.5.3): which precompressed variant of a file to send.

Only codings a file has on disk are ever chosen (nothing is compressed on the fly).
The highest q-value wins; on a tie the server's order decides (br, then zstd, then
gzip: smallest first). A coding the client did not name takes the q of ``*``, else 0.
Identity is the fallback: it is chosen over a coding only when the client gave it a
q of its own that is higher, and it stays the answer when nothing else is acceptable,
even after ``identity;q=0`` (as nginx does: the file without a variant is sent as is,
so the one with variants is too, rather than a 406 for one and not the other).
"""

from __future__ import annotations

# Content-Encoding value -> file suffix, in the server's order of preference.
CODINGS: tuple[tuple[bytes, bytes], ...] = ((b"br", b".br"), (b"zstd", b".zst"), (b"gzip", b".gz"))
_ALIASES = {b"x-gzip": b"gzip"}
_MEMO_LIMIT = 256  # distinct header values remembered; browsers send a handful

_memo: dict[bytes, dict[bytes, float]] = {}


def parse(value: bytes) -> dict[bytes, float]:
    """Coding (lower case) -> q. Malformed members are skipped, not fatal."""
    qs = _memo.get(value)
    if qs is not None:
        return qs
    qs = {}
    for member in value.split(b","):
        coding, _, params = member.partition(b";")
        coding = coding.strip(b" \t").lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(b";"):
            name, eq, number = param.partition(b"=")
            if eq and name.strip(b" \t").lower() == b"q":
                try:
                    q = float(number.strip(b" \t"))
                except ValueError:
                    q = -1.0
        if not 0.0 <= q <= 1.0:
            continue
        coding = _ALIASES.get(coding, coding)
        qs[coding] = max(q, qs.get(coding, 0.0))
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[value] = qs
    return qs


def choose(value: bytes | None, available: tuple[bytes, ...]) -> bytes | None:
    """The coding to send among ``available`` (in the server's order), or None for the
    file itself. No header means no preference: the file itself."""
    if value is None:
        return None
    qs = parse(value)
    star = qs.get(b"*", 0.0)
    best: bytes | None = None
    best_q = 0.0
    for coding in available:
        q = qs.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    identity = qs.get(b"identity")
    if best is not None and identity is not None and identity > best_q:
        return None
    return best
