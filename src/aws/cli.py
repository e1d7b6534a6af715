"""Command line: ``python -m aws [--port 8888] [--root DIR] [--workers N] ...``."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from aws import config
from aws.config import Config
from aws.limits import raise_nofile
from aws.listeners import StartupError
from aws.logs import setup_stderr
from aws.single import SingleProcess
from aws.workers import Supervisor

log = logging.getLogger("aws")


_METAVARS = {config.seconds: "S", config.positive_int: "N", int: "N"}


class ConfigError(StartupError):
    """The configuration does not load; the message is one line for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser(
    cls: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    p = cls(
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


def load_config(argv: Sequence[str] | None) -> Config:
    """The whole configuration, from the command line; called at start and again on
    every SIGHUP (a reload re-reads everything). Raises :class:`ConfigError`."""
    args = build_parser(_Parser).parse_args(argv)
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        raise ConfigError(f"document root {root} is not a directory")
    if args.access_log not in (None, "-"):
        folder = os.path.dirname(os.path.abspath(args.access_log))
        if not os.path.isdir(folder):
            raise ConfigError(f"access log folder {folder} does not exist")
    values = {f.name: getattr(args, f.name) for f in config.flags()}
    return Config(**{**values, "root": root})


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        settings = load_config(argv)
    except ConfigError as exc:
        print(f"aws: {exc}", file=sys.stderr)
        return 2
    setup_stderr(settings.log_level)
    raise_nofile(settings)
    server: SingleProcess | Supervisor
    reload = functools.partial(load_config, list(argv))
    if settings.workers == 1:
        server = SingleProcess(settings, reload)
    else:
        server = Supervisor(settings, sorted(os.sched_getaffinity(0)), reload)
    try:
        server.start()
    except StartupError as exc:
        print(f"aws: {exc}", file=sys.stderr)
        return 1
    return server.run()
