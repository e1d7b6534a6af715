"""The "how the cost grows" part of results.md: aws and nginx on the same file with many
more connections, idle ones (10,000 beside wrk's 50) or busy ones (256 instead of 4)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .workloads import WORKLOADS, Workload
from .wrk import Outcome, Sample

# (base row, the same row with many more connections)
PAIRS = (("ka-1k", "ka-1k-idle"), ("static-64m", "static-64m-c256"))
GROWTH_SERVERS = ("nginx", "aws")

Results = dict[tuple[str, str], list[Outcome]]
Medians = dict[tuple[str, str], float | str]
Costs = dict[tuple[str, str], float | None]


def idle_kib_median(outcomes: Sequence[Outcome]) -> float | None:
    """Median KiB of server memory per idle connection, over trusted rounds only."""
    samples = [o for o in outcomes if isinstance(o, Sample)]
    if len(samples) < len(outcomes) or any(s.bad for s in samples):
        return None
    values = [s.idle_kib for s in samples if s.idle_kib is not None]
    return statistics.median(values) if values else None


def change_pct(base: float | str | None, grown: float | str | None) -> float | None:
    """How much the figure moved when the connections were added, in percent."""
    if isinstance(base, float) and isinstance(grown, float) and base > 0:
        return 100 * (grown / base - 1)
    return None


def number(value: float | str | None, wl: Workload) -> str:
    """A median in its unit, or n/a where it is missing or untrusted (see the main table)."""
    return f"{value:,.0f} {wl.unit}" if isinstance(value, float) else "n/a"


def cost(value: float | None, wl: Workload) -> str:
    """Server CPU per request (or MiB) in the table's style."""
    if value is None:
        return "n/a"
    return f"{value:,.1f} {wl.cost_unit}" if value < 1000 else f"{value:,.0f} {wl.cost_unit}"


def pct(value: float | None) -> str:
    """A signed percentage, or n/a."""
    return "n/a" if value is None else f"{value:+.1f}%"


def kib(value: float | None) -> str:
    """KiB per idle connection, two decimals: nginx needs well under one."""
    return "n/a" if value is None else f"{value:.2f} KiB"


def growth_lines(results: Results, medians: Medians, costs: Costs) -> list[str]:
    """Table and one sentence per server; empty when none of the growth rows ran."""
    by_key = {wl.key: wl for wl in WORKLOADS}
    if not all(key in by_key for pair in PAIRS for key in pair):
        return []
    names = [n for n in GROWTH_SERVERS if any((g, n) in results for _, g in PAIRS)]
    if not names:
        return []
    (ka, idle), (big, many) = ((by_key[b], by_key[g]) for b, g in PAIRS)
    head = [
        "server",
        ka.title,
        idle.title,
        "change",
        "server CPU",
        "server CPU with idle",
        "memory per idle connection",
        big.title,
        many.title,
        "change",
    ]
    lines = ["## How the cost grows", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    memory: dict[str, float | None] = {}
    for name in names:
        get = {key: medians.get((key, name)) for key in (ka.key, idle.key, big.key, many.key)}
        idle_change = change_pct(get[ka.key], get[idle.key])
        many_change = change_pct(get[big.key], get[many.key])
        memory[name] = idle_kib_median(results.get((idle.key, name), []))
        cpu_base, cpu_idle = costs.get((ka.key, name)), costs.get((idle.key, name))
        row = [
            name,
            number(get[ka.key], ka),
            number(get[idle.key], idle),
            pct(idle_change),
            cost(cpu_base, ka),
            cost(cpu_idle, idle),
            kib(memory[name]),
            number(get[big.key], big),
            number(get[many.key], many),
            pct(many_change),
        ]
        lines.append("| " + " | ".join(row) + " |")
        notes.append(
            f"- {name}: {idle.idle:,} idle keep-alive connections change its 1 KiB keep-alive "
            f"rate by {pct(idle_change)} ({number(get[ka.key], ka)} -> "
            f"{number(get[idle.key], idle)}; server CPU {cost(cpu_base, ka)} -> "
            f"{cost(cpu_idle, idle)}) and hold {kib(memory[name])} of its memory each; "
            f"{many.conns} clients instead of {big.conns} on the 64 MiB file change its "
            f"throughput by {pct(many_change)} ({number(get[big.key], big)} -> "
            f"{number(get[many.key], many)})."
        )
    aws_kib, nginx_kib = memory.get("aws"), memory.get("nginx")
    if aws_kib is not None and nginx_kib is not None and nginx_kib > 0:
        notes.append(
            f"- Memory per idle connection, aws/nginx: {aws_kib / nginx_kib:.1f}x "
            f"({kib(aws_kib)} against {kib(nginx_kib)})."
        )
    explain = (
        "Memory per idle connection: the server's resident memory (all its processes) with "
        f"the {idle.idle:,} idle connections open minus just before the first was opened, "
        "divided by their number. Kernel socket buffers are not in it (the same for every "
        "server), and nginx's connection table is allocated at start for "
        "`worker_connections`, so it is in the before figure."
    )
    return [*lines, "", *notes, "", explain]
