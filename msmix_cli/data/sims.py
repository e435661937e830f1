"""CH-SIMS' own label table, `label.csv`: ids, splits and the unimodal (T, A, V) labels of every clip."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from msmix_cli.errors import BadInput

COLUMNS = ("video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ClipLabels:
    split: str
    label: float
    unimodal: dict[str, float]  # "T", "A", "V" -> score in [-1, 1]


def clip_id(video_id: str, clip: str) -> str:
    """The sample id MMSA uses in its pickles for a CH-SIMS clip."""
    return f"{video_id}$_${clip}"


def read_label_csv(path: Path) -> dict[str, ClipLabels]:
    """Every clip of `label.csv` by its MMSA id; a missing column, a bad number or an unknown split is BadInput."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else ()
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BadInput(f"{path}: not a readable label table ({error})") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(missing)}; CH-SIMS' label.csv has {', '.join(COLUMNS)}")
    return {clip_id(row["video_id"], row["clip_id"]): _clip(path, number, row) for number, row in enumerate(rows, 2)}


def _clip(path: Path, line: int, row: dict[str, str]) -> ClipLabels:
    if row["mode"] not in SPLITS:
        raise BadInput(f"{path}:{line}: mode {row['mode']!r} is none of {', '.join(SPLITS)}")
    return ClipLabels(row["mode"], _score(path, line, row, "label"),
                      {m: _score(path, line, row, f"label_{m}") for m in ("T", "A", "V")})


def _score(path: Path, line: int, row: dict[str, str], column: str) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise BadInput(f"{path}:{line}: {column} {row[column]!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > 1.0:
        raise BadInput(f"{path}:{line}: {column} {value} lies outside [-1, 1]")
    return value
