"""``--workers 1``: one process that binds, serves and takes the signals itself.

Like uvicorn by default or nginx with ``master_process off``: no supervisor, no fork;
restarting it is the process manager's job. SIGHUP reloads inside the process: a new
server with the new configuration takes over the listening sockets in the same loop,
and the old one drains beside it (``worker.Serving``); settings bound to the sockets
(address, port, Unix socket, metrics) need a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable

from aws.config import Config
from aws.limits import check_aio
from aws.listeners import Listeners, StartupError, describe, open_listeners
from aws.metrics import Shared, WorkerCounters
from aws.metrics_http import metrics_listener
from aws.proctitle import set_title
from aws.worker import EXIT_FATAL, WATCHED, run_worker

log = logging.getLogger("aws.single")


class SingleProcess:
    """``--workers 1``: the started process is the worker, with no supervisor.

    It is what ``ps``, ``lsof -p`` and ``strace -p`` show, and it is not pinned to a CPU:
    the process manager or ``taskset`` decides where it runs.
    """

    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.reload = reload
        self.listeners = Listeners()
        self.port = 0
        self.metrics: tuple[socket.socket, Shared] | None = None
        self.counters: WorkerCounters | None = None

    def start(self) -> None:
        config = self.config
        self.listeners = open_listeners(config, 1)
        try:
            if config.metrics:
                # One slot, written and read by this process: it serves its own /metrics.
                shared = Shared(1)
                slot = shared.claim(0)
                assert slot is not None
                shared.bind(slot, os.getpid())
                self.counters = WorkerCounters(shared.live(slot))
                self.metrics = (metrics_listener(config.metrics), shared)
            check_aio(1, config.aio_maxevents)
        except StartupError:
            self.listeners.close()
            if self.metrics is not None:
                self.metrics[0].close()
            raise
        self.port = self.listeners.port()
        # Held until the worker's watcher is in place: a signal now drains, once it is.
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        root = os.path.abspath(config.root)
        set_title(f"aws: single process, root {root}")

    def _announce(self) -> None:
        """The listening lines, once the server is up: a harness (or a person) that sees
        them may use the server at once, its access log included."""
        self.listeners.announce(log, 1, os.path.abspath(self.config.root))
        if self.metrics is not None:
            log.info("metrics on %s/metrics", describe(self.metrics[0]))

    def run(self) -> int:
        try:
            status = run_worker(
                0,
                None,
                self.listeners.for_worker(0),
                self.config,
                tls_listeners=self.listeners.tls_for_worker(0),
                counters=self.counters,
                metrics=self.metrics,
                reload=self.reload,
                ready=self._announce,
            )
        finally:
            self.listeners.close()
        if status == EXIT_FATAL:
            return 1
        log.info("stopped")
        return status
