"""Plots: real PNG files and Figures with the lines a reader expects."""

from __future__ import annotations

import struct

import matplotlib
import pytest

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from ptdeploy.capacity import plots  # noqa: E402
from ptdeploy.capacity.loadtest import LevelResult  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def level(
    concurrency: int, p50: float | None, tokens: float | None, errors: int = 0
) -> LevelResult:
    ok = p50 is not None
    return LevelResult(
        concurrency=concurrency,
        requests=10,
        errors=errors,
        duration_s=5.0,
        requests_per_second=2.0 * concurrency if ok else 0.0,
        output_tokens_per_second=tokens * 0.7 if tokens is not None else None,
        total_tokens_per_second=tokens,
        p50_latency_s=p50,
        p95_latency_s=p50 * 1.5 if ok else None,
        p99_latency_s=p50 * 2 if ok else None,
        mean_latency_s=p50,
        stop_reason="requests",
    )


LEVELS = [level(1, 0.2, 100.0), level(2, 0.25, 190.0), level(4, 0.4, 350.0), level(8, 0.9, 400.0)]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_figures_have_the_expected_series():
    latency = plots.latency_figure(LEVELS, p95_latency_target_s=0.5)
    assert isinstance(latency, Figure)
    (ax,) = latency.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["p50", "p95", "p99", "p95 target"]
    p95 = ax.get_lines()[1]
    assert list(p95.get_xdata()) == [1, 2, 4, 8]
    assert list(p95.get_ydata()) == pytest.approx([0.3, 0.375, 0.6, 1.35])
    assert ax.get_xlabel().startswith("concurrency")

    throughput = plots.throughput_figure(LEVELS, provisioned=(980, 1960))
    left, right = throughput.axes
    assert [line.get_label() for line in left.get_lines()] == [
        "total tokens/s",
        "output tokens/s",
        "max provisioned",
        "min provisioned",
    ]
    assert list(left.get_lines()[0].get_ydata()) == [100.0, 190.0, 350.0, 400.0]
    assert [line.get_label() for line in right.get_lines()] == ["requests/s"]


def test_pngs_are_written_and_valid(tmp_path):
    paths = plots.save_figures(LEVELS, tmp_path / "plots")
    assert set(paths) == {"latency", "throughput"}
    for path in paths.values():
        data = path.read_bytes()
        width, height = png_size(data)
        assert (width, height) == (770, 462)  # 7 x 4.2 inches at 110 dpi
        assert len(data) > 10_000  # lines, labels and legend, not an empty canvas
    assert not list((tmp_path / "plots").glob(".*.tmp"))


def test_failed_level_leaves_a_gap_instead_of_crashing(tmp_path):
    levels = [level(1, 0.2, 100.0), level(2, None, None, errors=10)]
    figs = plots.plot_load_test(levels, out_dir=tmp_path)
    ys = figs["latency"].axes[0].get_lines()[0].get_ydata()
    assert ys[0] == pytest.approx(0.2) and ys[1] != ys[1]  # NaN: matplotlib skips it
    assert (tmp_path / plots.LATENCY_PNG).read_bytes()[:8] == PNG_SIGNATURE
    assert (tmp_path / plots.THROUGHPUT_PNG).read_bytes()[:8] == PNG_SIGNATURE
