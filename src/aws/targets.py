"""Request-targets and Host values (RFC 9112 3.2, RFC 3986): their syntax, and a path
decoded into the segments a file lookup uses.

Decoding happens once, per segment, after the split on "/", so an encoded slash can
never act as a separator; dot segments are removed after decoding, so "%2e%2e" is "..".
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from aws.errors import HttpError

# An origin-form path with nothing to decode or normalize (no "%", no dot segment, no
# empty segment) and no fragment: split on "/" and done.
PLAIN_TARGET = re.compile(rb"((?:/[^/.%?#][^/%?#]*)+/?|/)(?:\?[^#]*)?")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ABSOLUTE_FORM = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)")
# RFC 9110 7.2 / RFC 3986 3.2.2: uri-host [ ":" port ], the host an IP-literal, an IPv4
# address or a reg-name (which includes IPv4). Empty is allowed in Host (RFC 9112 3.2).
_HOST_CHARS = rb"[0-9A-Za-z\-._~!$&'()*+,;=%]"
_IP_LITERAL = rb"\[[0-9A-Za-z\-._~!$&'()*+,;=:]+\]"
_HOST = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _HOST_CHARS + rb"*)(?::[0-9]*)?")
_AUTHORITY = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _HOST_CHARS + rb"+)(?::[0-9]*)?")

# Host values already found valid: clients repeat theirs (a small, bounded set). The
# parser tests membership itself and calls check_host only for a new value.
good_hosts: set[bytes] = set()


def check_host(host: bytes) -> None:
    """Refuses (400) a Host that is not ``uri-host [":" port]``; remembers a good one."""
    if _HOST.fullmatch(host) is None:
        raise HttpError(400, "invalid Host", close=True)
    if len(good_hosts) >= 64:
        good_hosts.clear()
    good_hosts.add(host)


def parse_target(method: str, target: bytes) -> list[bytes] | None:
    """Segments of any target form (the plain origin-form is handled inline)."""
    m = PLAIN_TARGET.fullmatch(target)
    if m is not None:
        return m.group(1)[1:].split(b"/")
    if target[:1] != b"/":
        if target == b"*":
            if method == "OPTIONS":
                return None
            raise HttpError(400, "asterisk-form is for OPTIONS only")
        # RFC 9112 3.2.2: a server MUST accept the absolute-form. Its authority wins
        # over Host, and we serve every host name alike: only its syntax matters.
        m = _ABSOLUTE_FORM.match(target)
        if m is None:
            raise HttpError(400, "unsupported request-target form")
        if _AUTHORITY.fullmatch(m.group(1)) is None:
            # Includes userinfo ("user@host"), refused as RFC 9110 4.2.4 advises.
            raise HttpError(400, "invalid authority in absolute-form")
        target = target[m.end() :]
        if target[:1] != b"/":
            if not target and method == "OPTIONS":
                return None  # RFC 9112 3.2.4: an empty path with OPTIONS means "*"
            target = b"/" + target
    if b"#" in target:
        raise HttpError(400, "fragment in request-target")
    return decode_path(target.partition(b"?")[0])


def decode_path(path: bytes) -> list[bytes]:
    """Split on "/" first, then percent-decode each segment exactly once, then remove
    dot segments (RFC 3986 5.2.4; "." and ".." count encoded or not).

    An encoded slash (%2F) or NUL is refused (400): neither can name a file, and a
    decoded "/" must never act as a separator. Empty segments (``//``) are dropped; a
    trailing slash (or a trailing dot segment) leaves one empty last segment. A ".."
    above the root is refused (400), as nginx does.
    """
    raw = path.split(b"/")
    if b"%" in path:
        if _BAD_PERCENT.search(path):
            raise HttpError(400, "invalid percent-encoding")
        raw = [unquote_to_bytes(s) if b"%" in s else s for s in raw]
        for seg in raw:
            if b"/" in seg:
                raise HttpError(400, "encoded slash in path")
            if b"\0" in seg:
                raise HttpError(400, "NUL in path")
    kept: list[bytes] = []
    trailing = False
    for seg in raw[1:] if raw[0] == b"" else raw:
        if not seg or seg == b".":
            trailing = True
        elif seg == b"..":
            if not kept:
                raise HttpError(400, "path goes above the root")
            kept.pop()
            trailing = True
        else:
            kept.append(seg)
            trailing = False
    if trailing or not kept:
        kept.append(b"")
    return kept
