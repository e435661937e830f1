"""What is in a data file: an MMSA pickle, an SDK `.csd` or an msmix cache, key by key.

For every array: shape, dtype, NaN and inf counts, the range of its finite values, and sequence-length
statistics where lengths apply (`*_lengths` arrays, rows per video in a `.csd`, valid steps of a padded
feature array). Large arrays are read in slices, so inspecting a multi-GB file needs little memory.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from msmix_cli.data.cache import FORMAT as CACHE_FORMAT, damage_as_bad_input
from msmix_cli.data.mmsa import last_nonzero_step, load_pickle
from msmix_cli.data.mmsdk import Csd
from msmix_cli.errors import BadInput, first_line
from msmix_cli.types import MODALITIES

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SLICE_ROWS = 256


@dataclass
class Entry:
    key: str
    shape: tuple[int, ...]
    dtype: str
    nan: int | None = None  # None: not a float array
    inf: int | None = None
    value_range: tuple[float, float] | None = None  # min and max of the finite values
    lengths: dict[str, float] | None = None  # min, mean, max


@dataclass
class Inspection:
    path: Path
    kind: str  # "mmsa pickle", "csd" or "msmix cache"
    summary: dict[str, Any] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)


def inspect_file(path: Path) -> Inspection:
    """Describe a pickle, a `.csd` or a cache file; anything else (or a damaged file) is BadInput."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            signature = handle.read(len(HDF5_SIGNATURE))
    except OSError as error:
        raise BadInput(f"{path}: cannot read it ({error.strerror or error})") from None
    if signature != HDF5_SIGNATURE:
        return _inspect_pickle(path)
    try:
        hdf5 = h5py.File(path, "r")
    except OSError as error:
        raise BadInput(f"{path}: not a readable HDF5 file, perhaps truncated ({first_line(error)})") from None
    with damage_as_bad_input(path), hdf5:
        if _attribute(hdf5.attrs.get("format")) == CACHE_FORMAT:
            return _inspect_cache(path, hdf5)
    return _inspect_csd(path)


class _Stats:
    """Accumulates NaN/inf counts and the finite range over slices of one array."""

    def __init__(self, dtype: np.dtype) -> None:
        self.numeric = dtype.kind in "biuf"
        self.floating = dtype.kind == "f"
        self.nan = self.inf = 0
        self.low, self.high = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        if not self.numeric or values.size == 0:
            return
        finite = np.isfinite(values) if self.floating else np.ones(values.shape, bool)
        if self.floating:
            self.nan += int(np.count_nonzero(np.isnan(values)))
            self.inf += int(np.count_nonzero(np.isinf(values)))
        if finite.any():
            self.low = min(self.low, float(values[finite].min()))
            self.high = max(self.high, float(values[finite].max()))

    def entry(self, key: str, shape: tuple[int, ...], dtype: np.dtype, lengths: np.ndarray | None = None) -> Entry:
        found = self.numeric and self.low <= self.high
        return Entry(key, tuple(int(s) for s in shape), str(dtype),
                     self.nan if self.floating else None, self.inf if self.floating else None,
                     (self.low, self.high) if found else None,
                     _length_stats(lengths) if lengths is not None and lengths.size else None)


def _length_stats(lengths: np.ndarray) -> dict[str, float]:
    return {"min": float(lengths.min()), "mean": round(float(lengths.mean()), 3), "max": float(lengths.max())}


def _slices(array: Any) -> Iterator[np.ndarray]:
    """An ndarray or h5py dataset in slices of rows along the first axis."""
    if array.ndim == 0:
        yield np.asarray(array[()])
        return
    for start in range(0, array.shape[0], SLICE_ROWS):
        yield np.asarray(array[start:start + SLICE_ROWS])


def _array_entry(key: str, array: Any) -> Entry:
    """One array's entry; lengths for `*_lengths` vectors (their values) and padded (N, L, D) features."""
    stats = _Stats(array.dtype)
    padded_features = array.ndim == 3 and stats.numeric and key.rsplit("/", 1)[-1] in MODALITIES
    steps = []
    for chunk in _slices(array):
        stats.add(chunk)
        if padded_features:
            steps.append(last_nonzero_step(chunk))
    if key.endswith("_lengths") and array.ndim == 1 and stats.numeric:
        lengths = np.asarray(array[()])
    else:
        lengths = np.concatenate(steps) if steps else None
    return stats.entry(key, array.shape, array.dtype, lengths)


def _inspect_pickle(path: Path) -> Inspection:
    content = load_pickle(path)
    return Inspection(path, "mmsa pickle", {"top-level keys": _keys(content)}, list(_walk(content, "")))


def _keys(content: Any) -> list[str] | str:
    return [str(k) for k in content] if isinstance(content, dict) else type(content).__name__


def _walk(value: Any, prefix: str) -> Iterable[Entry]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{prefix}{key}/")
    elif isinstance(value, np.ndarray):
        yield _array_entry(prefix.rstrip("/"), value)
    else:
        size = (len(value),) if hasattr(value, "__len__") else ()
        yield Entry(prefix.rstrip("/"), size, type(value).__name__)


def _inspect_csd(path: Path) -> Inspection:
    with contextlib.closing(Csd(path, "any")) as csd, damage_as_bad_input(path):
        summary = {"root": csd.root, "videos": len(csd.videos), **_metadata(csd)}
        feature_dtype = csd.data[csd.videos[0]]["features"].dtype
        features, intervals = _Stats(feature_dtype), _Stats(np.dtype(np.float64))
        rows = np.zeros(len(csd.videos), dtype=np.int64)
        for number, video in enumerate(csd.videos):
            times, values = csd.read(video)
            features.add(values)
            intervals.add(times)
            rows[number] = values.shape[0]
        total = int(rows.sum())
        entries = [features.entry("data/*/features", (total, csd.dim), feature_dtype, rows),
                   intervals.entry("data/*/intervals", (total, 2), np.dtype(np.float64))]
    return Inspection(path, "csd", summary, entries)


def _metadata(csd: Csd) -> dict[str, Any]:
    """The metadata strings (JSON-encoded in the SDK's files), decoded where they decode."""
    out = {}
    for key, dataset in csd.file[csd.root]["metadata"].items():
        if not isinstance(dataset, h5py.Dataset):
            continue
        raw = dataset[()]
        raw = raw[0] if isinstance(raw, np.ndarray) and raw.size else raw
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _inspect_cache(path: Path, handle: h5py.File) -> Inspection:
    summary = {key: _attribute(value) for key, value in handle.attrs.items()}
    entries = []
    for split in handle:
        group = handle[split]
        if not isinstance(group, h5py.Group):
            continue
        for key, dataset in group.items():
            if not isinstance(dataset, h5py.Dataset):
                continue
            if dataset.dtype.kind in "OSU":
                entries.append(Entry(f"{split}/{key}", dataset.shape, "string"))
            else:
                entries.append(_array_entry(f"{split}/{key}", dataset))
    return Inspection(path, "msmix cache", summary, entries)


def _attribute(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # an attribute may be an array (of numbers or of strings)
        return [_attribute(item) for item in value.tolist()] if value.ndim else _attribute(value.item())
    if isinstance(value, list):
        return [_attribute(item) for item in value]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value) if value[:1] in "{[" else value
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value
