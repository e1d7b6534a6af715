"""HTTP file-serving benchmark: aws against nginx and common Python servers.

Every server gets ONE worker pinned to CPU 0 and wrk gets one thread pinned to CPU 1, so
the numbers compare per-core efficiency instead of how many cores a server can grab.
Servers run one at a time on a fresh temp root, each cell is measured in several rounds
with the servers interleaved, and the medians plus every raw figure go to a markdown
report (and a PNG chart when matplotlib is available). See bench/README.md.

Usage: python -m bench.httpbench [--rounds 3] [--duration 5] [--out bench/results.md]
                                 [--servers nginx aws ...] [--workloads ka-1k ...] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import BENCH_DIR
from .chart import write_chart
from .preflight import choose_nginx_aio, ensure_tools, preflight_server
from .procs import stop_all
from .report import nginx_log_notes, progress_text, write_report
from .servers import SERVERS, Context, ServerSpec, ktls_note, make_cert, servers_for
from .workloads import WORKLOADS, Workload, make_root
from .wrk import NOISY_PCT, Outcome, foreign_cpu_pct, measure

# Start + readiness probe + wrk start-up + stop, measured on the 2-core dev box.
CELL_OVERHEAD_S = 1.0
# Opening and verifying the idle connections, and resetting them afterwards.
IDLE_OVERHEAD_S_PER_10K = 4.0
PREFLIGHT_PER_SERVER_S = 3.0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so the finally-cleanup always runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_rounds(
    ctx: Context,
    specs: Sequence[ServerSpec],
    rounds: int,
    duration: int,
    workloads: Sequence[Workload] = WORKLOADS,
) -> dict[tuple[str, str], list[Outcome]]:
    """Round r: every workload, every server, rotating server order to spread drift."""
    results: dict[tuple[str, str], list[Outcome]] = {}
    for rnd in range(rounds):
        shift = rnd % max(len(specs), 1)
        order = [*specs[shift:], *specs[:shift]]
        for wl in workloads:
            for spec in servers_for(wl, order):
                outcome = measure(ctx, spec, wl, duration)
                results.setdefault((wl.key, spec.name), []).append(outcome)
                head = f"[round {rnd + 1}/{rounds}] {wl.key:<15} {spec.name:<18}"
                print(f"{head} {progress_text(outcome, wl)}", flush=True)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """CLI; --quick overrides rounds/duration for a smoke test."""
    names = [s.name for s in SERVERS]
    # Python 3.11 names `python -m` runs after the file, which would read `__main__.py`.
    prog = "python -m bench.httpbench" if Path(sys.argv[0]).name == "__main__.py" else None
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (>= 3 for real runs)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.md")
    parser.add_argument(
        "--servers",
        nargs="+",
        default=names,
        help=f"subset of: {' '.join(names)} (comma-separated also accepted)",
    )
    keys = [wl.key for wl in WORKLOADS]
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=keys,
        help=f"subset of: {' '.join(keys)} (comma-separated also accepted)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    wanted = [n for item in args.servers for n in item.split(",") if n]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"unknown server(s) {unknown}; choose from {names}")
    args.specs = [s for s in SERVERS if s.name in wanted]
    rows = [k for item in args.workloads for k in item.split(",") if k]
    unknown = sorted(set(rows) - set(keys))
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {keys}")
    args.workloads = [wl for wl in WORKLOADS if wl.key in rows]
    if args.rounds < 3 and not args.quick:
        print(f"note: {args.rounds} round(s) < 3, medians are not robust against noise")
    return args


def estimate_seconds(
    specs: Sequence[ServerSpec],
    rounds: int,
    duration: int,
    workloads: Sequence[Workload] = WORKLOADS,
) -> float:
    """Upper-bound wall time so a too-long configuration is visible before it starts."""
    per_round = sum(
        len(servers_for(wl, specs))
        * (duration + CELL_OVERHEAD_S + IDLE_OVERHEAD_S_PER_10K * wl.idle / 10_000)
        for wl in workloads
    )
    return len(specs) * PREFLIGHT_PER_SERVER_S + rounds * per_round


def bench(args: argparse.Namespace, tmp: Path) -> None:
    """Preflight every server, run the rounds, write the report and chart."""
    root, digests = make_root(tmp)
    aio, aio_note = choose_nginx_aio()
    ctx = Context(tmp=tmp, root=root, digests=digests, nginx_aio=aio, tls=make_cert(tmp))
    ctx.notes.append(ktls_note())
    if aio_note:
        ctx.notes.append(aio_note)
        print(f"note: {aio_note}")
    busy = foreign_cpu_pct()
    if busy >= NOISY_PCT:
        warn = f"machine not idle before the run: other processes used {busy:.0f}% CPU"
        ctx.notes.append(warn)
        print(f"WARNING: {warn}; figures will be noisy")
    print("preflight (start, probe, verify bodies):")
    status = {spec.name: preflight_server(ctx, spec) for spec in args.specs}
    usable = [s for s in args.specs if status[s.name] is None]
    results = run_rounds(ctx, usable, args.rounds, args.duration, args.workloads)
    ctx.notes += nginx_log_notes(ctx)
    medians, summary = write_report(
        args.out,
        ctx,
        args.specs,
        status=status,
        results=results,
        rounds=args.rounds,
        duration=args.duration,
        workloads=args.workloads,
    )
    print("\n".join(["", *summary, ""]))
    print(f"report written to {args.out}")
    print(write_chart(args.out.with_suffix(".png"), args.specs, medians, args.workloads))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: tools first, then a temp root that is always removed with its servers."""
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    ensure_tools()
    est = estimate_seconds(args.specs, args.rounds, args.duration, args.workloads)
    print(
        f"estimated time: ~{est / 60:.1f} min ({args.rounds} rounds x {args.duration} s, "
        f"servers: {', '.join(s.name for s in args.specs)})"
    )
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="aws-bench-", dir="/var/tmp"))
    try:
        bench(args, tmp)
    except KeyboardInterrupt:
        print("interrupted: stopping servers and removing the temp root")
        return 130
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
