"""The life of one worker process: pinned to a CPU, one loop, until told to stop.

Signals reach the loop through a wakeup socket registered in the same epoll, so a
SIGTERM is acted on at once, not at the next timeout. The first SIGTERM drains; a
second one (or the drain timeout) ends the process at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys

from aws.config import Config
from aws.loop import EPOLLIN, Loop
from aws.server import Server

log = logging.getLogger("aws.worker")

EXIT_FATAL = 3  # the worker cannot start (e.g. io_setup failed): do not restart it


class SignalWatcher:
    """Turns SIGTERM into loop events through ``signal.set_wakeup_fd``."""

    def __init__(self, loop: Loop, on_stop: object) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self.count = 0
        self._on_stop = on_stop
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._note)
        # Ctrl-C reaches the whole process group: only the supervisor acts on it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        loop.add(self._r.fileno(), EPOLLIN, self)

    def _note(self, signum: int, frame: object) -> None:
        self.count += 1

    def on_event(self, events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._r.recv(64)
        if self.count:
            self._on_stop(self.count)  # type: ignore[operator]

    def on_error(self, exc: BaseException) -> None:
        log.error("signal handling failed: %r", exc)


def run_worker(index: int, cpu: int | None, listener: socket.socket, config: Config) -> int:
    """Serve until stopped; returns the process exit status."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    loop = Loop()
    try:
        server = Server(config, loop, listener)
    except OSError as exc:
        log.critical("worker %d cannot start: %s", index, exc)
        return EXIT_FATAL

    def stop(count: int) -> None:
        if count >= 2:
            log.info("worker %d: second signal, exiting now", index)
            loop.stop()
            return
        if not server.draining:
            log.debug("worker %d: draining %d connections", index, len(server.conns))
            server.drain()
            loop.call_later(config.drain_timeout, timeout)

    def timeout() -> None:
        if server.conns:
            log.warning("worker %d: drain timeout, %d connections cut", index, len(server.conns))
        loop.stop()

    SignalWatcher(loop, stop)
    log.debug("worker %d (pid %d) serving on CPU %s", index, os.getpid(), cpu)
    loop.run()
    server.close()
    loop.close()
    return 0


def worker_process(index: int, cpu: int | None, listener: socket.socket, config: Config) -> None:
    """Entry point in the forked child: never returns."""
    status = 1
    try:
        status = run_worker(index, cpu, listener, config)
    except BaseException:
        log.exception("worker %d crashed", index)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
