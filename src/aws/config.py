"""Every setting, declared once: its name, default, how its text is read and its help.

:class:`Config` is one frozen value built at start and passed down to every layer. The
command line is generated from these fields (``--header-timeout`` is the field
``header_timeout``), so an option cannot drift between the parser, the defaults and the
code that uses it. Fields without help are internal tunables, not flags.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _field_value(text: str) -> str:
    text = text.strip(" \t")
    if not _FIELD_VALUE.fullmatch(text):
        raise argparse.ArgumentTypeError("a header value may not hold control characters")
    return text


def cache_rule(text: str) -> tuple[str, str]:
    """``PATTERN=VALUE``: files whose URL path matches get ``Cache-Control: VALUE``."""
    pattern, eq, value = text.partition("=")
    if not eq or not pattern or not value.strip():
        raise argparse.ArgumentTypeError("expected PATTERN=VALUE, e.g. '*.html=no-cache'")
    return pattern, _field_value(value)


def header_rule(text: str) -> tuple[str, str, str]:
    """``PATTERN=Name: value``: files whose URL path matches get that header."""
    pattern, eq, rest = text.partition("=")
    name, colon, value = rest.partition(":")
    name = name.strip()
    if not eq or not pattern or not colon:
        raise argparse.ArgumentTypeError(
            "expected PATTERN=NAME: VALUE, e.g. '/static/*=Access-Control-Allow-Origin: *'"
        )
    if not _TOKEN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{name!r} is not a header name")
    if name.lower() in _OWN_FIELDS:
        raise argparse.ArgumentTypeError(f"{name} is the server's to set")
    return pattern, name, _field_value(value)


# Fields the server writes itself: a rule adding one would send it twice.
_OWN_FIELDS = frozenset(
    [
        "content-length",
        "content-type",
        "content-range",
        "content-encoding",
        "transfer-encoding",
        "etag",
        "last-modified",
        "date",
        "server",
        "connection",
        "vary",
        "accept-ranges",
        "location",
    ]
)


def octal_mode(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError("must be an octal file mode such as 660")
    return value


def option(
    default: Any = MISSING,
    *,
    help: str,
    parse: Callable[[str], Any] = str,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | None = None,
    repeat: bool = False,
) -> Any:
    """A field that is also a command-line flag. ``parse=bool`` makes a ``--x/--no-x``
    pair; ``repeat`` a flag given once per value (the field is a tuple of them)."""
    meta = {
        "help": help,
        "parse": parse,
        "choices": choices,
        "metavar": metavar,
        "repeat": repeat,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Config:
    host: str = option("0.0.0.0", help="address to listen on")
    port: int = option(8888, parse=int, help="TCP port (0 picks a free one)")
    unix: str | None = option(
        None, metavar="PATH", help="also listen on a Unix domain socket at PATH"
    )
    unix_mode: int = option(
        0o660, parse=octal_mode, metavar="MODE", help="file mode of the --unix socket, octal"
    )
    unix_owner: str | None = option(
        None, metavar="USER[:GROUP]", help="owner of the --unix socket (needs the right)"
    )
    root: str = option(".", help="document root holding static/ and dynamic/")
    workers: int = option(
        default_factory=_cpus,
        parse=positive_int,
        help="worker processes, one per CPU, each pinned to its CPU, under a supervisor "
        "that restarts them (the default is the CPUs this process may run on). With 1 "
        "there is "
        "no supervisor: the started process serves by itself, unpinned, and restarting it "
        "is the process manager's job (systemd, a container runtime)",
    )
    symlinks: str = option(
        "root",
        choices=("root", "prefix", "none"),
        help="symlinks are followed while they stay inside the document root (root), "
        "inside their prefix folder (prefix), or never (none); a link to a hidden name "
        "is never followed",
    )
    log_level: str = option(
        "info", choices=("debug", "info", "warning", "error", "critical"), help="log level"
    )
    access_log: str | None = option(
        None,
        metavar="PATH|-",
        help="write an access log line per response to PATH, or stdout for -",
    )
    log_format: str = option(
        "common",
        choices=("common", "combined", "json"),
        help="access log lines: common (NCSA), combined (with referer and user agent) or "
        "json (one object a line, with duration, worker and the way the body went out)",
    )
    metrics: str | None = option(
        None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (/metrics) and a health check (/healthz) on "
        "their own listener there (off by default)",
    )
    header_timeout: float = option(
        10.0, parse=seconds, help="seconds for a complete request head, else 408"
    )
    keepalive_timeout: float = option(
        15.0, parse=seconds, help="seconds an idle keep-alive connection stays open"
    )
    send_timeout: float = option(
        60.0,
        parse=seconds,
        help="seconds a full socket may take no byte before its client is dropped (a slow "
        "reader that keeps taking bytes stays)",
    )
    drain_timeout: float = option(
        30.0, parse=seconds, help="on SIGTERM, seconds to let transfers finish"
    )
    max_connections: int = option(
        4096, parse=positive_int, help="connections per worker; more are closed at once"
    )
    sendfile_chunk: int = option(
        # A small request waits behind about one of these (make bench-cold, cached case:
        # hot p99 0.46 ms at 512 KiB, 0.97-2.3 ms at 1 MiB; 64 MiB rows no slower).
        1 << 19,
        parse=positive_int,
        help="bytes sent per loop turn: by a short body, or by all long ones together, in turn",
    )
    aio_chunk: int = option(
        1 << 20,  # measured best on 64 MiB files
        parse=positive_int,
        help="bytes per AIO read buffer",
    )
    aio_depth: int = option(
        3,
        parse=positive_int,
        help="AIO buffers per /dynamic/ transfer: reads kept ahead of the socket",
    )
    directio: int = option(
        64 * 1024,
        parse=int,
        metavar="BYTES",
        help="read /dynamic/ files of at least BYTES with O_DIRECT, smaller ones through "
        "the page cache (nginx's directio; 0: always O_DIRECT)",
    )
    static_cold: str = option(
        "direct",
        choices=("direct", "cache"),
        help="a /static/ body (or single range) partly not in the page cache: read the "
        "cold part by O_DIRECT AIO and send it from buffers (direct: nothing is left "
        "cached), or let the worker's warming threads read it into the page cache and "
        "sendfile it from there (cache: the next request finds it cached; the cold "
        "parts of a multipart/byteranges body are read by O_DIRECT in both)",
    )
    aio_maxevents: int = option(
        256, parse=positive_int, help="AIO reads in flight per worker (io_setup size)"
    )
    tls_cert: str | None = option(
        None,
        metavar="PEM",
        help="certificate chain (PEM) for HTTPS on --tls-port; with --tls-key, TLS 1.2 and "
        "1.3 only, ALPN http/1.1; a restart picks up a renewed certificate",
    )
    tls_key: str | None = option(None, metavar="PEM", help="private key (PEM) of --tls-cert")
    tls_port: int = option(
        8443, parse=int, help="TCP port for HTTPS, beside --port (0 picks a free one)"
    )
    plain: str = option(
        "on",
        choices=("on", "off"),
        help="plain HTTP on --host/--port (off: only HTTPS on --tls-port, --unix, or "
        "sockets from systemd)",
    )
    tls_chunk: int = 256 * 1024  # bytes read and handed to SSL_write at a time (no kTLS)
    tls_buffers: int = 16  # idle TLS read buffers a worker keeps for reuse
    precompressed: bool = option(
        True,
        parse=bool,
        help="serve x.br, x.zst or x.gz for x when Accept-Encoding allows (nginx's "
        "gzip_static); a sibling older than x is ignored",
    )
    fast_path: bool = option(
        True,
        parse=bool,
        help="answer a keep-alive request that repeats the last one's bytes, while its "
        "file is unchanged, in one C call (the same recv, send and sendfile); "
        "--no-fast-path runs the Python reference path only",
    )
    cache_control: tuple[tuple[str, str], ...] = option(
        (),
        parse=cache_rule,
        repeat=True,
        metavar="PATTERN=VALUE",
        help="Cache-Control for files whose URL path matches the glob PATTERN, e.g. "
        "'/static/assets/*=public, max-age=31536000, immutable' (repeatable; the first "
        "match wins)",
    )
    header: tuple[tuple[str, str, str], ...] = option(
        (),
        parse=header_rule,
        repeat=True,
        metavar="PATTERN=NAME: VALUE",
        help="an extra response header for files whose URL path matches PATTERN, e.g. "
        "'*=X-Content-Type-Options: nosniff' (repeatable; every match adds)",
    )
    error_pages: str | None = option(
        None,
        metavar="DIR",
        help="answer 404 and 5xx with the pages 404.html, 5NN.html or 5xx.html (any 5xx) "
        "from DIR under the root (the status is kept)",
    )
    spa: tuple[str, ...] = option(
        (),
        repeat=True,
        choices=("static", "dynamic"),
        metavar="PREFIX",
        help="single-page app under PREFIX: an unknown path there serves its index.html "
        "with 200, except paths with an extension (repeatable)",
    )
    spa_any_path: bool = option(
        False, parse=bool, help="the --spa fallback also for paths with an extension"
    )
    listing: tuple[str, ...] = option(
        (),
        repeat=True,
        choices=("static", "dynamic"),
        metavar="PREFIX",
        help="list folders without an index.html under PREFIX, as HTML or as JSON for "
        "Accept: application/json (repeatable; off by default)",
    )
    max_ranges: int = option(
        100,
        parse=positive_int,
        help="ranges one request may ask for; more get the whole file (nginx's max_ranges; "
        "1: single ranges only). Several ranges are merged and sent as multipart/byteranges",
    )
    config: str | None = option(
        None,
        metavar="PATH",
        help="read options from this TOML file: keys are the option names with _ "
        "(header_timeout), rules are tables (see the README); flags given override it",
    )
    open_file_cache: int = 1024  # open files kept per prefix per worker
    open_file_valid: float = 0.5  # seconds between re-checks: a replaced file shows within it
    backlog: int = 1024


def flags() -> list[Field[Any]]:
    """The fields that are command-line options, in declaration order."""
    return [f for f in fields(Config) if "help" in f.metadata]


def default_of(f: Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default
