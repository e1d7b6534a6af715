"""Command line: ``python -m aws [--port 8888] [--root DIR] [--workers N] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aws.config import Config
from aws.workers import SingleProcess, StartupError, Supervisor

log = logging.getLogger("aws")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    cpus = len(os.sched_getaffinity(0))
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m aws",
        description="aws, the asynchronous web server: serves ROOT/static/ with sendfile "
        "and ROOT/dynamic/ with Linux native AIO, one epoll worker per CPU.",
    )
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=d.port,
        help="TCP port (default %(default)s; 0 picks a free one)",
    )
    p.add_argument(
        "--root",
        default=".",
        help="document root holding static/ and dynamic/ (default: current directory)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=cpus,
        help="worker processes, one per CPU, each pinned to its CPU, under a supervisor "
        "that restarts them (default: %(default)s, the CPUs this process may run on). "
        "With 1 there is no supervisor: the started process serves by itself, unpinned, "
        "and restarting it is the process manager's job (systemd, a container runtime)",
    )
    p.add_argument(
        "--symlinks",
        choices=["root", "prefix", "none"],
        default=d.symlinks,
        help="symlinks are followed while they stay inside the document root (root, the "
        "default), inside their prefix folder (prefix), or never (none); a link to a "
        "hidden name is never followed",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"]
    )
    p.add_argument(
        "--access-log",
        metavar="PATH|-",
        default=None,
        help="write an access log line per response to PATH, or stdout for -",
    )
    p.add_argument(
        "--header-timeout",
        type=_seconds,
        default=d.header_timeout,
        help="seconds for a complete request head, else 408 (default %(default)s)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=_seconds,
        default=d.keepalive_timeout,
        help="seconds an idle keep-alive connection stays open (default %(default)s)",
    )
    p.add_argument(
        "--send-timeout",
        type=_seconds,
        default=d.send_timeout,
        help="seconds without progress before a client that stopped reading is "
        "dropped (default %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=d.drain_timeout,
        help="on SIGTERM, seconds to let transfers finish (default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=_positive_int,
        default=d.max_connections,
        help="connections per worker; more are closed at once (default %(default)s)",
    )
    p.add_argument(
        "--sendfile-chunk",
        type=_positive_int,
        default=d.sendfile_chunk,
        help="bytes one connection may send per loop turn (default %(default)s)",
    )
    p.add_argument(
        "--aio-chunk",
        type=_positive_int,
        default=d.aio_chunk,
        help="bytes per AIO read buffer (default %(default)s)",
    )
    p.add_argument(
        "--aio-depth",
        type=_positive_int,
        default=d.aio_depth,
        help="AIO buffers per /dynamic/ transfer: reads kept ahead of the socket "
        "(default %(default)s)",
    )
    p.add_argument(
        "--directio",
        type=int,
        default=d.directio,
        metavar="BYTES",
        help="read /dynamic/ files of at least BYTES with O_DIRECT, smaller ones through "
        "the page cache (nginx's directio; 0: always O_DIRECT; default %(default)s)",
    )
    p.add_argument(
        "--aio-maxevents",
        type=_positive_int,
        default=d.aio_maxevents,
        help="AIO reads in flight per worker (io_setup size; default %(default)s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s aws[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        print(f"aws: document root {root} is not a directory", file=sys.stderr)
        return 2
    config = Config(
        host=args.host,
        port=args.port,
        root=root,
        workers=args.workers,
        access_log=args.access_log,
        symlinks=args.symlinks,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        send_timeout=args.send_timeout,
        drain_timeout=args.drain_timeout,
        max_connections=args.max_connections,
        sendfile_chunk=args.sendfile_chunk,
        aio_chunk=args.aio_chunk,
        directio=args.directio,
        aio_depth=args.aio_depth,
        aio_maxevents=args.aio_maxevents,
    )
    server: SingleProcess | Supervisor
    if config.workers == 1:
        server = SingleProcess(config)
    else:
        server = Supervisor(config, sorted(os.sched_getaffinity(0)))
    try:
        server.start()
    except StartupError as exc:
        print(f"aws: {exc}", file=sys.stderr)
        return 1
    return server.run()
