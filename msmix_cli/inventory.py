"""What is on disk: the runs under a folder and the caches under a data root, with their sizes; and clearing
the synthetic caches, which are regenerated on demand.

Reads only JSON and YAML files and file sizes: no checkpoint, no cache is opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msmix_cli.naming import mix_label

RUN_DEPTH = 3  # runs/<run>, runs/<ablation>/<run>, runs/<group>/<ablation>/<run>
SYNTH_PREFIX = "synth-"


@dataclass(frozen=True)
class RunEntry:
    name: str  # its path under the runs folder
    status: str
    dataset: str | None
    backbone: str | None
    mix: str | None
    seed: int | None
    test_mae: float | None  # from metrics.json: raw, the best-validation checkpoint's
    size_bytes: int


@dataclass(frozen=True)
class CacheEntry:
    file: str  # its name under <data-root>/cache
    dataset: str
    setting: str | None  # None for a synthetic cache (one per --samples and data seed)
    size_bytes: int


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links not followed)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(folder) / name).lstat().st_size
            except OSError:  # removed while walking
                continue
    return total


def find_runs(out: Path) -> list[RunEntry]:
    """Every run directory (a folder with run.json) under `out`, up to RUN_DEPTH levels down, sorted by path."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [path.parent for depth in range(1, RUN_DEPTH + 1) for path in out.glob("/".join(["*"] * depth) + "/run.json")]
    return [read_run(out, folder) for folder in sorted(found)]


def read_run(out: Path, folder: Path) -> RunEntry:
    info = _json(folder / "run.json")
    recipe = _yaml(folder / "recipe.yaml")
    metrics = _json(folder / "metrics.json").get("metrics") or {}
    data, model, train = (recipe.get(k) if isinstance(recipe.get(k), dict) else {} for k in ("data", "model", "train"))
    mix = recipe.get("mix") if isinstance(recipe.get("mix"), dict) else None
    mae = metrics.get("MAE")
    return RunEntry(name=str(folder.relative_to(out)), status=str(info.get("status", "unmarked")),
                    dataset=data.get("dataset"), backbone=model.get("name"), mix=mix_label(mix) if mix else None,
                    seed=train.get("seed"), test_mae=mae if isinstance(mae, (int, float)) else None,
                    size_bytes=size_of(folder))


def list_caches(data_root: Path) -> list[CacheEntry]:
    """The caches under <data-root>/cache, named `<dataset>-<setting>.h5` or `synth-<digest>.h5`."""
    from msmix_cli.data.cache import IMPORTABLE_SETTINGS  # here: the cache module loads h5py, `--help` need not

    folder = Path(data_root) / "cache"
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.glob("*.h5")):
        name, _, setting = path.stem.rpartition("-")
        if path.name.startswith(SYNTH_PREFIX):
            entries.append(CacheEntry(path.name, "synth", None, path.stat().st_size))
        elif name and setting in IMPORTABLE_SETTINGS:
            entries.append(CacheEntry(path.name, name, setting, path.stat().st_size))
    return entries


def clean_synth_caches(data_root: Path, dry_run: bool = False) -> list[CacheEntry]:
    """Remove every synthetic cache (each is regenerated, identical, by the next run that needs it)."""
    removed = [entry for entry in list_caches(data_root) if entry.setting is None]
    if not dry_run:
        for entry in removed:
            (Path(data_root) / "cache" / entry.file).unlink(missing_ok=True)
    return removed


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _yaml(path: Path) -> dict[str, Any]:
    import yaml  # here, not at the top: every `--help` imports this module, and only `msmix ls` reads YAML

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
