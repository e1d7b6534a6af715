"""results.md: header, medians with ratios and marks, notes, and every raw round."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

from .growth import growth_lines
from .procs import SERVER_CPU, run_cmd
from .servers import NO_PEERS, Context, ServerSpec
from .workloads import WORKLOADS, Workload
from .wrk import CLIENT_BOUND_PCT, CLIENT_CPU, NOISY_PCT, Outcome, Sample

PEER_BAR = 3.0  # issue 15: against the fastest Python peer a user would pick (granian)
CLIENT_BOUND_MARK = " †"
NOISY_MARK = " ‡"


def fmt_value(value: float, wl: Workload) -> str:
    """Thousands-separated figure with its unit."""
    return f"{value:,.0f} {wl.unit}"


def describe(outcome: Outcome, wl: Workload) -> str:
    """One progress/raw-table cell: figure, or ERR with how many bad responses."""
    if isinstance(outcome, str):
        return f"ERR ({outcome})"
    if outcome.bad:
        return f"ERR ({outcome.bad} bad)"
    return fmt_value(outcome.value(wl), wl)


def latency_ms(sample: Sample, us: int, unit: bool = True) -> str:
    """A latency percentile in ms; n/a when no request completed (256 clients on 64 MiB
    files in a short run), where wrk reports 0."""
    if not sample.requests:
        return "n/a"
    return f"{us / 1000:.2f} ms" if unit else f"{us / 1000:.2f}"


def progress_text(outcome: Outcome, wl: Workload) -> str:
    """Live line per cell, with the CPU split so a suspicious figure is visible at once."""
    text = describe(outcome, wl)
    if isinstance(outcome, Sample):
        text += (
            f"  p99 {latency_ms(outcome, outcome.p99_us)}  cpu srv {outcome.server_cpu:.0f}%"
            f" wrk {outcome.client_cpu:.0f}% other {outcome.other_cpu:.0f}%"
            f"  {fmt_cost(outcome.server_cost(wl), wl)}"
        )
        if outcome.idle_kib is not None:
            text += f"  {outcome.idle_kib:.2f} KiB/idle conn"
        if outcome.connect or outcome.timeout:
            text += f"  connect-err {outcome.connect} timeouts {outcome.timeout}"
    return text


def median_of(outcomes: Sequence[Outcome], wl: Workload) -> float | str:
    """Median over rounds, or the reason it cannot be trusted (any bad round taints it)."""
    failures = [o for o in outcomes if isinstance(o, str)]
    if failures:
        return failures[0]
    samples = [o for o in outcomes if isinstance(o, Sample)]
    bad = sum(s.bad for s in samples)
    if bad:
        return f"ERR ({bad} bad)"
    if not samples:
        return "no data"
    return statistics.median(s.value(wl) for s in samples)


def cpu_median(outcomes: Sequence[Outcome], wl: Workload) -> float | None:
    """Median server CPU cost (wl.cost_unit) over rounds; None unless every round is trusted."""
    samples = [o for o in outcomes if isinstance(o, Sample)]
    if len(samples) < len(outcomes) or any(s.bad for s in samples):
        return None
    values = [v for v in (s.server_cost(wl) for s in samples) if v is not None]
    return statistics.median(values) if values else None


def fmt_cost(us: float | None, wl: Workload) -> str:
    """Server CPU in µs per request (or per MiB), one decimal where it still means something."""
    if us is None:
        return "n/a"
    return f"{us:,.1f} {wl.cost_unit}" if us < 1000 else f"{us:,.0f} {wl.cost_unit}"


def ratio_text(ratio: float | None, bar: float | None = None) -> str:
    """`0.93x`, with PASS/FAIL against the bar when one is given."""
    if ratio is None:
        return "n/a"
    if bar is None:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x {'PASS' if ratio >= bar else 'FAIL'}"


def cell_marks(results: dict[tuple[str, str], list[Outcome]]) -> dict[tuple[str, str], str]:
    """† when wrk was saturated in most rounds (figure is a floor); ‡ when any round was noisy."""
    marks: dict[tuple[str, str], str] = {}
    for key, outcomes in results.items():
        samples = [o for o in outcomes if isinstance(o, Sample)]
        mark = ""
        if samples and 2 * sum(s.client_bound for s in samples) > len(samples):
            mark += CLIENT_BOUND_MARK
        if any(s.noisy for s in samples):
            mark += NOISY_MARK
        marks[key] = mark
    return marks


def medians_table(
    specs: Sequence[ServerSpec],
    status: dict[str, str | None],
    medians: dict[tuple[str, str], float | str],
    marks: dict[tuple[str, str], str],
    cpu: dict[tuple[str, str], float | None],
    workloads: Sequence[Workload] = WORKLOADS,
) -> list[str]:
    """Main table: per-server medians (with ratio to nginx) each followed by the server's
    CPU per request (per MiB on big-file rows), then aws/nginx and the bar."""
    head = ["Workload"]
    for spec in specs:
        head += [spec.name, f"{spec.name} server CPU"]
    head += ["aws/nginx", "bar"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl in workloads:
        nginx = medians.get((wl.key, "nginx"))
        cells = [wl.title]
        for spec in specs:
            cells.append(
                cell_text(wl, spec, status, medians, nginx) + marks.get((wl.key, spec.name), "")
            )
            cells.append(cpu_cell(wl, spec, medians, cpu))
        aws = medians.get((wl.key, "aws"))
        ratio = aws / nginx if isinstance(aws, float) and isinstance(nginx, float) else None
        both = marks.get((wl.key, "aws"), "") + marks.get((wl.key, "nginx"), "")
        flags = "".join(m for m in (CLIENT_BOUND_MARK, NOISY_MARK) if m in both)
        cells += [ratio_text(ratio, wl.bar) + (flags if ratio is not None else ""), f">= {wl.bar}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(peer_row(specs, medians, marks))
    return lines


def cell_text(
    wl: Workload,
    spec: ServerSpec,
    status: dict[str, str | None],
    medians: dict[tuple[str, str], float | str],
    nginx: float | str | None,
) -> str:
    """One median cell; servers skipped in preflight say why instead of staying blank."""
    if wl.aws_nginx_only and spec.name not in NO_PEERS:
        return "—"
    if status.get(spec.name):
        return f"{short_status(status[spec.name] or '')} (see notes)"
    value = medians.get((wl.key, spec.name), "no data")
    if isinstance(value, str):
        return value if value.startswith("ERR") else f"ERR ({value})"
    text = fmt_value(value, wl)
    if isinstance(nginx, float) and spec.name != "nginx":
        text += f" ({value / nginx:.2f}x)"
    return text


def cpu_cell(
    wl: Workload,
    spec: ServerSpec,
    medians: dict[tuple[str, str], float | str],
    cpu: dict[tuple[str, str], float | None],
) -> str:
    """Server CPU per request (or MiB) beside its figure; blank where the figure is missing."""
    if not isinstance(medians.get((wl.key, spec.name)), float):
        return "—" if wl.aws_nginx_only and spec.name not in ("aws", "nginx") else ""
    return fmt_cost(cpu.get((wl.key, spec.name)), wl)


def short_status(reason: str) -> str:
    """Head of a skip reason (e.g. `aws failed to start`) that fits in a table cell."""
    return reason.split(":", 1)[0]


def nginx_log_notes(ctx: Context) -> list[str]:
    """Surface nginx alerts (e.g. directio/aio refusing to work) that would skew its baseline."""
    log = ctx.tmp / "nginx" / "error.log"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    levels = ("[emerg]", "[alert]", "[crit]", "[error]")
    found = dict.fromkeys(
        re.sub(r"^\S+ \S+ ", "", ln) for ln in lines if any(lv in ln for lv in levels)
    )
    return [f"nginx error.log: {msg}" for msg in list(found)[:5]]


def peer_row(
    specs: Sequence[ServerSpec],
    medians: dict[tuple[str, str], float | str],
    marks: dict[tuple[str, str], str],
) -> str:
    """Extra row: aws keep-alive 1 KiB rate against the fastest Python peer's."""
    wl = WORKLOADS[0]
    peers = {s.name: medians.get((wl.key, s.name)) for s in specs if s.python_peer}
    valid = {name: v for name, v in peers.items() if isinstance(v, float)}
    aws = medians.get((wl.key, "aws"))
    ratio: float | None = None
    label = "no Python peer measured"
    flags = ""
    if valid:
        best = max(valid, key=lambda name: valid[name])
        label = f"fastest: {best}"
        if isinstance(aws, float):
            ratio = aws / valid[best]
            both = marks.get((wl.key, "aws"), "") + marks.get((wl.key, best), "")
            flags = "".join(m for m in (CLIENT_BOUND_MARK, NOISY_MARK) if m in both)
    cells = [
        f"aws vs fastest Python peer ({wl.key}; {label})",
        *["" for _ in range(2 * len(specs))],
        ratio_text(ratio, PEER_BAR) + flags,
        f">= {PEER_BAR}",
    ]
    return "| " + " | ".join(cells) + " |"


def raw_table(results: dict[tuple[str, str], list[Outcome]]) -> list[str]:
    """Every round's counters, so a median can always be traced back to its runs."""
    head = [
        "round",
        "workload",
        "server",
        "figure",
        "requests",
        "bytes",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "read err",
        "write err",
        "connect err",
        "timeouts",
        "server cpu %",
        "server CPU",
        "wrk cpu %",
        "other cpu %",
        "idle KiB/conn",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {wl.key: wl for wl in WORKLOADS}
    for (wkey, name), outcomes in results.items():
        wl = by_key[wkey]
        for rnd, outcome in enumerate(outcomes, 1):
            row = [str(rnd), wkey, name, describe(outcome, wl)]
            if isinstance(outcome, Sample):
                row += [
                    str(outcome.requests),
                    str(outcome.nbytes),
                    latency_ms(outcome, outcome.p50_us, unit=False),
                    latency_ms(outcome, outcome.p99_us, unit=False),
                    str(outcome.status),
                    str(outcome.read),
                    str(outcome.write),
                    str(outcome.connect),
                    str(outcome.timeout),
                    f"{outcome.server_cpu:.0f}",
                    fmt_cost(outcome.server_cost(wl), wl),
                    f"{outcome.client_cpu:.0f}",
                    f"{outcome.other_cpu:.0f}",
                    "" if outcome.idle_kib is None else f"{outcome.idle_kib:.2f}",
                ]
            else:
                row += [""] * (len(head) - 4)
            lines.append("| " + " | ".join(row) + " |")
    return lines


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo; results only compare within one machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tool_version(argv: list[str]) -> str:
    """First line of a tool's version banner (nginx and wrk print it on stderr)."""
    proc = run_cmd(argv)
    text = (proc.stderr + proc.stdout).strip().splitlines()
    first = text[0] if text else "unknown"
    first = re.sub(r"^nginx version:\s*", "", first)
    return re.sub(r"\s*Copyright.*$", "", first)


def pkg_version(name: str) -> str:
    """Installed distribution version, or `not installed`."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header_lines(ctx: Context, rounds: int, duration: int) -> list[str]:
    """Everything needed to judge whether two reports are comparable."""
    dists = ("aiohttp", "uvloop", "uvicorn", "starlette", "httptools", "granian")
    peers = ", ".join(f"{p} {pkg_version(p)}" for p in dists)
    return [
        "# aws HTTP file-serving benchmark",
        "",
        f"- Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); every server is one worker "
        f"pinned to CPU {SERVER_CPU}, wrk is one thread pinned to CPU {CLIENT_CPU}",
        f"- Kernel: {platform.release()}",
        f"- nginx: {tool_version(['nginx', '-v'])}; /dynamic/ uses `aio {ctx.nginx_aio}` "
        "+ `directio 4k`",
        f"- wrk: {tool_version(['wrk', '-v'])}",
        f"- Python {platform.python_version()}; {peers}",
        f"- Rounds: {rounds}, duration {duration} s per cell; medians reported; a figure "
        "counts only with zero non-2xx responses and zero read/write errors",
        f"- Files: random 1 KiB and 64 MiB under static/ and dynamic/ in a temp dir on "
        f"{fs_type(ctx.tmp)}; 64 MiB figures are MiB/s of response bytes",
    ]


def fs_type(path: Path) -> str:
    """File system of the temp root: O_DIRECT results mean nothing on tmpfs."""
    proc = run_cmd(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)])
    return proc.stdout.strip() or "unknown"


def write_report(
    out: Path,
    ctx: Context,
    specs: Sequence[ServerSpec],
    *,
    status: dict[str, str | None],
    results: dict[tuple[str, str], list[Outcome]],
    rounds: int,
    duration: int,
    workloads: Sequence[Workload] = WORKLOADS,
) -> tuple[dict[tuple[str, str], float | str], list[str]]:
    """Markdown report: header, medians with ratios, server notes, raw rounds.

    Returns the medians (for the chart) and the summary lines (echoed to the terminal).
    """
    by_key = {wl.key: wl for wl in WORKLOADS}
    medians = {key: median_of(outs, by_key[key[0]]) for key, outs in results.items()}
    summary = ["## Medians (ratio to nginx in parentheses)", ""]
    cpu = {key: cpu_median(outs, by_key[key[0]]) for key, outs in results.items()}
    summary += medians_table(specs, status, medians, cell_marks(results), cpu, workloads)
    summary += [
        "",
        f"{CLIENT_BOUND_MARK.strip()} wrk used >= {CLIENT_BOUND_PCT:.0f}% of its core: the "
        "figure is a floor set by the single-core client, and a ratio involving it is "
        "compressed towards 1.0. Server/client CPU per run is in the raw table.",
        "",
        "server CPU: the server's process-group CPU time during the run divided by the "
        "requests wrk completed (µs/req), or by the MiB it received on the 64 MiB rows "
        "(µs/MiB), median over rounds. It stays flat while the server is the bottleneck: a "
        "row where req/s is low but µs/req is too is wrk-bound, and 1e6 / µs/req is what "
        "one core of that server would sustain.",
        "",
        f"{NOISY_MARK.strip()} in at least one round, processes other than the server and wrk "
        f"used >= {NOISY_PCT:.0f}% of a core: the machine was shared and the figure is suspect; "
        "rerun on a quiet machine.",
    ]
    grown = growth_lines(results, medians, cpu)
    summary += ["", *grown] if grown else []
    summary += ["", "## Servers and notes", ""]
    for spec in specs:
        summary.append(f"- {spec.name}: {status.get(spec.name) or 'ok (bodies verified)'}")
    summary += [f"- {note}" for note in ctx.notes]
    lines = [*header_lines(ctx, rounds, duration), "", *summary, "", "## Raw rounds", ""]
    lines += raw_table(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return medians, summary
