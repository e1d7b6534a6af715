"""Kernel limits checked at start: descriptors enough for ``--max-connections`` (raise
RLIMIT_NOFILE), and an AIO context for every worker (``fs.aio-max-nr``).

Like nginx's ``worker_rlimit_nofile``, but worked out from the settings: each worker
holds up to ``max_connections`` sockets, two open-file caches and a few fixed descriptors
(listeners, epoll, eventfd, log files, the signal pair). The limit is per process and the
workers inherit it from the process that raised it. When the hard limit is too low (and
this process may not raise it) the server still starts, with the hard limit, and says
what to change.
"""

from __future__ import annotations

import logging
import resource

import aiobind
from aws.config import Config
from aws.listeners import StartupError

log = logging.getLogger("aws.limits")

FIXED = 64  # listeners, epoll, eventfd, AIO, logs, signal pair, and room to spare


def needed(config: Config) -> int:
    return config.max_connections + 2 * config.open_file_cache + FIXED


def raise_nofile(config: Config) -> int:
    """Set the soft limit to what ``config`` needs (the hard one too if allowed);
    returns the soft limit in force."""
    need = needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        log.info("descriptor limit (RLIMIT_NOFILE) raised from %d to %d", soft, need)
        return need
    try:  # allowed with CAP_SYS_RESOURCE, up to fs.nr_open
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
    except (OSError, ValueError):
        pass
    else:
        log.info("descriptor limit (RLIMIT_NOFILE) raised from %d to %d", soft, need)
        return need
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.warning(
        "--max-connections %d needs %d descriptors per worker but the hard limit "
        "(RLIMIT_NOFILE) is %d: serving with %d; raise it with LimitNOFILE=%d in the "
        "systemd unit or ulimit -Hn %d",
        config.max_connections,
        need,
        hard,
        hard,
        need,
        need,
    )
    return hard


def check_aio(workers: int, maxevents: int) -> None:
    """Every worker needs an AIO context: find out now, not in a restart loop."""
    contexts = []
    try:
        for _ in range(workers):
            contexts.append(aiobind.Context(maxevents))
    except OSError as exc:
        raise StartupError(f"{exc} (see /proc/sys/fs/aio-max-nr)") from None
    finally:
        for ctx in contexts:
            ctx.close()
