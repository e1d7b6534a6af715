"""Counters every worker keeps in shared memory, and their Prometheus text.

The supervisor maps one anonymous shared region before it forks anything. Each worker
gets a slot of 64-bit cells and increments them in plain Python through a memoryview
(no syscall, no lock: one writer per slot, and an aligned 8-byte store is atomic on the
CPUs this runs on). Whoever serves ``--metrics`` (the supervisor's metrics process, or
the single process itself) reads every slot and sums.

A slot is claimed for one worker process and given back when it exits: its counters are
then folded into that worker index's ``retired`` totals, so counters only grow across
restarts and reloads, and old and new workers never write the same cell even while
both run. The fold is bracketed by a sequence number that readers check.

Per response a worker only adds to Python lists of its own (~0.3 us; writing the shared
cells themselves measured ~1.5 us a request on the 1 KiB hot path, 18% of it, in
``bench/micro.py --metrics``). The worker's 0.25 s sweep adds those tallies to its slot
and writes the gauges (open connections, AIO reads in flight and queued), and so does a
server that closes. So a scrape sees a worker's counts at most one sweep late, and a
worker killed outright (SIGKILL) loses at most its last sweep's worth.
"""

from __future__ import annotations

import mmap
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from aws.logs import BY_PATH, WAY_NONE

if TYPE_CHECKING:
    from aws.connection import Connection
    from aws.server import Server

CELL = 8
SLOT_CELLS = 80
MAX_INDEX = 256  # worker indexes with retired totals and restart counts

# Request duration buckets, seconds (le): from a cached small file to a long download.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Loop turn durations, seconds (le): from a turn of a few requests to a loop that waited.
TURN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
PREFIXES = ("static", "dynamic", "other")
WAYS = ("none", "sendfile", "aio_direct", "aio_buffered", "mixed", "tls_copy")  # logs.WAY_*

# Cells of a slot.
PID, INDEX = 0, 1
REQUESTS = 2  # CLASSES x PREFIXES
BYTES = REQUESTS + len(CLASSES) * len(PREFIXES)  # per way
RESPONSES = BYTES + len(WAYS)  # per way
HIST = RESPONSES + len(WAYS)  # len(BUCKETS) + 1 (+Inf), not cumulative
SUM_US = HIST + len(BUCKETS) + 1
CONNECTIONS = SUM_US + 1  # gauges from here on: not folded on exit
AIO_IN_FLIGHT = CONNECTIONS + 1
AIO_QUEUED = AIO_IN_FLIGHT + 1
IN_LINE = AIO_QUEUED + 1  # long transfers waiting for their share of a turn (aws.turns)
REFUSED = IN_LINE + 1  # counters again, added to by the sweep
ACCEPT_PAUSES = REFUSED + 1
CACHE_HITS = ACCEPT_PAUSES + 1  # open-file cache, both prefixes
CACHE_MISSES = CACHE_HITS + 1
TURNS = CACHE_MISSES + 1  # len(TURN_BUCKETS) + 1 (+Inf), not cumulative
TURN_US = TURNS + len(TURN_BUCKETS) + 1
assert TURN_US < SLOT_CELLS
_FOLDED = [
    *range(REQUESTS, CONNECTIONS), REFUSED, ACCEPT_PAUSES, CACHE_HITS, CACHE_MISSES,
    *range(TURNS, TURN_US + 1),
]  # fmt: skip

# Cells of the header.
SEQ, DRAINING, RELOADS = 0, 1, 2
RESTARTS = 3  # per worker index
HEADER_CELLS = RESTARTS + MAX_INDEX

_PREFIX_INDEX = {b"static": 0, b"dynamic": 1}


def response_cells(status: int, prefix: bytes | None, path: str) -> tuple[int, int, int]:
    """The cells that count a response of this status, URL prefix and way out, its body
    bytes, and its way (a replayed response is counted there by ``aiobind.replay``)."""
    return _cells(status, _PREFIX_INDEX.get(prefix, 2), path)  # type: ignore[arg-type]


def _cells(status: int, prefix: int, path: str) -> tuple[int, int, int]:
    klass = status // 100 if 100 <= status < 600 else 0
    way = BY_PATH.get(path, WAY_NONE)
    return REQUESTS + klass * 3 + prefix, BYTES + way, RESPONSES + way


class WorkerCounters:
    """One worker process's slot: what ``Server`` calls per response and per sweep.

    In the single process a reload runs two servers for a while; both count here, and
    the gauges are the sum over the servers attached.
    """

    __slots__ = ("cells", "hist", "rows", "seconds", "servers", "turn_seconds", "turns")

    def __init__(self, cells: memoryview) -> None:
        self.cells = cells
        self.servers: list[Server] = []
        # Since the last sample: per (status, prefix index, Connection.path) the responses
        # and body bytes; per duration bucket the responses; the seconds they took. The
        # keys are bounded: statuses are the server's own, prefixes and paths are few.
        self.rows: dict[tuple[int, int, str], list[int]] = {}
        self.hist = [0] * (len(BUCKETS) + 1)
        self.seconds = [0.0]
        self.turns = [0] * (len(TURN_BUCKETS) + 1)  # the loop's turns, since the last sample
        self.turn_seconds = [0.0]

    def attach(self, server: Server) -> None:
        self.servers.append(server)
        server.loop.watch(TURN_BUCKETS, self.turns, self.turn_seconds)  # one loop a process

    def detach(self, server: Server) -> None:
        self.sample()  # its last responses, refusals and pauses
        self.servers.remove(server)
        self.sample()

    def counter(self, clock: Callable[[], float]) -> Callable[[Connection], float]:
        """The per-response call: tallies one ended response and returns its duration
        (from the loop turn that decided it to ``clock()`` now). Lists only, bound once
        here: each attribute or method lookup saved is measurable on the hot path."""
        rows, hist, seconds = self.rows, self.hist, self.seconds
        prefix_index = _PREFIX_INDEX.get
        first, buckets = BUCKETS[0], BUCKETS

        def count(conn: Connection) -> float:
            duration = clock() - conn.began
            req = conn.req
            prefix = prefix_index(req.prefix, 2) if req is not None else 2  # type: ignore[arg-type]
            key = (conn.status, prefix, conn.path)
            row = rows.get(key)
            if row is None:
                row = rows[key] = [0, 0]
            row[0] += 1
            row[1] += conn.sent
            hist[0 if duration <= first else bisect_left(buckets, duration)] += 1
            seconds[0] += duration
            return duration

        return count

    def sample(self) -> None:
        cells = self.cells
        self._publish(cells)
        servers = self.servers
        cells[CONNECTIONS] = sum(len(s.conns) for s in servers)
        cells[AIO_IN_FLIGHT] = sum(s.aio.ctx.in_flight for s in servers)
        cells[AIO_QUEUED] = sum(len(s.aio.backlog) for s in servers)
        cells[IN_LINE] = sum(len(turns) for turns in {s.turns for s in servers})  # shared
        for s in servers:  # counters: add what is new since the last sample
            reported = s.reported
            hits = s.static.hits + s.dynamic.hits
            misses = s.static.misses + s.dynamic.misses
            cells[REFUSED] += s.refused - reported[0]
            cells[ACCEPT_PAUSES] += s.pauses - reported[1]
            cells[CACHE_HITS] += hits - reported[2]
            cells[CACHE_MISSES] += misses - reported[3]
            reported[:] = s.refused, s.pauses, hits, misses

    def _publish(self, cells: memoryview) -> None:
        """Add the responses tallied since the last sample to the shared cells."""
        for (status, prefix, path), row in self.rows.items():
            responses, sent = row
            if not responses:
                continue
            row[0] = row[1] = 0
            counted, body, way = _cells(status, prefix, path)
            cells[counted] += responses
            cells[body] += sent
            cells[way] += responses
        _move_histogram(cells, HIST, self.hist, SUM_US, self.seconds)
        _move_histogram(cells, TURNS, self.turns, TURN_US, self.turn_seconds)


def _move_histogram(
    cells: memoryview, first: int, counts: list[int], sum_us: int, seconds: list[float]
) -> None:
    """Add a histogram tallied in lists to its cells from ``first`` (and its seconds to
    the microseconds at ``sum_us``), and zero the lists."""
    for i, n in enumerate(counts):
        if n:
            cells[first + i] += n
            counts[i] = 0
    if seconds[0]:
        cells[sum_us] += round(seconds[0] * 1_000_000)
        seconds[0] = 0.0


class Shared:
    """The shared region: a header, ``slots`` live slots, and one retired slot per index."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        cells = HEADER_CELLS + (slots + MAX_INDEX) * SLOT_CELLS
        self._map = mmap.mmap(-1, cells * CELL, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.all = memoryview(self._map).cast("Q")
        self.header = self.all[:HEADER_CELLS]

    def _slot(self, n: int) -> memoryview:
        start = HEADER_CELLS + n * SLOT_CELLS
        return self.all[start : start + SLOT_CELLS]

    def live(self, n: int) -> memoryview:
        return self._slot(n)

    def retired(self, index: int) -> memoryview:
        return self._slot(self.slots + index)

    # -- the supervisor's side -----------------------------------------------------------

    def claim(self, index: int) -> int | None:
        """A free slot for a new worker of ``index`` (zeroed); None when all are taken."""
        for n in range(self.slots):
            cells = self.live(n)
            if cells[PID] == 0:
                for i in range(1, SLOT_CELLS):
                    cells[i] = 0
                cells[INDEX] = index
                cells[PID] = 1  # taken; the real pid is filled in after fork
                return n
        return None

    def bind(self, n: int, pid: int) -> None:
        self.live(n)[PID] = pid

    def release(self, n: int) -> None:
        """The worker in slot ``n`` has exited: keep its counts under its index."""
        cells = self.live(n)
        index = cells[INDEX]
        if index >= MAX_INDEX:
            cells[PID] = 0
            return
        retired = self.retired(index)
        header = self.header
        header[SEQ] += 1  # odd: a fold is under way
        for i in _FOLDED:
            retired[i] += cells[i]
        cells[PID] = 0
        header[SEQ] += 1

    def restarted(self, index: int) -> None:
        if index < MAX_INDEX:
            self.header[RESTARTS + index] += 1

    def reloaded(self) -> None:
        self.header[RELOADS] += 1

    def set_draining(self, draining: bool) -> None:
        self.header[DRAINING] = int(draining)

    # -- the reader's side ---------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Every slot summed per worker index, read again if a fold was under way (a
        fold is a few hundred stores: the retry is for the rare overlap)."""
        header = self.header
        snap = self._read()
        for _ in range(100):
            seq = header[SEQ]
            if not seq & 1:
                snap = self._read()
                if header[SEQ] == seq:
                    break
            time.sleep(0.0001)
        return snap

    def _read(self) -> Snapshot:
        header = self.header
        snap = Snapshot(bool(header[DRAINING]))
        snap.reloads = header[RELOADS]
        for index in range(MAX_INDEX):
            snap.add(index, self.retired(index), live=False)
        for n in range(self.slots):
            cells = self.live(n)
            if cells[PID] > 1:
                snap.add(int(cells[INDEX]), cells, live=True)
        for index in range(MAX_INDEX):
            restarts = header[RESTARTS + index]
            if restarts:
                snap.restarts[index] = restarts
        return snap


class Snapshot:
    """Totals per worker index, ready to render."""

    def __init__(self, draining: bool) -> None:
        self.draining = draining
        self.per_worker: dict[int, list[int]] = {}
        self.alive: set[int] = set()
        self.restarts: dict[int, int] = {}
        self.reloads = 0

    def add(self, index: int, cells: memoryview, live: bool) -> None:
        values = cells.tolist()
        if not live and not any(values[i] for i in _FOLDED):
            return
        mine = self.per_worker.setdefault(index, [0] * SLOT_CELLS)
        for i in range(REQUESTS, SLOT_CELLS):
            mine[i] += values[i]
        if live:
            self.alive.add(index)

    def total(self, cell: int) -> int:
        return sum(v[cell] for v in self.per_worker.values())


def _series(name: str, labels: dict[str, str], value: float) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{text}}} {value}\n" if text else f"{name} {value}\n"


def _family(name: str, kind: str, help: str) -> str:
    return f"# HELP {name} {help}\n# TYPE {name} {kind}\n"


def _histogram(
    snap: Snapshot, name: str, help: str, first: int, bounds: tuple[float, ...], sum_us: int
) -> Iterator[str]:
    yield _family(name, "histogram", help)
    cumulative = 0
    for i, le in enumerate((*bounds, float("inf"))):
        cumulative += snap.total(first + i)
        label = "+Inf" if le == float("inf") else repr(le)
        yield _series(name + "_bucket", {"le": label}, cumulative)
    yield _series(name + "_sum", {}, snap.total(sum_us) / 1_000_000)
    yield _series(name + "_count", {}, cumulative)


def render(snap: Snapshot) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    return "".join(_render(snap))


def _render(snap: Snapshot) -> Iterator[str]:
    workers = sorted(snap.per_worker)
    yield _family("aws_requests_total", "counter", "Responses by status class and URL prefix.")
    for c, klass in enumerate(CLASSES):
        for p, prefix in enumerate(PREFIXES):
            cell = REQUESTS + c * 3 + p
            value = snap.total(cell)
            if value or klass in ("2xx", "4xx"):
                yield _series("aws_requests_total", {"code": klass, "prefix": prefix}, value)
    yield _family("aws_worker_requests_total", "counter", "Responses per worker process.")
    for w in workers:
        count = sum(snap.per_worker[w][REQUESTS:BYTES])
        yield _series("aws_worker_requests_total", {"worker": str(w)}, count)
    yield _family(
        "aws_sent_bytes_total", "counter", "File body bytes sent, by the way they went out."
    )
    for i, way in enumerate(WAYS[1:], start=1):
        yield _series("aws_sent_bytes_total", {"way": way}, snap.total(BYTES + i))
    yield _family("aws_responses_by_way_total", "counter", "Responses by how the body went out.")
    for i, way in enumerate(WAYS):
        yield _series("aws_responses_by_way_total", {"way": way}, snap.total(RESPONSES + i))
    yield from _histogram(
        snap,
        "aws_request_duration_seconds",
        "From the loop turn that decided a response to its last byte sent.",
        HIST,
        BUCKETS,
        SUM_US,
    )
    yield from _histogram(
        snap,
        "aws_loop_turn_seconds",
        "Work of one event-loop turn (events, callbacks, timers; not the wait in epoll): "
        "how long a ready event can wait behind the others.",
        TURNS,
        TURN_BUCKETS,
        TURN_US,
    )
    for cell, metric, help in (
        (CONNECTIONS, "aws_connections_open", "Client connections open."),
        (AIO_IN_FLIGHT, "aws_aio_reads_in_flight", "AIO reads submitted and not yet reaped."),
        (AIO_QUEUED, "aws_aio_reads_queued", "AIO reads waiting for a free context slot."),
        (IN_LINE, "aws_transfers_in_line", "Long transfers waiting for their share of a turn."),
    ):
        yield _family(metric, "gauge", help)
        for w in workers:
            yield _series(metric, {"worker": str(w)}, snap.per_worker[w][cell])
    for cell, metric, help in (
        (REFUSED, "aws_refused_connections_total", "Connections closed at --max-connections."),
        (ACCEPT_PAUSES, "aws_accept_pauses_total", "Accept pauses for lack of descriptors."),
        (CACHE_HITS, "aws_open_file_cache_hits_total", "Files served from an open descriptor."),
        (CACHE_MISSES, "aws_open_file_cache_misses_total", "Files opened anew (or changed)."),
    ):
        yield _family(metric, "counter", help)
        yield _series(metric, {}, snap.total(cell))
    yield _family("aws_worker_restarts_total", "counter", "Workers restarted after dying.")
    for w in sorted(set(workers) | set(snap.restarts)):
        yield _series("aws_worker_restarts_total", {"worker": str(w)}, snap.restarts.get(w, 0))
    yield _family("aws_reloads_total", "counter", "Configuration reloads (SIGHUP) applied.")
    yield _series("aws_reloads_total", {}, snap.reloads)
    yield _family("aws_workers_up", "gauge", "Worker processes serving.")
    yield _series("aws_workers_up", {}, len(snap.alive))
    yield _family("aws_draining", "gauge", "1 while the server is stopping.")
    yield _series("aws_draining", {}, int(snap.draining))
