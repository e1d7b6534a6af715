#!/usr/bin/env python3
"""Per-request CPU of the server's Python, in-process, without wrk's noise.

The real Server, Loop and Connection over a socketpair: one keep-alive request is sent,
the loop turns once, the response is read, 20,000 times a round. CPU time of this
process (``time.process_time``: the server's work plus the client's two syscalls) per
request, the best of five rounds. Use it to compare two versions of the hot path side
by side (run it from each checkout in turn); `make bench` remains the measure that
counts, against nginx.

Usage: python bench/micro.py [/static/1k.bin | /dynamic/1k.bin] [--metrics] [--log PATH]
(``--metrics``: count into a shared-memory slot, as ``--metrics`` does; ``--log``: write
the access log there.)
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time

from aws.config import Config
from aws.connection import Connection
from aws.loop import Loop
from aws.metrics import Shared, WorkerCounters
from aws.server import Server

ROUNDS = 5
PER_ROUND = 20_000


def main() -> None:
    args = sys.argv[1:]
    counters = None
    if "--metrics" in args:
        args.remove("--metrics")
        counters = WorkerCounters(Shared(1).live(0))
    access_log = ""
    if "--log" in args:
        access_log = args.pop(args.index("--log") + 1)
        args.remove("--log")
    path = args[0] if args else "/static/1k.bin"
    with tempfile.TemporaryDirectory() as root:
        for prefix in ("static", "dynamic"):
            os.makedirs(f"{root}/{prefix}")
            with open(f"{root}/{prefix}/1k.bin", "wb") as f:
                f.write(os.urandom(1024))
        loop = Loop()
        loop._timeout = lambda: 0.0  # type: ignore[method-assign]  # never sleep in poll
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        config = Config(root=root, access_log=access_log)
        server = Server(config, loop, listener, counters=counters)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        conn = Connection(server, ours, "socketpair")
        server.conns.add(conn)
        conn.start()
        request = f"GET {path} HTTP/1.1\r\nHost: localhost:8080\r\n\r\n".encode()

        def one() -> None:
            theirs.send(request)
            loop.run_once()
            got = 0
            while got < 1024 + 100:
                got += len(theirs.recv(65536))

        for _ in range(2000):
            one()
        rounds = []
        for _ in range(ROUNDS):
            start = time.process_time()
            for _ in range(PER_ROUND):
                one()
            rounds.append((time.process_time() - start) / PER_ROUND * 1e6)
        server.close()
        loop.close()
        theirs.close()
    shown = ", ".join(f"{r:.2f}" for r in rounds)
    extra = " with metrics" if counters is not None else ""
    extra += f" with the access log ({access_log})" if access_log else ""
    print(f"{path}{extra}: {min(rounds):.2f} us of CPU per request (best of {ROUNDS}: {shown})")


if __name__ == "__main__":
    main()
