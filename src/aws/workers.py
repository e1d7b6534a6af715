"""The supervisor: listening sockets, one worker per CPU, restarts, and shutdown.

The supervisor binds every worker's ``SO_REUSEPORT`` socket itself, before forking, so
a port already taken stops the server at once with a clear error, and a restarted
worker inherits its socket (with whatever connections queued there meanwhile).

With one worker there is no supervisor (``SingleProcess``): the started process binds,
serves and takes the signals itself, like uvicorn by default or nginx with
``master_process off``; restarting it is the process manager's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import aiobind
from aws.config import Config
from aws.listeners import Listeners, StartupError, open_listeners
from aws.proctitle import set_title
from aws.worker import EXIT_FATAL, WATCHED, run_worker, worker_process

log = logging.getLogger("aws.workers")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
STABLE_AFTER = 10.0  # a worker up this long resets its back-off


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


@dataclass
class WorkerSlot:
    index: int
    cpu: int | None
    pid: int = 0
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, config: Config, cpus: list[int]) -> None:
        self.config = config
        self.cpus = cpus
        self.slots: list[WorkerSlot] = []
        self.stopping = False
        self.port = 0
        self.listeners = Listeners()

    def start(self) -> None:
        config = self.config
        self.listeners = open_listeners(config, config.workers)
        self.port = self.listeners.port()
        try:
            check_aio(config.workers, config.aio_maxevents)
        except StartupError:
            self.listeners.close()
            raise
        for i in range(config.workers):
            cpu = self.cpus[i % len(self.cpus)] if self.cpus else None
            self.slots.append(WorkerSlot(i, cpu))
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        set_title(f"aws: supervisor, root {os.path.abspath(config.root)}, {config.workers} workers")
        for slot in self.slots:
            self._spawn(slot)
        log.info(
            "aws listening on %s with %d worker%s, root %s",
            self.listeners.names(),
            config.workers,
            "" if config.workers == 1 else "s",
            os.path.abspath(config.root),
        )

    def _spawn(self, slot: WorkerSlot) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            mine = self.listeners.for_worker(slot.index)
            others = self.listeners.not_for(slot.index)
            worker_process(slot.index, slot.cpu, mine, self.config, supervisor, others)
        if slot.cpu is not None:
            # The child pins itself too; doing it here as well means that once fork has
            # returned, nobody (ps, taskset -p, a test) can see the worker unpinned.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, {slot.cpu})
        slot.pid = pid
        slot.started = time.monotonic()
        slot.restart_at = None

    def run(self) -> int:
        """Supervise until every worker has exited after a stop; returns the exit code."""
        status = 0
        while True:
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self._stop(info.si_signo)
            elif info is not None and info.si_signo == signal.SIGUSR1:
                log.info("SIGUSR1: workers reopen their logs")
                self._signal_all(signal.SIGUSR1)
            fatal = self._reap()
            if fatal is not None and not self.stopping:
                log.critical("worker %d cannot start; stopping", fatal)
                status = 1
                self._stop(signal.SIGTERM)
            if self.stopping:
                if not any(slot.pid for slot in self.slots):
                    log.info("all workers stopped")
                    self.listeners.close()
                    return status
                continue
            now = time.monotonic()
            for slot in self.slots:
                if slot.pid == 0 and slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot)
                    log.info("worker %d restarted as pid %d", slot.index, slot.pid)

    def _reap(self) -> int | None:
        """Collect exited workers; returns the index of one that failed to start."""
        fatal = None
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return fatal
            if pid == 0:
                return fatal
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            code = os.waitstatus_to_exitcode(wstatus)
            if self.stopping:
                if code != 0:
                    log.warning("worker %d exited with %d", slot.index, code)
                continue
            if code == EXIT_FATAL:
                fatal = slot.index
                continue
            now = time.monotonic()
            if now - slot.started > STABLE_AFTER:
                slot.backoff = BACKOFF_FIRST
            why = f"signal {-code}" if code < 0 else f"status {code}"
            log.error(
                "worker %d (pid %d) died with %s; restarting in %.1fs",
                slot.index,
                pid,
                why,
                slot.backoff,
            )
            slot.restart_at = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def _stop(self, signo: int) -> None:
        if self.stopping:
            log.info("second signal: workers exit now")
            self._signal_all(signal.SIGTERM)
            return
        self.stopping = True
        log.info(
            "%s: stopping; transfers in flight may take up to %.0fs",
            signal.Signals(signo).name,
            self.config.drain_timeout,
        )
        self.listeners.close()  # the workers' copies stay open until they drain
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signo: int) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signo)


class SingleProcess:
    """``--workers 1``: the started process is the worker, with no supervisor.

    It is what ``ps``, ``lsof -p`` and ``strace -p`` show, and it is not pinned to a CPU:
    the process manager or ``taskset`` decides where it runs.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.listeners = Listeners()
        self.port = 0

    def start(self) -> None:
        config = self.config
        self.listeners = open_listeners(config, 1)
        try:
            check_aio(1, config.aio_maxevents)
        except StartupError:
            self.listeners.close()
            raise
        self.port = self.listeners.port()
        # Held until the worker's watcher is in place: a signal now drains, once it is.
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        root = os.path.abspath(config.root)
        set_title(f"aws: single process, root {root}")
        log.info("aws listening on %s with 1 worker, root %s", self.listeners.names(), root)

    def run(self) -> int:
        try:
            status = run_worker(0, None, self.listeners.for_worker(0), self.config)
        finally:
            self.listeners.close()
        if status == EXIT_FATAL:
            return 1
        log.info("stopped")
        return status
