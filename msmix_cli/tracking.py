"""Experiment tracking with the tools researchers already use: `--log tensorboard` writes event files into the run
directory, `--log mlflow` logs to an MLflow tracking URI (./mlruns by default). Both are optional extras
(`pip install 'msmix[tensorboard]'`, `'msmix[mlflow]'`); without them a run is refused before it starts.

Each epoch's history row (loss terms, validation metrics, learning rate) becomes scalars at step = epoch; the
recipe is logged as text (TensorBoard) or as parameters and an artifact (MLflow); the test metrics at the end.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from msmix_cli.errors import BadInput, first_line
from msmix_cli.training.events import EpochDone, Event, Listener, RunStarted

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # --log name -> the module it needs
DEFAULT_MLFLOW_URI = "./mlruns"


def check_trackers(names: Iterable[str]) -> None:
    """Refuse a tracker whose library is not installed, before any run directory is made."""
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise BadInput(f"--log {name} needs the {TRACKERS[name]} package: pip install 'msmix[{name}]'")


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a history row, without the epoch itself (it is the step)."""
    return {key: float(value) for key, value in row.items()
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def flat_params(recipe: Mapping[str, Any]) -> dict[str, str]:
    """`{"train": {"lr": 0.001}}` -> `{"train.lr": "0.001"}`: MLflow's parameters are flat strings."""
    return {f"{section}.{key}": str(value) for section, values in recipe.items() for key, value in values.items()}


class TensorBoardTracker:
    def __init__(self, run_dir: Path, recipe_text: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("recipe", "```yaml\n" + recipe_text + "\n```", global_step=0)

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=epoch)

    def finish(self, status: str, test_metrics: Mapping[str, Any], epoch: int) -> None:
        for key, value in scalars(test_metrics).items():
            self.writer.add_scalar(f"test_{key}", value, global_step=epoch)
        self.writer.add_text("status", status, global_step=epoch)
        self.writer.close()


class MlflowTracker:
    STATUS = {"complete": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}

    def __init__(self, run_name: str, recipe: Mapping[str, Any], recipe_text: str, uri: str) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        if "://" not in uri or uri.startswith("file:"):
            # MLflow 3 keeps its file store (a local ./mlruns, what needs no server) only on request.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = mlflow
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("msmix")
            self.run = mlflow.start_run(run_name=run_name)
            mlflow.log_params(flat_params(recipe))
            mlflow.log_text(recipe_text, "recipe.yaml")
        except MlflowException as error:
            raise BadInput(f"--log mlflow cannot log to {uri}: {first_line(error)}") from None

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        self.mlflow.log_metrics(scalars(row), step=epoch)

    def finish(self, status: str, test_metrics: Mapping[str, Any], epoch: int) -> None:
        self.mlflow.log_metrics({f"test_{k}": v for k, v in scalars(test_metrics).items()}, step=epoch)
        self.mlflow.end_run(self.STATUS[status])


class Tracking:
    """A listener for `fit` that opens the trackers when the run starts and feeds them every epoch.
    `finish` closes them with the run's status (complete, interrupted or failed) and its test metrics."""

    def __init__(self, names: list[str], mlflow_uri: str = DEFAULT_MLFLOW_URI) -> None:
        self.names = names
        self.mlflow_uri = mlflow_uri
        self.trackers: list[Any] = []
        self.last_epoch = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.start(Path(event.run_dir))
        elif isinstance(event, EpochDone):
            self.last_epoch = event.epoch
            for tracker in self.trackers:
                tracker.epoch(event.epoch, event.row)

    def start(self, run_dir: Path) -> None:
        import yaml

        text = (run_dir / "recipe.yaml").read_text(encoding="utf-8")
        recipe = yaml.safe_load(text)
        for name in self.names:
            self.trackers.append(TensorBoardTracker(run_dir, text) if name == "tensorboard"
                                 else MlflowTracker(run_dir.name, recipe, text, self.mlflow_uri))

    def finish(self, status: str, test_metrics: Mapping[str, Any] | None = None) -> None:
        for tracker in self.trackers:
            tracker.finish(status, test_metrics or {}, self.last_epoch)
        self.trackers = []


def both(first: Listener, second: Listener) -> Listener:
    """One listener that tells two."""
    def listener(event: Event) -> None:
        first(event)
        second(event)

    return listener
