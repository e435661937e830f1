"""Figures for a slide. matplotlib is an optional extra: without it, PlotUnavailable says how to get it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from msmix_cli.ablation import REFERENCE, variant_label
from msmix_cli.errors import MsmixError
from msmix_cli.io import atomic_path
from msmix_cli.metrics import HIGHER_IS_BETTER
from msmix_cli.report import DISPLAY_NAMES, READING_ORDER as PLOT_METRICS

# Each dataset shows the first four metrics of READING_ORDER its metric set has.
PANELS_PER_DATASET = 4
MARKERS = "oDs^v<>Ph*X"


class PlotUnavailable(MsmixError):
    """No figure can be drawn here; everything else still works."""


def require_matplotlib(figure: str = "ablation.png") -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"matplotlib is not installed, so no {figure}: pip install 'msmix[plot]'") from None


def plot_ablation(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    """Key metrics per variant, mean ± std over seeds: one panel per metric (a row per dataset), the
    backbones along x, one marker per variant. Points with error bars rather than bars, because the
    differences between variants are small next to a bar's height from zero."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(row["dataset"] for row in summary))
    panels = {d: chosen_metrics({row["metric"] for row in summary if row["dataset"] == d}) for d in datasets}
    columns = max((len(m) for m in panels.values()), default=1)
    figure = Figure(figsize=(3.6 * columns, 3.2 * len(datasets) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(datasets), columns, squeeze=False)
    variants = list(dict.fromkeys(row["variant"] for row in summary))
    for r, dataset in enumerate(datasets):
        rows = [row for row in summary if row["dataset"] == dataset]
        for c in range(columns):
            if c < len(panels[dataset]):
                draw_panel(axes[r][c], rows, panels[dataset][c], variants, dataset)
            else:
                axes[r][c].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 7), frameon=False)
    seeds = max((row["n"] for row in summary), default=0)
    figure.suptitle(f"Ablation: test metrics of the best-validation checkpoint, mean ± std over {seeds} seeds")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=150)
    return path


def chosen_metrics(available: set[str]) -> list[str]:
    return [m for m in PLOT_METRICS if m in available][:PANELS_PER_DATASET]


def draw_panel(ax: Any, rows: Sequence[dict[str, Any]], metric: str, variants: list[str], dataset: str) -> None:
    backbones = list(dict.fromkeys(row["backbone"] for row in rows))
    width = 0.8 / max(len(variants), 1)
    for v, variant in enumerate(variants):
        points = [(b, row) for b, backbone in enumerate(backbones) for row in rows
                  if row["backbone"] == backbone and row["variant"] == variant and row["metric"] == metric]
        if not points:
            continue
        x = [b - 0.4 + width * (v + 0.5) for b, _ in points]
        mean = [row["mean"] for _, row in points]
        std = [0.0 if not math.isfinite(row["std"]) else row["std"] for _, row in points]
        full = variant == REFERENCE
        if full:  # a dashed line at the full model's mean, to read every variant against it
            ax.hlines(mean, [b - 0.4 for b, _ in points], [b + 0.4 for b, _ in points], colors="black",
                      linestyles="dashed", linewidth=0.8, alpha=0.5)
        ax.errorbar(x, mean, yerr=std, fmt=MARKERS[v % len(MARKERS)], capsize=3, markersize=7 if full else 5,
                    color="black" if full else f"C{v}", label=variant_label(variant), zorder=3 if full else 2)
    ax.set_xticks(range(len(backbones)), backbones)
    ax.set_xlim(-0.5, len(backbones) - 0.5)
    arrow = "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"
    ax.set_title(f"{dataset}: {DISPLAY_NAMES.get(metric, metric)} {arrow}")
    ax.grid(axis="y", alpha=0.3)
