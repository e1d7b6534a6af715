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
from aws.limits import check_aio
from aws.listeners import StartupError, check_tls, rejoin, restart_needed
from aws.logs import tag_process
from aws.loop import EPOLLIN, Loop
from aws.metrics import Shared, Snapshot, WorkerCounters
from aws.metrics_http import MetricsListener
from aws.proctitle import set_title
from aws.server import Server
from aws.tls import TlsSetupError

log = logging.getLogger("aws.worker")

EXIT_FATAL = 3  # the worker cannot start (e.g. io_setup failed): do not restart it
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# From the supervisor at a reload: drain, keeping idle keep-alive connections until their
# next request (answered with Connection: close) or their timeout.
RETIRE = signal.SIGUSR2
# Blocked until the watcher is in place: their default action would kill the worker.
# Under a supervisor SIGHUP stays blocked in the worker: reloading is the supervisor's job.
WATCHED = STOP_SIGNALS | {signal.SIGUSR1, signal.SIGHUP, RETIRE}


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
        signal.signal(signal.SIGHUP, self._note)  # reload (the single process only)
        signal.signal(RETIRE, self._note)
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
    reload: Callable[[], Config] | None = None,
    tls_listeners: Sequence[socket.socket] = (),
    ready: Callable[[], None] | None = None,
) -> int:
    """Serve until stopped; returns the process exit status.

    ``supervisor`` is the pid of the process that forked this one, or None when this
    process serves alone (``--workers 1``); then ``metrics`` is the listener it serves
    its own metrics on (with the shared counters it reads them from) and ``reload``
    loads the configuration again on SIGHUP.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    loop = Loop()
    try:
        server = Server(
            config,
            loop,
            *listeners,
            tls_listeners=tuple(tls_listeners),
            worker=index,
            counters=counters,
        )
    except (OSError, TlsSetupError) as exc:
        log.critical("worker %d cannot start: %s", index, exc)
        return EXIT_FATAL
    serving = Serving(index, loop, server, supervisor, metrics, reload)
    if metrics is not None:
        shared = metrics[1]
        if counters is None:
            MetricsListener(loop, metrics[0], shared.snapshot)
        else:  # this process counts too: a scrape publishes its tallies first
            tally = counters

            def snapshot() -> Snapshot:
                tally.sample()
                return shared.snapshot()

            MetricsListener(loop, metrics[0], snapshot)
    SignalWatcher(loop, serving.on_signal, interrupt=supervisor is None)
    unblock = WATCHED if supervisor is None else WATCHED - {signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
    if ready is not None:  # the server (its access log too) exists: say it listens
        ready()
    log.debug("worker %d (pid %d) serving on CPU %s", index, os.getpid(), cpu)
    loop.run()
    serving.close()
    loop.close()
    return 0


class Serving:
    """What one worker process serves with: the current server, and in the single
    process the servers of earlier configurations still draining after a SIGHUP."""

    def __init__(
        self,
        index: int,
        loop: Loop,
        server: Server,
        supervisor: int | None,
        metrics: tuple[socket.socket, Shared] | None,
        reload: Callable[[], Config] | None,
    ) -> None:
        self.index = index
        self.loop = loop
        self.server = server
        self.supervisor = supervisor
        self.metrics = metrics
        self.reload = reload
        self.retiring: set[Server] = set()
        self.stopping = False
        self.retiring_gently = False
        self.orphaned = False
        server.on_drained = self._check_done

    def on_signal(self, signo: int) -> None:
        server, index = self.server, self.index
        if signo == signal.SIGUSR1:
            server.reopen_logs()
            for old in self.retiring:
                old.reopen_logs()
            return
        if signo == signal.SIGHUP:
            self._reload()
            return
        if signo == RETIRE:
            log.debug("worker %d: retiring after a reload", index)
            self.drain(keep_idle=True)
            return
        supervisor = self.supervisor
        if supervisor is not None and not self.orphaned and os.getppid() != supervisor:
            # The parent-death signal: a drain, never the "second signal", even when the
            # supervisor had asked for a drain before it died.
            self.orphaned = True
            log.warning(
                "worker %d: supervisor (pid %d) is gone; draining %d connections "
                "(up to %.0fs), then exiting",
                index,
                supervisor,
                len(server.conns),
                server.config.drain_timeout,
            )
            self.drain()
            return
        if self.stopping and not self.retiring_gently:
            log.info("worker %d: second signal, exiting now", index)
            self.loop.stop()
            return
        if supervisor is None:
            log.info(
                "%s: stopping; transfers in flight may take up to %.0fs",
                signal.Signals(signo).name,
                server.config.drain_timeout,
            )
        self.drain()

    def drain(self, keep_idle: bool = False) -> None:
        """Stop; ``keep_idle`` (retiring at a reload) lets idle keep-alive connections
        come back once more. A stop while retiring closes them after all."""
        if self.metrics is not None and not keep_idle:
            self.metrics[1].set_draining(True)
        if self.stopping:
            if self.retiring_gently and not keep_idle:
                self.retiring_gently = False
                self.server.drain()
                for old in self.retiring:
                    old.drain()
            return
        self.stopping = True
        self.retiring_gently = keep_idle
        server = self.server
        log.debug("worker %d: draining %d connections", self.index, self.connections())
        server.drain(keep_idle)
        for old in self.retiring:
            old.drain()
        self.loop.call_later(server.config.drain_timeout, self._timeout)
        self._check_done()

    def connections(self) -> int:
        return len(self.server.conns) + sum(len(s.conns) for s in self.retiring)

    def _check_done(self) -> None:
        if self.stopping and not self.server.conns and not self.retiring:
            self.loop.stop()

    def _timeout(self) -> None:
        if left := self.connections():
            log.warning("worker %d: drain timeout, %d connections cut", self.index, left)
        self.loop.stop()

    def _reload(self) -> None:
        """SIGHUP in the single process: a new server with the new configuration takes
        the listening sockets; the old one drains beside it in the same loop."""
        if self.reload is None or self.stopping:
            return
        old = self.server
        try:
            new = self.reload()
            for change in restart_needed(old.config, new):
                log.warning("SIGHUP: %s changed; that needs a restart, kept as it was", change)
            check_tls(new)  # one error line for a renewal gone wrong, the old one serving
            check_aio(1, new.aio_maxevents)
            plain, secure = old.sockets()
            fresh = Server(
                new,
                self.loop,
                *plain,
                tls_listeners=tuple(secure),
                worker=self.index,
                counters=old.counters,
                accepting=False,
                turns=old.turns,
                warmer=old.warmer,
            )
        except StartupError as exc:
            log.error("SIGHUP: the configuration does not load (%s); serving on with the old", exc)
            return
        except Exception as exc:
            log.exception("SIGHUP: reload failed (%r); serving on with the old", exc)
            return
        old.hand_over()  # keeps its idle keep-alive connections for one more request
        fresh.start_accepting()
        fresh.on_drained = self._check_done
        self.server = fresh
        if self.metrics is not None:
            self.metrics[1].reloaded()
        if old.conns:
            self.retiring.add(old)
            old.on_drained = lambda: self.loop.call_soon(lambda: self._retired(old))
        else:
            self.loop.call_soon(old.close)
        log.info(
            "SIGHUP: reloaded the configuration; %d connections of the old one draining",
            len(old.conns),
        )

    def _retired(self, old: Server) -> None:
        self.retiring.discard(old)
        old.close()
        self._check_done()

    def close(self) -> None:
        self.server.close()
        for old in list(self.retiring):
            old.close()
        self.retiring.clear()


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
    tls_listeners: Sequence[socket.socket] = (),
    own: Sequence[socket.socket] = (),
) -> None:
    """Entry point in the forked child: never returns.

    Called with the supervisor's signal mask (SIGCHLD, SIGTERM, SIGINT, SIGUSR1, SIGUSR2,
    SIGHUP blocked); ``inherited`` are the other workers' listeners and sockets this one
    must not hold; ``own`` are this worker's own TCP sockets, which the supervisor may
    have paused while the slot was crashing: they listen again once the worker can serve.
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
        status = run_worker(
            index,
            cpu,
            listeners,
            config,
            supervisor,
            counters,
            tls_listeners=tls_listeners,
            ready=lambda: rejoin(list(own), config.backlog),
        )
    except BaseException:
        log.exception("worker %d crashed", index)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
