"""Training curves as a picture: train and validation loss, validation MAE per epoch, the best epoch marked.

One run's `curves.png` is written at the end of training; `msmix plot RUN...` overlays several runs.
matplotlib is an optional extra: without it no picture is drawn and nothing else changes.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from msmix_cli.errors import BadInput
from msmix_cli.io import atomic_path
from msmix_cli.plots import require_matplotlib

CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class Curves:
    label: str
    epochs: list[int]
    train_loss: list[float]
    train_task: list[float]  # the task term alone, comparable with the validation loss
    valid_loss: list[float]
    valid_mae: list[float]
    best_epoch: int | None


def curves_from_history(label: str, rows: Sequence[Mapping[str, Any]]) -> Curves:
    """A run's history rows (history.csv's, or the training loop's own) as curves."""
    def column(key: str) -> list[float]:
        return [_number(row.get(key)) for row in rows]

    epochs = [int(_number(row.get("epoch"))) for row in rows]
    best = [epoch for epoch, row in zip(epochs, rows) if str(row.get("best")) == "True"]
    return Curves(label, epochs, column("train_loss"), column("train_task"), column("valid_loss"), column("valid_MAE"),
                  best[-1] if best else None)


def read_history(run: Path) -> Curves:
    path = Path(run) / "history.csv"
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise BadInput(f"{run} has no history.csv: not an msmix run, or one that never finished an epoch") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BadInput(f"cannot read {path}: {error}") from None
    if not rows or "epoch" not in rows[0]:
        raise BadInput(f"{path} holds no epoch")
    return curves_from_history(Path(run).name, rows)


def plot_curves(runs: Sequence[Curves], path: Path, title: str) -> Path:
    """Two panels, loss and validation MAE against the epoch; a run's best epoch is a larger marker on both."""
    require_matplotlib(path.name)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axis, mae_axis = figure.subplots(1, 2)
    single = len(runs) == 1
    for index, run in enumerate(runs):
        color = f"C{index}"
        name = "" if single else f"{run.label}: "
        loss_axis.plot(run.epochs, run.train_loss, color=color, linestyle=":", label=f"{name}train loss (all terms)")
        if single and any(math.isfinite(v) for v in run.train_task) and run.train_task != run.train_loss:
            loss_axis.plot(run.epochs, run.train_task, color="C2", linestyle="--", label="train task loss")
        loss_axis.plot(run.epochs, run.valid_loss, color=color, marker="o", markersize=3, label=f"{name}valid loss")
        mae_axis.plot(run.epochs, run.valid_mae, color=color, marker="o", markersize=3, label=f"{run.label}")
        if run.best_epoch is not None and run.best_epoch in run.epochs:
            at = run.epochs.index(run.best_epoch)
            loss_axis.plot([run.best_epoch], [run.valid_loss[at]], marker="*", markersize=14, color=color, linestyle="none")
            mae_axis.plot([run.best_epoch], [run.valid_mae[at]], marker="*", markersize=14, color=color, linestyle="none",
                          label=f"best epoch {run.best_epoch}" if single else None)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    mae_axis.set(xlabel="epoch", ylabel="MAE", title="validation MAE (★ best epoch: the checkpoint kept)")
    for axis in (loss_axis, mae_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return path


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_missing_rates(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], path: Path) -> Path:
    """Each metric against the missing rate, one line per run, error bars the std over the draws."""
    from msmix_cli.report import display_name

    require_matplotlib(path.name)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.8 * len(metrics), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    runs = list(dict.fromkeys(row["run"] for row in rows))
    for axis, metric in zip(axes, metrics):
        for index, run in enumerate(runs):
            own = [row for row in rows if row["run"] == run]
            std = [0.0 if not math.isfinite(_number(row.get(f"{metric}_std"))) else _number(row.get(f"{metric}_std")) for row in own]
            axis.errorbar([row["missing_rate"] for row in own], [_number(row.get(metric)) for row in own], yerr=std,
                          marker="o", markersize=4, capsize=3, color=f"C{index}", label=run)
        axis.set(xlabel="missing rate (each modality, each sample)", title=display_name(metric))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    draws = max((int(row["draws"]) for row in rows), default=1)
    figure.suptitle(f"Missing-modality robustness: mean ± std over {draws} draw(s)")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return path
