"""A run directory: resolved recipe, checkpoints, history, metrics and a status marker, each written atomically.

    runs/<run>/ recipe.yaml  run.json (status: running | complete | failed, versions, device, wall time)
                checkpoint.pt (best validation)  last.pt (resume point, removed once complete unless train.keep_last)
                history.csv  metrics.json
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msmix_cli import __version__
from msmix_cli.errors import BadInput, first_line
from msmix_cli.io import atomic_torch_save, atomic_write_text
from msmix_cli.recipes import Recipe, build_recipe, dump_recipe, read_yaml

RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    recipe_file = property(lambda self: self.path / "recipe.yaml")
    info_file = property(lambda self: self.path / "run.json")
    best_file = property(lambda self: self.path / "checkpoint.pt")
    last_file = property(lambda self: self.path / "last.pt")
    history_file = property(lambda self: self.path / "history.csv")
    metrics_file = property(lambda self: self.path / "metrics.json")

    @classmethod
    def create(cls, out: Path, name: str) -> RunDir:
        """A new run directory at out/name. Nothing is made on disk yet: the folder appears with the run's first
        file (`start`), so a run refused for its data or device leaves no empty directory behind."""
        path = Path(out) / name
        if path.exists() and not path.is_dir():
            raise BadInput(f"cannot create run directory {path}: a file of that name exists")
        if path.is_dir() and any(path.iterdir()):
            raise BadInput(f"run directory {path} already exists; choose another --name or remove it")
        return cls(path)

    @property
    def resumable(self) -> bool:
        """Started, not complete, with its recipe saved: `train --resume` can continue it."""
        return self.recipe_file.is_file() and self.info().get("status") in (RUNNING, FAILED, INTERRUPTED)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing, complete run (what `evaluate` reads); anything else is a one-line error."""
        run = cls(Path(path))
        if not run.path.is_dir():
            raise BadInput(f"no run directory at {run.path}")
        if not run.recipe_file.is_file() or not run.best_file.is_file():
            raise BadInput(f"{run.path} is not a complete msmix run (recipe.yaml or checkpoint.pt missing)")
        status = run.info().get("status")
        if status != COMPLETE:
            raise BadInput(f"run {run.path} is {status or 'unmarked'}, not complete; its checkpoint may be partial")
        return run

    def info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def update_info(self, **values: Any) -> None:
        atomic_write_text(self.info_file, json.dumps({**self.info(), **values}, indent=2, default=str) + "\n")

    def start(self, recipe: Recipe, command: str, device: torch.device, resumed_from: int | None = None) -> None:
        """Mark the run as running; a resumed run keeps its recipe and records the epoch it continued from."""
        if resumed_from is not None:
            self.update_info(status=RUNNING, resumed_from_epoch=resumed_from)
            return
        atomic_write_text(self.recipe_file, dump_recipe(recipe, command))
        self.update_info(
            status=RUNNING,
            command=command,
            seed=recipe.train.seed,
            device=str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            versions=versions(),
            git_commit=git_commit(),
        )

    def recipe(self) -> Recipe:
        return build_recipe(read_yaml(self.recipe_file))

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        header = list(dict.fromkeys(key for row in rows for key in row))  # a warm-up epoch has no mixing columns
        lines = [",".join(header)] + [",".join(_csv_cell(row.get(k)) for k in header) for row in rows]
        atomic_write_text(self.history_file, "\n".join(lines) + "\n")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.metrics_file, json.dumps(metrics, indent=2, allow_nan=False, default=_json_default) + "\n")

    def save_best(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.best_file)

    def save_last(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.last_file)

    def load_best(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.best_file, device)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """State dicts only (`weights_only=True`): a checkpoint from elsewhere cannot run code when loaded."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise BadInput(f"checkpoint not found: {path}") from None
    except Exception as error:  # torch raises many kinds for a corrupt or hostile file
        raise BadInput(f"cannot load checkpoint {path}: {first_line(error)}") from None


def versions() -> dict[str, str]:
    return {"msmix": __version__, "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _csv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
