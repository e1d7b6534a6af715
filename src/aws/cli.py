"""Command line: ``python -m aws [--port 8888] [--root DIR] [--workers N] ...``."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from aws import config, configfile, errorpages
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
        if meta["parse"] is config.octal_mode:
            shown = f" (default: {default:o})"  # as it is written: 660, not 432
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


def load_config(argv: Sequence[str] | None) -> Config:
    """The whole configuration, from the command line and the --config file it names;
    called at start and again on every SIGHUP (a reload re-reads everything, the file
    included). Raises :class:`ConfigError`."""
    parser = build_parser(_Parser)
    args = parser.parse_args(argv)
    if args.config:
        try:
            parser.set_defaults(**configfile.load(args.config))
        except configfile.ConfigFileError as exc:
            raise ConfigError(str(exc)) from None
        args = parser.parse_args(argv)  # the flags given override the file
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        raise ConfigError(f"document root {root} is not a directory")
    if args.access_log not in (None, "-"):
        folder = os.path.dirname(os.path.abspath(args.access_log))
        if not os.path.isdir(folder):
            raise ConfigError(f"access log folder {folder} does not exist")
    values = {f.name: getattr(args, f.name) for f in config.flags()}
    settings = Config(**{**values, "root": root})
    _check_ports(settings)
    if settings.error_pages:
        try:
            errorpages.load(root, settings.error_pages)
        except errorpages.PageError as exc:
            raise ConfigError(f"--error-pages: {exc}") from None
    return settings


def _check_ports(settings: Config) -> None:
    """Two of our own listeners on one port would be told "already in use", as if
    another program held it: say which two instead."""
    taken: dict[int, str] = {}
    if settings.plain == "on" and settings.port:
        taken[settings.port] = "--port"
    if settings.tls_cert and settings.tls_port:
        if settings.tls_port in taken:
            raise ConfigError(f"--tls-port {settings.tls_port} is --port too: each needs its own")
        taken[settings.tls_port] = "--tls-port"
    if settings.metrics:
        host, _, port_text = settings.metrics.rpartition(":")
        host = host.strip("[]")
        if port_text.isdigit() and int(port_text) in taken and _overlap(host, settings.host):
            port = int(port_text)
            raise ConfigError(f"--metrics port {port} is {taken[port]} too: each needs its own")


def _overlap(a: str, b: str) -> bool:
    """Whether listeners on these two hosts, at one port, would collide."""
    if a == b or "::" in (a, b):  # the IPv6 wildcard takes IPv4 too, by default
        return True
    return (a in ("", "0.0.0.0") and ":" not in b) or (b in ("", "0.0.0.0") and ":" not in a)


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
