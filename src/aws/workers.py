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
import errno
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field

import aiobind
from aws.config import Config
from aws.proctitle import set_title
from aws.worker import EXIT_FATAL, WATCHED, run_worker, worker_process

log = logging.getLogger("aws.workers")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
STABLE_AFTER = 10.0  # a worker up this long resets its back-off


class StartupError(Exception):
    """The server cannot start; the message is one line for the user."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _probe_port(host: str, port: int) -> None:
    """Fail if anything listens there (our own sockets use SO_REUSEPORT, which would
    otherwise let two servers share a port without a word)."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use") from None
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    finally:
        probe.close()


def make_listeners(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    if port:
        _probe_port(host, port)
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(_family(host), socket.SOCK_STREAM)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Accepted sockets inherit it: no Nagle stall behind a small response.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # with --port 0, all workers share the first pick
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in listeners:
            sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listeners


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
    listener: socket.socket
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

    def start(self) -> None:
        config = self.config
        listeners = make_listeners(config.host, config.port, config.workers, config.backlog)
        self.port = listeners[0].getsockname()[1]
        try:
            check_aio(config.workers, config.aio_maxevents)
        except StartupError:
            for sock in listeners:
                sock.close()
            raise
        for i, sock in enumerate(listeners):
            cpu = self.cpus[i % len(self.cpus)] if self.cpus else None
            self.slots.append(WorkerSlot(i, cpu, sock))
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        set_title(f"aws: supervisor, root {os.path.abspath(config.root)}, {config.workers} workers")
        for slot in self.slots:
            self._spawn(slot)
        log.info(
            "aws listening on http://%s:%d with %d worker%s, root %s",
            config.host,
            self.port,
            config.workers,
            "" if config.workers == 1 else "s",
            os.path.abspath(config.root),
        )

    def _spawn(self, slot: WorkerSlot) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            others = [other.listener for other in self.slots if other is not slot]
            worker_process(slot.index, slot.cpu, [slot.listener], self.config, supervisor, others)
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
        for slot in self.slots:
            slot.listener.close()  # the workers' copies keep theirs until they drain
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
        self.listener: socket.socket | None = None
        self.port = 0

    def start(self) -> None:
        config = self.config
        [listener] = make_listeners(config.host, config.port, 1, config.backlog)
        try:
            check_aio(1, config.aio_maxevents)
        except StartupError:
            listener.close()
            raise
        self.listener = listener
        self.port = listener.getsockname()[1]
        # Held until the worker's watcher is in place: a signal now drains, once it is.
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        root = os.path.abspath(config.root)
        set_title(f"aws: single process, root {root}")
        log.info(
            "aws listening on http://%s:%d with 1 worker, root %s", config.host, self.port, root
        )

    def run(self) -> int:
        assert self.listener is not None
        status = run_worker(0, None, [self.listener], self.config)
        if status == EXIT_FATAL:
            return 1
        log.info("stopped")
        return status
