"""A run directory: resolved recipe, checkpoints, history, metrics and a status marker, each written atomically.

    runs/<run>/ recipe.yaml  run.json (status: running | complete | failed | interrupted, versions, device,
                wall time)  checkpoint.pt (best validation)  last.pt (resume point, removed once complete unless
                train.keep_last)  history.csv  metrics.json

A process that trains into a run directory holds an OS lock on the folder itself (flock) until it exits: a
second process that wants the same folder is refused, and the lock never outlives its holder, not even a kill -9.
A folder left empty when its run is refused (bad data, no such device) is removed when the lock is released.
"""

from __future__ import annotations

import contextlib

import fcntl
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msmix_cli import __version__
from msmix_cli.errors import BadInput, first_line
from msmix_cli.io import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from msmix_cli.recipes import Recipe, build_recipe, dump_recipe, read_yaml

RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"
_LOCKS: dict[Path, int] = {}  # run folder -> the descriptor holding its lock (kept out of RunDir, which is pickled)
_MADE: dict[Path, list[Path]] = {}  # run folder -> the folders `claim` created for it, innermost first


def folder_name(name: str) -> str:
    """`--name` as given, when it names one folder: a run is written inside `--out`, never elsewhere."""
    if not name or name in (".", "..") or "/" in name or (os.altsep and os.altsep in name) or "\0" in name:
        raise BadInput(f"--name {name!r} is not a folder name; the run goes inside --out (give --out for another place)")
    return name


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
    def claim(cls, out: Path, name: str, *, numbered: bool = False) -> RunDir:
        """The run folder `out/name`, created if missing and locked for this process, the temporary files of
        its dead writers removed. `numbered` (a default name): never an existing folder; name-2, name-3, ...
        instead, so that two runs started in the same second get a folder each."""
        base = Path(out) / folder_name(name)
        new_run_folder = numbered or not base.exists()
        new_parents = [folder for folder in (base.parent, *base.parent.parents) if not folder.exists()]
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            path = base
            for number in range(2, 10_000) if numbered else ():
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    path = base.with_name(f"{base.name}-{number}")
            path.mkdir(exist_ok=True)
        except OSError as error:
            raise BadInput(f"cannot create run directory {base}: {error.strerror or error}") from None
        run = cls(path)
        run.take()
        _MADE[run.path] = [run.path] * new_run_folder + new_parents
        return run

    @classmethod
    def create(cls, out: Path, name: str) -> RunDir:
        """A new, empty run folder `out/name`, locked for this process."""
        run = cls.claim(out, name)
        if run.holds_anything():
            run.release()
            raise BadInput(f"run directory {run.path} already exists; choose another --name or remove it")
        return run

    def take(self) -> None:
        """Lock the folder for this process, then remove what writers that died here left (no writer is alive)."""
        self.lock()
        remove_stale_temporaries(self.path, every=True)

    def lock(self) -> None:
        """Hold the folder's lock until `release` or the end of this process; BadInput if another process holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise BadInput(f"cannot open run directory {self.path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(f"run directory {self.path} is in use by another msmix process; wait for it to end or "
                           "choose another --name") from None
        except OSError:  # a file system without locks (some network ones): the run goes on, unguarded
            os.close(fd)
            return
        _LOCKS[self.path] = fd

    def release(self) -> None:
        fd = _LOCKS.pop(self.path, None)
        if fd is None:
            return
        for folder in _MADE.pop(self.path, []):  # a refused run leaves no empty folder behind
            with contextlib.suppress(OSError):
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
        os.close(fd)

    @property
    def started(self) -> bool:
        """Whether a run began here: its recipe is saved (the first file a run writes)."""
        return self.recipe_file.is_file()

    def holds_anything(self) -> bool:
        return any(self.path.iterdir())

    @property
    def resumable(self) -> bool:
        """Started, not complete: `train --resume` can continue it. Without run.json the run was stopped while
        starting, before any epoch: resuming it starts it from its saved recipe."""
        return self.started and (not self.info_file.exists() or self.info().get("status") in (RUNNING, FAILED, INTERRUPTED))

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
        """Mark the run as running; a resumed run keeps its recipe and records the epoch it continued from (a run
        stopped before its run.json was written gets it now)."""
        if resumed_from is not None and "started" in self.info():
            self.update_info(status=RUNNING, resumed_from_epoch=resumed_from)
            return
        if not self.started:
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
