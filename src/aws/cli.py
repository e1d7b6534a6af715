"""Command line: ``python -m aws [--port 8888] [--root DIR] [--workers N] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aws import config
from aws.config import Config
from aws.limits import raise_nofile
from aws.listeners import StartupError
from aws.logs import setup_stderr
from aws.single import SingleProcess
from aws.workers import Supervisor

log = logging.getLogger("aws")


_METAVARS = {config.seconds: "S", config.positive_int: "N", int: "N"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aws",
        description="aws, the asynchronous web server: serves ROOT/static/ with sendfile "
        "and ROOT/dynamic/ with Linux native AIO, one epoll worker per CPU.",
    )
    for f in config.flags():
        meta = f.metadata
        default = config.default_of(f)
        shown = "" if default is None else " (default: %(default)s)"
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=meta["parse"],
            default=default,
            choices=meta["choices"],
            metavar=meta["metavar"] or _METAVARS.get(meta["parse"]),
            help=meta["help"] + shown,
        )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_stderr(args.log_level)
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        print(f"aws: document root {root} is not a directory", file=sys.stderr)
        return 2
    values = {f.name: getattr(args, f.name) for f in config.flags()}
    settings = Config(**{**values, "root": root})
    raise_nofile(settings)
    server: SingleProcess | Supervisor
    if settings.workers == 1:
        server = SingleProcess(settings)
    else:
        server = Supervisor(settings, sorted(os.sched_getaffinity(0)))
    try:
        server.start()
    except StartupError as exc:
        print(f"aws: {exc}", file=sys.stderr)
        return 1
    return server.run()
