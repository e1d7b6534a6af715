"""results.png: one panel per workload, bars relative to nginx."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .preflight import INSTALL_HINT
from .servers import ServerSpec, servers_for
from .workloads import WORKLOADS, Workload


def write_chart(
    png: Path,
    specs: Sequence[ServerSpec],
    medians: dict[tuple[str, str], float | str],
    workloads: Sequence[Workload] = WORKLOADS,
) -> str:
    """Bars per server normalised to nginx = 1.0; skipped (and said so) without matplotlib."""
    try:
        # Imported lazily: matplotlib is optional and only the chart needs it.
        importlib.import_module("matplotlib").use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return f"matplotlib not installed: skipped {png.name} ({INSTALL_HINT})"
    fig, axes = plt.subplots(1, len(workloads), figsize=(3.6 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads, strict=True):
        draw_workload(ax, wl, specs, medians)
    fig.suptitle("Median throughput relative to nginx (1 worker on CPU 0, wrk on CPU 1)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return f"chart written to {png}"


def draw_workload(
    ax: Any,
    wl: Workload,
    specs: Sequence[ServerSpec],
    medians: dict[tuple[str, str], float | str],
) -> None:
    """One subplot: every server keeps its slot, missing ones say n/a, aws's bar is dotted."""
    nginx = medians.get((wl.key, "nginx"))
    names = [s.name for s in servers_for(wl, specs)]
    ratios = [relative(medians.get((wl.key, n)), nginx) for n in names]
    heights = [r or 0.0 for r in ratios]
    colors = ["tab:red" if n == "aws" else "tab:blue" for n in names]
    bars = ax.bar(range(len(names)), heights, color=colors)
    for bar, ratio in zip(bars, ratios, strict=True):
        label = "n/a" if ratio is None else f"{ratio:.2f}"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(1.0, linestyle="--", color="gray", label="nginx = 1.0")
    ax.axhline(wl.bar, linestyle=":", color="tab:red", label=f"aws bar {wl.bar}")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_xlim(-0.75, max(len(names), 2) - 0.25)
    ax.set_ylim(0, 1.3 * max([*heights, 1.0, wl.bar]))  # headroom for labels and legend
    ax.set_title(wl.title, fontsize=9)
    ax.set_ylabel("relative to nginx")
    ax.legend(fontsize=7, loc="upper right")


def relative(value: float | str | None, nginx: float | str | None) -> float | None:
    """value/nginx when both medians are trusted numbers, else None (drawn as n/a)."""
    if isinstance(value, float) and isinstance(nginx, float) and nginx > 0:
        return value / nginx
    return None
