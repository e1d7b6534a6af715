"""The life of one worker process: pinned to a CPU, one loop, until told to stop.

Signals reach the loop through a wakeup socket registered in the same epoll, so a
SIGTERM is acted on at once, not at the next timeout. The first SIGTERM drains; a
second one (or the drain timeout) ends the process at once. SIGTERM and SIGINT stay
blocked until the watcher is in place, so one that comes early (the supervisor
stopping, or dying, while this worker starts) drains it instead of killing it.

A forked worker asks the kernel for a SIGTERM when its supervisor dies, so no worker
goes on serving the old code and config on the port after its supervisor is gone: it
closes its listener at once, finishes what is in flight (up to ``--drain-timeout``) and
exits. With ``--workers 1`` the started process itself runs the worker, and SIGINT
drains too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import aiobind
from aws.config import Config
from aws.logs import tag_process
from aws.loop import EPOLLIN, Loop
from aws.metrics import Shared, WorkerCounters
from aws.metrics_http import MetricsListener
from aws.proctitle import set_title
from aws.server import Server

log = logging.getLogger("aws.worker")

EXIT_FATAL = 3  # the worker cannot start (e.g. io_setup failed): do not restart it
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Blocked until the watcher is in place: SIGUSR1's default action would kill the worker.
WATCHED = STOP_SIGNALS | {signal.SIGUSR1}


class SignalWatcher:
    """Turns stop signals into loop events through ``signal.set_wakeup_fd``."""

    def __init__(self, loop: Loop, on_signal: Callable[[int], None], interrupt: bool) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._pending: deque[int] = deque()
        self._on_signal = on_signal
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._note)
        # Ctrl-C reaches the whole process group: under a supervisor only it acts on it.
        signal.signal(signal.SIGINT, self._note if interrupt else signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, self._note)  # logrotate's postrotate: reopen the logs
        loop.add(self._r.fileno(), EPOLLIN, self)

    def _note(self, signum: int, frame: object) -> None:
        self._pending.append(signum)

    def on_event(self, events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._r.recv(64)
        while self._pending:
            self._on_signal(self._pending.popleft())

    def on_error(self, exc: BaseException) -> None:
        log.error("signal handling failed: %r", exc)


def run_worker(
    index: int,
    cpu: int | None,
    listeners: Sequence[socket.socket],
    config: Config,
    supervisor: int | None = None,
    counters: WorkerCounters | None = None,
    metrics: tuple[socket.socket, Shared] | None = None,
) -> int:
    """Serve until stopped; returns the process exit status.

    ``supervisor`` is the pid of the process that forked this one, or None when this
    process serves alone (``--workers 1``); then ``metrics`` is the listener it serves
    its own metrics on, with the shared counters it reads them from.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    loop = Loop()
    try:
        server = Server(config, loop, *listeners, worker=index, counters=counters)
    except OSError as exc:
        log.critical("worker %d cannot start: %s", index, exc)
        return EXIT_FATAL
    orphaned = False

    def on_signal(signo: int) -> None:
        nonlocal orphaned
        if signo == signal.SIGUSR1:
            server.reopen_logs()
            return
        if supervisor is not None and not orphaned and os.getppid() != supervisor:
            # The parent-death signal: a drain, never the "second signal", even when the
            # supervisor had asked for a drain before it died.
            orphaned = True
            log.warning(
                "worker %d: supervisor (pid %d) is gone; draining %d connections "
                "(up to %.0fs), then exiting",
                index,
                supervisor,
                len(server.conns),
                config.drain_timeout,
            )
            drain()
            return
        if server.draining:
            log.info("worker %d: second signal, exiting now", index)
            loop.stop()
            return
        if supervisor is None:
            log.info(
                "%s: stopping; transfers in flight may take up to %.0fs",
                signal.Signals(signo).name,
                config.drain_timeout,
            )
        drain()

    def drain() -> None:
        if metrics is not None:
            metrics[1].set_draining(True)
        if not server.draining:
            log.debug("worker %d: draining %d connections", index, len(server.conns))
            server.drain()
            loop.call_later(config.drain_timeout, timeout)

    def timeout() -> None:
        if server.conns:
            log.warning("worker %d: drain timeout, %d connections cut", index, len(server.conns))
        loop.stop()

    if metrics is not None:
        MetricsListener(loop, metrics[0], metrics[1].snapshot)
    SignalWatcher(loop, on_signal, interrupt=supervisor is None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
    log.debug("worker %d (pid %d) serving on CPU %s", index, os.getpid(), cpu)
    loop.run()
    server.close()
    loop.close()
    return 0


def _watch_supervisor(supervisor: int) -> None:
    """SIGTERM when the supervisor dies; at once if it died before we could ask.

    The parent-death signal comes when the thread that forked us exits: the supervisor
    is single-threaded, so that is when the supervisor exits.
    """
    aiobind.set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)  # blocked: handled once the loop is up


def worker_process(
    index: int,
    cpu: int | None,
    listeners: Sequence[socket.socket],
    config: Config,
    supervisor: int,
    inherited: Iterable[socket.socket] = (),
    counters: WorkerCounters | None = None,
) -> None:
    """Entry point in the forked child: never returns.

    Called with the supervisor's signal mask (SIGCHLD, SIGTERM, SIGINT, SIGUSR1, SIGHUP
    blocked); ``inherited`` are the other workers' listeners, which this one must not hold.
    """
    status = 1
    try:
        _watch_supervisor(supervisor)
        tag_process(f"worker {index}")
        for sock in inherited:
            sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        set_title(f"aws: worker {index}" + ("" if cpu is None else f" on CPU {cpu}"))
        status = run_worker(index, cpu, listeners, config, supervisor, counters)
    except BaseException:
        log.exception("worker %d crashed", index)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
