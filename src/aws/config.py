"""Every setting, declared once: its name, default, how its text is read and its help.

:class:`Config` is one frozen value built at start and passed down to every layer. The
command line is generated from these fields (``--header-timeout`` is the field
``header_timeout``), so an option cannot drift between the parser, the defaults and the
code that uses it. Fields without help are internal tunables, not flags.
"""

from __future__ import annotations

import argparse
import os
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
) -> Any:
    """A field that is also a command-line flag."""
    meta = {"help": help, "parse": parse, "choices": choices, "metavar": metavar}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Config:
    host: str = option("0.0.0.0", help="address to listen on")
    port: int = option(8888, parse=int, help="TCP port (0 picks a free one)")
    tcp: str = option(
        "on",
        choices=("on", "off"),
        help="listen on --host/--port (off: only on --unix, or on sockets from systemd)",
    )
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
        help="seconds without progress before a client that stopped reading is dropped",
    )
    drain_timeout: float = option(
        30.0, parse=seconds, help="on SIGTERM, seconds to let transfers finish"
    )
    max_connections: int = option(
        4096, parse=positive_int, help="connections per worker; more are closed at once"
    )
    sendfile_chunk: int = option(
        1 << 20,
        parse=positive_int,
        help="bytes one connection may send per loop turn (nginx's sendfile_max_chunk)",
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
    aio_maxevents: int = option(
        256, parse=positive_int, help="AIO reads in flight per worker (io_setup size)"
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
