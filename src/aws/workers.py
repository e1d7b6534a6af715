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
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aws.config import Config
from aws.limits import check_aio
from aws.listeners import (
    Listeners,
    StartupError,
    check_tls,
    describe,
    open_listeners,
    restart_needed,
)
from aws.metrics import Shared, WorkerCounters
from aws.metrics_http import metrics_listener, metrics_process
from aws.proctitle import set_title
from aws.worker import EXIT_FATAL, RETIRE, worker_process

log = logging.getLogger("aws.workers")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP}
# Blocked too, though the supervisor never waits for it: a worker forked with it blocked
# takes it only once its watcher is in place (its default action would kill it).
_BLOCKED = _SIGNALS | {RETIRE}
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
STABLE_AFTER = 10.0  # a worker up this long resets its back-off
PAUSE_FROM = 0.5  # a restart put off this long pauses the slot's own sockets
# A worker told to stop that has not exited this long after its own deadline is stuck
# (SIGSTOP, a debugger, a wedged system call): the supervisor kills it.
KILL_GRACE = 5.0


@dataclass
class WorkerSlot:
    index: int
    cpu: int | None
    pid: int = 0
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)
    cells: int | None = None  # its slot in the shared metrics region
    # Restarted after a crash: its failing to start (a renewal half done, a log folder
    # moved) is retried with back-off while the others serve, not the end of the server.
    restarted: bool = False
    kill_at: float | None = None  # told to stop: SIGKILL if still there then


class Supervisor:
    def __init__(
        self, config: Config, cpus: list[int], reload: Callable[[], Config] | None = None
    ) -> None:
        self.config = config
        self.cpus = cpus
        self.reload = reload
        self.slots: list[WorkerSlot] = []
        self.retiring: list[WorkerSlot] = []  # workers of an earlier config, draining
        self.stopping = False
        self.port = 0
        self.listeners = Listeners()
        self.metrics_sock: socket.socket | None = None
        self.shared: Shared | None = None
        self.metrics_pid = 0
        self.metrics_restart_at: float | None = None

    def start(self) -> None:
        config = self.config
        self.listeners = open_listeners(config, config.workers)
        self.port = self.listeners.port()
        try:
            if config.metrics:
                self.metrics_sock = metrics_listener(config.metrics)
            check_aio(config.workers, config.aio_maxevents)
        except StartupError:
            self.listeners.close()
            if self.metrics_sock is not None:
                self.metrics_sock.close()
            raise
        if self.metrics_sock is not None:
            # Before any fork: every child shares it. Slots to spare for reloads, when old
            # and new workers run side by side.
            self.shared = Shared(max(64, 8 * config.workers))
        for i in range(config.workers):
            cpu = self.cpus[i % len(self.cpus)] if self.cpus else None
            self.slots.append(WorkerSlot(i, cpu))
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        set_title(f"aws: supervisor, root {os.path.abspath(config.root)}, {config.workers} workers")
        self._spawn_metrics()
        for slot in self.slots:
            self._spawn(slot)
        self.listeners.announce(log, config.workers, os.path.abspath(config.root))
        if self.metrics_sock is not None:
            log.info("metrics on %s/metrics", describe(self.metrics_sock))

    def _spawn_metrics(self) -> None:
        if self.metrics_sock is None or self.shared is None:
            return
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            for sock in self.listeners.own + self.listeners.shared + self.listeners.secure:
                sock.close()
            metrics_process(self.metrics_sock, self.shared, supervisor)
        self.metrics_pid = pid
        self.metrics_restart_at = None

    def _spawn(self, slot: WorkerSlot) -> None:
        supervisor = os.getpid()
        shared = self.shared
        if shared is not None and slot.cells is None:
            slot.cells = shared.claim(slot.index)
            if slot.cells is None:
                log.warning("worker %d: no free metrics slot, it is not counted", slot.index)
        pid = os.fork()
        if pid == 0:
            mine = self.listeners.for_worker(slot.index)
            others = self.listeners.not_for(slot.index)
            if self.metrics_sock is not None:
                others.append(self.metrics_sock)
            counters = None
            if shared is not None and slot.cells is not None:
                shared.bind(slot.cells, os.getpid())
                counters = WorkerCounters(shared.live(slot.cells))
            secure = self.listeners.tls_for_worker(slot.index)
            worker_process(
                slot.index,
                slot.cpu,
                mine,
                self.config,
                supervisor,
                others,
                counters,
                tls_listeners=secure,
                own=self.listeners.own_of(slot.index),
            )
        if slot.cpu is not None:
            # The child pins itself too; doing it here as well means that once fork has
            # returned, nobody (ps, taskset -p, a test) can see the worker unpinned.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, {slot.cpu})
        slot.pid = pid
        if shared is not None and slot.cells is not None:
            shared.bind(slot.cells, pid)
        slot.started = time.monotonic()
        slot.restart_at = None

    def run(self) -> int:
        """Supervise until every worker has exited after a stop; returns the exit code."""
        status = 0
        while True:
            info = signal.sigtimedwait(_SIGNALS, self._until_due())
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self._stop(info.si_signo)
            elif info is not None and info.si_signo == signal.SIGUSR1:
                log.info("SIGUSR1: workers reopen their logs")
                self._signal_all(signal.SIGUSR1)
            elif info is not None and info.si_signo == signal.SIGHUP:
                self._reload()
            fatal = self._reap()
            self._kill_stuck()
            if fatal is not None and not self.stopping:
                log.critical("worker %d cannot start; stopping", fatal)
                status = 1
                self._stop(signal.SIGTERM)
            if self.stopping:
                if not any(slot.pid for slot in self.slots + self.retiring):
                    log.info("all workers stopped")
                    self.listeners.close()
                    self._stop_metrics()
                    return status
                continue
            now = time.monotonic()
            if self.metrics_restart_at is not None and now >= self.metrics_restart_at:
                self._spawn_metrics()
            for slot in self.slots:
                if slot.pid == 0 and slot.restart_at is not None and now >= slot.restart_at:
                    slot.restarted = True
                    self._spawn(slot)
                    log.info("worker %d restarted as pid %d", slot.index, slot.pid)

    def _until_due(self) -> float:
        """How long to wait for a signal: until the next restart or kill is due, so that
        a back-off of 0.1 s is 0.1 s, and at most half a second."""
        due = [slot.kill_at for slot in self.slots + self.retiring if slot.pid]
        if not self.stopping:
            due += [self.metrics_restart_at] + [slot.restart_at for slot in self.slots]
        now = time.monotonic()
        return max(0.0, min([0.5] + [when - now for when in due if when is not None]))

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
            code = os.waitstatus_to_exitcode(wstatus)
            if pid == self.metrics_pid:
                self.metrics_pid = 0
                if not self.stopping:
                    log.error("metrics process died with %d; restarting in 1s", code)
                    self.metrics_restart_at = time.monotonic() + 1.0
                continue
            slot = next((s for s in self.slots + self.retiring if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            if self.shared is not None and slot.cells is not None:
                self.shared.release(slot.cells)
                slot.cells = None
            if slot in self.retiring:
                self.retiring.remove(slot)
                if code != 0:
                    log.warning("old worker %d (pid %d) exited with %d", slot.index, pid, code)
                continue
            if self.stopping:
                if code != 0:
                    log.warning("worker %d exited with %d", slot.index, code)
                continue
            if code == EXIT_FATAL and (
                not slot.restarted or not any(other.pid for other in self.slots)
            ):
                # A first start that fails, or no worker left to serve while this one
                # cannot start: the server stops (a service manager can start it again).
                fatal = slot.index
                continue
            now = time.monotonic()
            if now - slot.started > STABLE_AFTER:
                slot.backoff = BACKOFF_FIRST
            # A restart put off would leave the kernel handing this slot's sockets new
            # connections nobody reads: from PAUSE_FROM on, they stop listening until
            # the successor is up (aws.listeners). A shorter wait costs the connections
            # queued there less than the reset a pause gives them.
            paused = slot.backoff >= PAUSE_FROM and self.listeners.pause(slot.index)
            meanwhile = "; its new connections go to the other workers meanwhile" if paused else ""
            if code == EXIT_FATAL:
                log.error(
                    "worker %d (pid %d) could not start again (its error is above); "
                    "retrying in %.1fs%s",
                    slot.index,
                    pid,
                    slot.backoff,
                    meanwhile or ", the other workers serve",
                )
            else:
                if self.shared is not None:
                    self.shared.restarted(slot.index)
                why = f"signal {-code}" if code < 0 else f"status {code}"
                log.error(
                    "worker %d (pid %d) died with %s; restarting in %.1fs%s",
                    slot.index,
                    pid,
                    why,
                    slot.backoff,
                    meanwhile,
                )
            slot.restart_at = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def _stop(self, signo: int) -> None:
        if self.stopping:
            log.info("second signal: workers exit now")
            self._signal_all(signal.SIGTERM)
            return
        self.stopping = True
        if self.shared is not None:
            self.shared.set_draining(True)  # /healthz says 503 from now on
        log.info(
            "%s: stopping; transfers in flight may take up to %.0fs",
            signal.Signals(signo).name,
            self.config.drain_timeout,
        )
        self.listeners.close()  # the workers' copies stay open until they drain
        self._signal_all(signal.SIGTERM)
        kill_at = time.monotonic() + self.config.drain_timeout + KILL_GRACE
        for slot in self.slots + self.retiring:
            # An old worker keeps its own (later) deadline from the reload, if it has one.
            slot.kill_at = kill_at if slot.kill_at is None else max(slot.kill_at, kill_at)

    def _kill_stuck(self) -> None:
        now = time.monotonic()
        for slot in self.slots + self.retiring:
            if slot.pid and slot.kill_at is not None and now >= slot.kill_at:
                log.warning(
                    "worker %d (pid %d) is still there after its drain: killed",
                    slot.index,
                    slot.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                slot.kill_at = None

    def _stop_metrics(self) -> None:
        if self.metrics_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.metrics_pid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_GRACE
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(self.metrics_pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() >= deadline:  # stopped or wedged: not forever
                        log.warning(
                            "metrics process (pid %d) did not stop: killed", self.metrics_pid
                        )
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.metrics_pid, signal.SIGKILL)
                        os.waitpid(self.metrics_pid, 0)
                        break
                    time.sleep(0.02)
            self.metrics_pid = 0
        if self.metrics_sock is not None:
            self.metrics_sock.close()
            self.metrics_sock = None

    def _reload(self) -> None:
        """SIGHUP: load the configuration again; start a new worker per slot with it on
        the same sockets, then drain the old ones. Until the new workers poll, queued
        connections wait in the sockets' backlogs (the supervisor keeps the sockets), so
        none is refused; the old workers finish what they are sending."""
        if self.stopping or self.reload is None:
            return
        old = self.config
        try:
            new = self.reload()
            if new.workers == 1:
                raise StartupError("--workers 1 runs without a supervisor: restart to get it")
            for change in restart_needed(old, new):
                log.warning("SIGHUP: %s changed; that needs a restart, kept as it was", change)
            # A renewed certificate that does not load must not become workers that cannot
            # start (the supervisor would stop): the old ones serve on with theirs.
            check_tls(new)
            # The old workers keep their contexts while they drain: the new ones need theirs.
            check_aio(new.workers, new.aio_maxevents)
            self.listeners.resize(new.workers, old.backlog)
        except StartupError as exc:
            log.error("SIGHUP: the configuration does not load (%s); the workers serve on", exc)
            return
        except Exception as exc:
            log.exception("SIGHUP: reload failed (%r); the workers serve on", exc)
            return
        self.config = new
        previous = self.slots
        self.slots = [
            WorkerSlot(i, self.cpus[i % len(self.cpus)] if self.cpus else None)
            for i in range(new.workers)
        ]
        for slot in self.slots:
            self._spawn(slot)
        for slot in previous:
            slot.restart_at = None
            if slot.pid:
                self.retiring.append(slot)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, RETIRE)
                # It keeps idle connections for one more answer, then drains.
                wait = old.drain_timeout + max(old.keepalive_timeout, old.header_timeout)
                slot.kill_at = time.monotonic() + wait + KILL_GRACE
        if self.shared is not None:
            self.shared.reloaded()
        log.info(
            "SIGHUP: reloaded the configuration: %d new workers (pids %s), %d old ones draining",
            len(self.slots),
            " ".join(str(slot.pid) for slot in self.slots),
            len(self.retiring),
        )

    def _signal_all(self, signo: int) -> None:
        for slot in self.slots + self.retiring:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signo)
