"""Command line: ``python -m aws [--port 8888] [--root DIR] [--workers N] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aws import config, configfile, errorpages
from aws.config import Config
from aws.workers import SingleProcess, StartupError, Supervisor

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
        flag = "--" + f.name.replace("_", "-")
        if meta["parse"] is bool:
            p.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=meta["help"] + " (default: %(default)s)",
            )
            continue
        shown = "" if default in (None, ()) else " (default: %(default)s)"
        p.add_argument(
            flag,
            dest=f.name,
            type=meta["parse"],
            default=default,
            choices=meta["choices"],
            metavar=meta["metavar"] or _METAVARS.get(meta["parse"]),
            help=meta["help"] + shown,
            **({"action": _Append} if meta["repeat"] else {}),
        )
    return p


class _Append(argparse.Action):
    """Collect a repeated flag into a tuple (a Config field is immutable). The first use
    replaces the default, so flags override the config file's list instead of adding."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        fresh = "_given_" + self.dest
        current = getattr(namespace, self.dest) if getattr(namespace, fresh, False) else ()
        setattr(namespace, fresh, True)
        setattr(namespace, self.dest, (*current, values))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            parser.set_defaults(**configfile.load(args.config))
        except configfile.ConfigFileError as exc:
            print(f"aws: {exc}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)  # the flags given override the file
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s aws[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        print(f"aws: document root {root} is not a directory", file=sys.stderr)
        return 2
    values = {f.name: getattr(args, f.name) for f in config.flags()}
    settings = Config(**{**values, "root": root})
    if settings.error_pages:
        try:
            errorpages.load(root, settings.error_pages)
        except errorpages.PageError as exc:
            print(f"aws: --error-pages: {exc}", file=sys.stderr)
            return 2
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
