#!/usr/bin/env python3
"""Linux AIO read benchmark: aiobind against the PyPI bindings ``libaio`` and ``caio``.

Why this exists: aiobind is only worth carrying if driving the kernel's AIO through it
costs no more than through the bindings people already use. So every binding runs the
*same loop shape* on the *same file* with the *same offsets*: keep ``depth`` reads in
flight, block in ``io_getevents`` for at least one completion, check each completion's
byte count, then resubmit one read per completion in a single ``io_submit``. Only the
binding calls differ. The bindings alternate within each of ``--rounds`` rounds (the
starting binding rotates), and the tables report medians.

Workloads: 4 KiB random reads at depth 1 (latency bound) and depth 32 (IOPS bound), and
1 MiB sequential reads at depth 4 (bandwidth bound), all O_DIRECT from a 256 MiB file in
a temp dir under /var/tmp (a real disk, not tmpfs), removed at the end.

The page cache, honestly: O_DIRECT bypasses it, so the main table is the device plus the
binding's overhead; on a fast device the binding overhead is what separates the rows, on a
slow one they converge. A second table repeats the workloads on a buffered descriptor with
the file already in the page cache, where the kernel copies synchronously inside
``io_submit`` and there is no device at all: that isolates pure per-read binding cost,
and it is the only place ``caio`` can take part when it cannot do O_DIRECT (its reads go
into buffers it allocates itself with ``PyMem_Calloc``, which are only 16-byte aligned).

How each peer is driven (the lowest-overhead fair way found in its source):

* ``libaio`` (ctypes): ``AIOContext`` plus one reusable ``AIOBlock`` per slot over an
  anonymous ``mmap`` (page aligned); on completion set ``block.offset`` and resubmit the
  completed blocks in one ``AIOContext.submit`` list; reap with ``getEvents(1, depth)``.
* ``caio``: the raw ``caio.linux_aio.Context`` (C extension), not its asyncio adapter
  (which adds a future, a semaphore and an event-loop hop per read). Operations are
  one-shot, so each read is a new ``Operation.read``; its callback is the C-level
  ``list.append`` of the result; ``process_events(depth, 1, -1)`` blocks for >= 1.
* ``aiobind``: one ``Context``, one ``AlignedBuffer`` per slot, tokens are slot numbers,
  ``reap(min_nr=1, timeout=None)`` and ``submit([Read, ...])``.

Usage: python bench/aio_bench.py [--seconds 1.0] [--rounds 3] [--out bench/aio_results.md]
Peers are bench-only dependencies: ``pip install libaio caio``. A missing peer is reported
and skipped; the rest still runs. aiobind itself is the installed one (``make bench-aio``
or ``pip install -e .``): with the src layout the checkout cannot stand in for it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import importlib
import importlib.metadata
import mmap
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiobind import O_DIRECT, AlignedBuffer, Context, Read

BENCH_DIR = Path(__file__).resolve().parent

KIB = 1024
MIB = 1024 * KIB
FILE_SIZE = 256 * MIB
OFFSET_COUNT = 1 << 16  # pre-drawn offsets, cycled; identical for every binding
SEED = 20240601
BINDINGS = ("aiobind", "libaio", "caio")
PEERS = {"libaio": "libaio", "caio": "caio.linux_aio"}


@dataclass(frozen=True)
class Workload:
    """One row of the table: block size, queue depth and access pattern."""

    name: str
    block: int
    depth: int
    sequential: bool


WORKLOADS = (
    Workload("4 KiB random, QD 1", 4 * KIB, 1, sequential=False),
    Workload("4 KiB random, QD 32", 4 * KIB, 32, sequential=False),
    Workload("1 MiB sequential, QD 4", MIB, 4, sequential=True),
)


@dataclass
class Run:
    """What one timed loop did: completed reads, wall and CPU seconds."""

    reads: int
    wall: float
    cpu: float


class BenchError(Exception):
    """A binding could not do the work (wrong byte count, errno): reported, not fatal."""


def offsets_for(work: Workload, file_size: int) -> list[int]:
    """The offsets every binding reads, in order: block-aligned, random or sequential."""
    blocks = file_size // work.block
    if work.sequential:
        return [(i % blocks) * work.block for i in range(OFFSET_COUNT)]
    rng = random.Random(SEED ^ work.block ^ work.depth)
    return [rng.randrange(blocks) * work.block for _ in range(OFFSET_COUNT)]


def bad_result(res: int, work: Workload) -> BenchError:
    """Describe a completion that did not read exactly one block."""
    if res >= 1 << 63:  # caio hands the kernel's signed res over as unsigned
        res -= 1 << 64
    if res < 0:
        what = f"-{errno.errorcode.get(-res, str(-res))} ({os.strerror(-res)})"
    else:
        what = f"{res} bytes"
    return BenchError(f"a {work.block}-byte read completed with {what}")


# -- one timed loop per binding ---------------------------------------------------------
# Each keeps work.depth reads in flight until the deadline, counts the completions it
# reaped before the deadline, then drains what is still in flight outside the timing.


def run_aiobind(fd: int, work: Workload, offs: list[int], seconds: float) -> Run:
    """aiobind: slot-numbered tokens, one buffer per slot, batch resubmit."""
    mask = OFFSET_COUNT - 1
    block = work.block
    bufs = [AlignedBuffer(block) for _ in range(work.depth)]
    with Context(work.depth) as ctx:
        ctx.submit([Read(fd, bufs[i], offs[i], i) for i in range(work.depth)])
        nxt = work.depth
        done = 0
        reap, submit, submit_read = ctx.reap, ctx.submit, ctx.submit_read
        clock = time.perf_counter
        cpu0, t0 = time.process_time(), clock()
        deadline = t0 + seconds
        while True:
            completions = reap(1, None, None)
            done += len(completions)
            if len(completions) == 1:  # the common case below QD ~8: skip the Read
                token, res = completions[0]
                if res != block:
                    raise bad_result(res, work)
                if clock() >= deadline:
                    break
                submit_read(fd, bufs[token], offs[nxt & mask], token)  # type: ignore[index]
                nxt += 1
                continue
            batch = []
            for token, res in completions:
                if res != block:
                    raise bad_result(res, work)
                batch.append(Read(fd, bufs[token], offs[nxt & mask], token))  # type: ignore[index]
                nxt += 1
            if clock() >= deadline:
                break
            submit(batch)
        wall, cpu = clock() - t0, time.process_time() - cpu0
        while ctx.in_flight:
            ctx.reap(1, None, None)
    return Run(done, wall, cpu)


def run_libaio(fd: int, work: Workload, offs: list[int], seconds: float) -> Run:
    """python-libaio: reusable AIOBlocks over mmaps, offset updated before resubmit."""
    libaio = importlib.import_module("libaio")
    mask = OFFSET_COUNT - 1
    block = work.block
    ctx = libaio.AIOContext(work.depth)
    try:
        blocks = [
            libaio.AIOBlock(
                libaio.AIOBLOCK_MODE_READ,
                target_file=fd,
                buffer_list=[mmap.mmap(-1, block)],
                offset=offs[i],
            )
            for i in range(work.depth)
        ]
        ctx.submit(blocks)
        nxt = work.depth
        done = 0
        get_events, submit, clock = ctx.getEvents, ctx.submit, time.perf_counter
        cpu0, t0 = time.process_time(), clock()
        deadline = t0 + seconds
        while True:
            batch = []
            for blk, res, _res2 in get_events(1, work.depth, None):
                if res != block:
                    raise bad_result(res, work)
                blk.offset = offs[nxt & mask]
                nxt += 1
                batch.append(blk)
            done += len(batch)
            if clock() >= deadline:
                break
            submit(batch)
        wall, cpu = clock() - t0, time.process_time() - cpu0
        in_flight = work.depth - len(batch)
        while in_flight:
            in_flight -= len(get_events(1, work.depth, None))
    finally:
        ctx.close()
    return Run(done, wall, cpu)


def run_caio(fd: int, work: Workload, offs: list[int], seconds: float) -> Run:
    """caio.linux_aio: one-shot Operations, C-level callback, blocking process_events."""
    linux_aio = importlib.import_module("caio.linux_aio")
    mask = OFFSET_COUNT - 1
    block, depth = work.block, work.depth
    ctx = linux_aio.Context(depth)
    read_op = linux_aio.Operation.read
    results: list[int] = []
    on_done = results.append

    def op(offset: int) -> object:
        o = read_op(block, fd, offset)
        o.set_callback(on_done)
        return o

    ctx.submit(*[op(offs[i]) for i in range(depth)])
    nxt = depth
    done = 0
    process, submit, clock = ctx.process_events, ctx.submit, time.perf_counter
    cpu0, t0 = time.process_time(), clock()
    deadline = t0 + seconds
    in_flight = depth
    try:
        while True:
            n = process(depth, 1, -1)
            in_flight -= n
            for res in results:
                if res != block:
                    raise bad_result(res, work)
            results.clear()
            done += n
            if clock() >= deadline:
                break
            batch = [op(offs[(nxt + i) & mask]) for i in range(n)]
            nxt += n
            submit(*batch)
            in_flight += n
        wall, cpu = clock() - t0, time.process_time() - cpu0
    finally:
        while in_flight > 0:
            in_flight -= process(depth, 1, -1)
    return Run(done, wall, cpu)


RUNNERS: dict[str, Callable[[int, Workload, list[int], float], Run]] = {
    "aiobind": run_aiobind,
    "libaio": run_libaio,
    "caio": run_caio,
}


# -- orchestration ---------------------------------------------------------------------


@dataclass
class Cell:
    """All rounds of one (mode, workload, binding): runs, or why it could not run."""

    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    def median(self, what: Callable[[Run], float]) -> float:
        return statistics.median(what(r) for r in self.runs)


def available_peers() -> tuple[list[str], list[str]]:
    """Import each peer once; return (usable bindings, notes about missing peers)."""
    usable, notes = ["aiobind"], []
    for name, module in PEERS.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            notes.append(f"`{name}` is not installed ({exc}); `pip install {name}` to compare.")
        else:
            usable.append(name)
    return usable, notes


def make_file(directory: Path, size: int) -> Path:
    """Random data (not zeros: no file system or device may shortcut it), synced to disk."""
    path = directory / "aio-bench.bin"
    rng = random.Random(SEED)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        chunk = rng.randbytes(4 * MIB)
        for i in range(size // len(chunk)):
            os.write(fd, chunk[:8] + i.to_bytes(8, "little") + chunk[16:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def opened(path: Path, flags: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        yield fd
    finally:
        os.close(fd)


def measure(
    path: Path, direct: bool, bindings: list[str], args: argparse.Namespace, seconds: float
) -> dict[tuple[str, str], Cell]:
    """Every workload x binding, ``args.rounds`` times, bindings alternating.

    Within a round each binding's ``seconds`` are cut into ``args.slices`` slices run
    A B C A B C ..., and the starting binding rotates between rounds, so slow drifts of
    a shared virtual disk (or a noisy neighbour) hit every binding alike.
    """
    cells: dict[tuple[str, str], Cell] = {}
    offsets = {w.name: offsets_for(w, FILE_SIZE) for w in WORKLOADS}
    with opened(path, O_DIRECT if direct else 0) as fd:
        for rnd in range(args.rounds):
            for work in WORKLOADS:
                shift = rnd % len(bindings)
                order = bindings[shift:] + bindings[:shift]
                total = {name: Run(0, 0.0, 0.0) for name in order}
                for _slice in range(args.slices):
                    for name in order:
                        cell = cells.setdefault((work.name, name), Cell())
                        if cell.error:
                            continue
                        try:
                            run = RUNNERS[name](fd, work, offsets[work.name], seconds / args.slices)
                        except BenchError as exc:
                            cell.error = str(exc)
                            continue
                        acc = total[name]
                        acc.reads, acc.wall, acc.cpu = (
                            acc.reads + run.reads,
                            acc.wall + run.wall,
                            acc.cpu + run.cpu,
                        )
                for name in order:
                    cell = cells[(work.name, name)]
                    if not cell.error:
                        cell.runs.append(total[name])
                print(".", end="", flush=True, file=sys.stderr)
    return cells


# -- reporting -------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def block_device(path: Path) -> str:
    """Name, scheduler and rotational flag of the disk holding ``path``, for context."""
    dev = os.stat(path).st_dev
    sysdir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    try:
        name = sysdir.resolve().name
        queue = sysdir / "queue"
        if not queue.exists():  # a partition: the queue lives on the parent disk
            queue = sysdir.resolve().parent / "queue"
        sched = (queue / "scheduler").read_text().strip()
        rot = (queue / "rotational").read_text().strip()
    except OSError:
        return f"{os.major(dev)}:{os.minor(dev)}"
    return f"{name} (scheduler {sched}, rotational={rot})"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def table(cells: dict[tuple[str, str], Cell], bindings: list[str]) -> list[str]:
    """One row per workload: reads/s and GB/s per binding, then aiobind / each peer."""
    peers = [b for b in bindings if b != "aiobind"]
    head = ["workload"]
    for b in bindings:
        head += [f"{b} reads/s", f"{b} GB/s", f"{b} CPU µs/read"]
    head += [f"aiobind / {p}" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    failures: list[str] = []
    for work in WORKLOADS:
        row = [work.name]
        rate: dict[str, float] = {}
        for b in bindings:
            cell = cells.get((work.name, b), Cell(error="not run"))
            if cell.error or not cell.runs:
                row += ["failed", "-", "-"]
                failures.append(f"- {b}, {work.name}: {cell.error}")
                continue
            rate[b] = cell.median(lambda r: r.reads / r.wall)
            cpu_us = cell.median(lambda r: r.cpu / max(r.reads, 1) * 1e6)
            row += [fmt_rate(rate[b]), f"{rate[b] * work.block / 1e9:.3f}", f"{cpu_us:.1f}"]
        for p in peers:
            ok = "aiobind" in rate and p in rate
            row.append(f"{rate['aiobind'] / rate[p]:.2f}x" if ok else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    if failures:
        lines += ["", "Could not run:", "", *failures]
    return lines


def caio_note(direct_cells: dict[tuple[str, str], Cell]) -> list[str]:
    """Explain caio's O_DIRECT failure when it happened: it is caio's design, not ours."""
    errors = [c.error or "" for (_w, b), c in direct_cells.items() if b == "caio"]
    if not any("EINVAL" in e for e in errors):
        return []
    return [
        "- caio allocates every read's buffer itself (PyMem_Calloc: 16-byte aligned, no "
        "way to pass an aligned one), and this disk needs 512-byte aligned memory for "
        "O_DIRECT (queue/dma_alignment), so its reads complete with -EINVAL; it is "
        "compared on the buffered table only. On a device with looser DMA alignment "
        "(e.g. NVMe) it could take part."
    ]


def report(
    args: argparse.Namespace,
    path: Path,
    bindings: list[str],
    notes: list[str],
    direct_cells: dict[tuple[str, str], Cell],
    cached_cells: dict[tuple[str, str], Cell],
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{d} {version(d)}" for d in ("aws", "libaio", "caio", "cffi"))
    out = [
        "# aiobind vs libaio vs caio: Linux AIO reads",
        "",
        f"- date: {when}; generated by `bench/aio_bench.py`",
        f"- CPU: {cpu_model()} ({os.cpu_count()} CPUs); kernel: {platform.release()}",
        f"- Python {platform.python_version()}; {versions}",
        f"- file: {FILE_SIZE // MIB} MiB of pseudo-random data on {block_device(path)}",
        f"- {args.rounds} rounds; a round gives each binding {args.seconds:g} s per workload "
        f"(half that buffered) in {args.slices} interleaved slices; medians over rounds. "
        "Every binding runs the same loop: keep QD reads in flight, block for >= 1 "
        "completion, check its byte count, resubmit in one io_submit. The file is read "
        "through once before timing so lower caches start equal for all.",
        "",
        "## O_DIRECT (device + binding overhead; the page cache is bypassed)",
        "",
        *table(direct_cells, bindings),
        "",
        "## Buffered, file hot in the page cache (no device: pure binding overhead)",
        "",
        "The kernel serves these synchronously inside io_submit, copying from the page cache.",
        "",
        *table(cached_cells, bindings),
        "",
        "Notes:",
        "",
        "- GB/s is 10^9 bytes/s. CPU µs/read is process CPU time (user + system) per "
        "completed read, which shows binding overhead even where the device is the limit.",
        "- O_DIRECT bypasses this guest's page cache, but on a VM the host may still cache "
        "the disk image, so 'device' means whatever the virtual disk delivers.",
        *caio_note(direct_cells),
        *[f"- {n}" for n in notes],
        "",
    ]
    return "\n".join(out)


def read_through(path: Path, flags: int) -> None:
    """Read the whole file once, before timing, so no binding pays a first touch.

    With O_DIRECT this fills whatever caches sit below this kernel (a VM host's page
    cache of the disk image, a device's cache) equally for everyone, instead of
    favouring whichever binding happens to run second; buffered, it loads the page cache
    for the cached table.
    """
    buf = AlignedBuffer(8 * MIB)
    with opened(path, flags) as fd:
        while os.readv(fd, [buf.view]):
            pass
    buf.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed length of a cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=3, help="interleaved slices a round")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="on a real disk")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "aio_results.md")
    args = parser.parse_args()

    bindings, notes = available_peers()
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="aio-bench-", dir=args.dir))
    try:
        path = make_file(tmp, FILE_SIZE)
        read_through(path, O_DIRECT)  # same starting point for all: see its docstring
        direct_cells = measure(path, True, bindings, args, args.seconds)
        read_through(path, 0)
        cached_cells = measure(path, False, bindings, args, args.seconds / 2)
        text = report(args, path, bindings, notes, direct_cells, cached_cells)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(file=sys.stderr)
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
