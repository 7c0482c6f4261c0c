"""Plots of a load test: latency and throughput against concurrency.

Each function returns a ``matplotlib.figure.Figure`` (a notebook shows it inline when it
is the cell's last expression or passed to ``display``) and can save it as PNG::

    from ptdeploy.capacity import plots

    figs = plots.plot_load_test(result, out_dir="loadtest-out", p95_latency_target_s=2.0,
                                provisioned=(min_tp, max_tp))
    figs["latency"]; figs["throughput"]

Figures are closed in pyplot right after they are drawn: pyplot then neither keeps them
alive (memory across many runs) nor shows them a second time at the end of a notebook
cell. On a machine without a display matplotlib falls back to the Agg backend by itself;
``ptdeploy loadtest`` forces Agg.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ptdeploy.capacity.loadtest import LevelResult, LoadTestResult

__all__ = ["latency_figure", "plot_load_test", "save_figures", "throughput_figure"]

LATENCY_PNG = "latency_vs_concurrency.png"
THROUGHPUT_PNG = "throughput_vs_concurrency.png"
STREAMING_PNG = "time_to_first_token_vs_concurrency.png"


def _levels(data: LoadTestResult | Sequence[LevelResult]) -> list[LevelResult]:
    levels = list(getattr(data, "levels", data))
    return sorted(levels, key=lambda lv: lv.concurrency)


def _values(levels: Sequence[LevelResult], attr: str, scale: float = 1.0) -> list[float]:
    """Values for a line, NaN where undefined (matplotlib leaves a gap)."""
    return [math.nan if getattr(lv, attr) is None else getattr(lv, attr) * scale for lv in levels]


def _new_figure(title: str) -> tuple[Figure, object]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    plt.close(fig)  # see module docstring: returned, not left to pyplot
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _concurrency_axis(ax: object, levels: Sequence[LevelResult]) -> None:
    xs = [lv.concurrency for lv in levels]
    if len(xs) > 1 and min(xs) >= 1 and max(xs) / min(xs) >= 4:
        ax.set_xscale("log", base=2)  # a 1,2,4,8 ladder evenly spaced
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("concurrency (parallel requests)")


def _title(data: object, what: str) -> str:
    endpoint = getattr(data, "endpoint", None)
    return f"{endpoint}: {what}" if endpoint else what


def latency_figure(
    data: LoadTestResult | Sequence[LevelResult], *, p95_latency_target_s: float | None = None
) -> Figure:
    """p50/p95/p99 latency (successful requests) against concurrency."""
    levels = _levels(data)
    fig, ax = _new_figure(_title(data, "latency vs concurrency"))
    xs = [lv.concurrency for lv in levels]
    for attr, label, style in (
        ("p50_latency_s", "p50", "o-"),
        ("p95_latency_s", "p95", "s-"),
        ("p99_latency_s", "p99", "^-"),
    ):
        ax.plot(xs, _values(levels, attr), style, label=label)
    if p95_latency_target_s is not None:
        ax.axhline(p95_latency_target_s, color="red", linestyle="--", label="p95 target")
    _concurrency_axis(ax, levels)
    ax.set_ylabel("latency (s)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    return fig


def throughput_figure(
    data: LoadTestResult | Sequence[LevelResult],
    *,
    provisioned: tuple[float, float] | None = None,
) -> Figure:
    """Total and output tokens/s (left axis) and requests/s (right axis) against
    concurrency; ``provisioned=(min, max)`` draws the provisioned tokens/s band."""
    levels = _levels(data)
    fig, ax = _new_figure(_title(data, "throughput vs concurrency"))
    xs = [lv.concurrency for lv in levels]
    ax.plot(xs, _values(levels, "total_tokens_per_second"), "o-", label="total tokens/s")
    ax.plot(xs, _values(levels, "output_tokens_per_second"), "s-", label="output tokens/s")
    if provisioned is not None:
        low, high = provisioned
        ax.axhline(high, color="red", linestyle="--", label="max provisioned")
        ax.axhline(low, color="orange", linestyle=":", label="min provisioned")
    _concurrency_axis(ax, levels)
    ax.set_ylabel("tokens/s")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(xs, _values(levels, "requests_per_second"), "d--", color="gray", label="requests/s")
    right.set_ylabel("requests/s")
    right.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper left")
    fig.tight_layout()
    return fig


def streaming_figure(data: LoadTestResult | Sequence[LevelResult]) -> Figure:
    """Streamed load tests: p50/p95 time to first token (left axis) and the mean
    inter-token latency (right axis, ms) against concurrency."""
    levels = _levels(data)
    fig, ax = _new_figure(_title(data, "time to first token vs concurrency"))
    xs = [lv.concurrency for lv in levels]
    ax.plot(xs, _values(levels, "p50_time_to_first_token_s"), "o-", label="p50 TTFT")
    ax.plot(xs, _values(levels, "p95_time_to_first_token_s"), "s-", label="p95 TTFT")
    _concurrency_axis(ax, levels)
    ax.set_ylabel("time to first token (s)")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(
        xs,
        _values(levels, "mean_inter_token_latency_s", 1000.0),
        "d--",
        color="gray",
        label="inter-token latency (ms)",
    )
    right.set_ylabel("inter-token latency (ms)")
    right.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper left")
    fig.tight_layout()
    return fig


def save_figures(
    result: LoadTestResult | Sequence[LevelResult],
    out_dir: str | os.PathLike[str],
    *,
    p95_latency_target_s: float | None = None,
    provisioned: tuple[float, float] | None = None,
) -> dict[str, Path]:
    """Write both plots as PNG into ``out_dir``; returns their paths by name."""
    figs = plot_load_test(
        result, p95_latency_target_s=p95_latency_target_s, provisioned=provisioned
    )
    return _save(figs, Path(out_dir))


def plot_load_test(
    result: LoadTestResult | Sequence[LevelResult],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    p95_latency_target_s: float | None = None,
    provisioned: tuple[float, float] | None = None,
) -> dict[str, Figure]:
    """The figures by name (``latency``, ``throughput``, and ``streaming`` for a streamed
    load test); saved as PNG when ``out_dir``."""
    figs = {
        "latency": latency_figure(result, p95_latency_target_s=p95_latency_target_s),
        "throughput": throughput_figure(result, provisioned=provisioned),
    }
    if any(lv.p50_time_to_first_token_s is not None for lv in _levels(result)):
        figs["streaming"] = streaming_figure(result)
    if out_dir is not None:
        _save(figs, Path(out_dir))
    return figs


def _save(figs: dict[str, Figure], out: Path) -> dict[str, Path]:
    """PNG files written under a temporary name then renamed (never half-written)."""
    out.mkdir(parents=True, exist_ok=True)
    names = {"latency": LATENCY_PNG, "throughput": THROUGHPUT_PNG, "streaming": STREAMING_PNG}
    paths = {name: out / names[name] for name in figs}
    for name, path in paths.items():
        tmp = path.with_name(f".{path.name}.tmp")
        figs[name].savefig(tmp, format="png")
        os.replace(tmp, path)
    return paths
