"""The dataset cache: the one input format of `train` and `evaluate`, written by every reader.

One HDF5 file per dataset and setting, `<data-root>/cache/<dataset>-<setting>.h5`:
    attrs:  format="msmix-cache", version=1, dataset, setting, label_range (float),
            provenance (JSON string: sources with SHA-256, settings, msmix version),
            like (imported datasets only: the published dataset whose recipes and metrics it uses)
    /train, /valid, /test, each a group of datasets, all contiguous (no chunks, no compression) so a
    reader can read any row at a known file offset:
        text, audio, vision                     float32 (N, L_m, D_m), zero-padded at the end
        text_lengths, audio_lengths, vision_lengths  int32 (N,)
        label                                    float32 (N,)
        label_T, label_A, label_V                float32 (N,)   optional (CH-SIMS unimodal labels)
        text_ids                                 int64 (N, 3, L_T) optional (BERT input_ids/mask/segment)
        id                                       variable-length UTF-8 strings (N,)

A split is read as whole tensors (`in_memory=True`, a batch is one gather per array) or, for caches larger
than memory, each batch's rows are read from the file at their offsets (one read per row, in file order).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Protocol, Sequence

import h5py
import numpy as np
import torch

from msmix_cli.errors import BadInput, first_line
from msmix_cli.io import atomic_path
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal

FORMAT = "msmix-cache"
VERSION = 1
SPLITS = ("train", "valid", "test")
IMPORTABLE_SETTINGS = ("aligned", "unaligned")
UNIMODAL = ("T", "A", "V")
FINITE_CHECK_ROWS = 512  # rows checked at a time: bounds the boolean temporaries for a MOSEI-sized split
LABEL_TOLERANCE = 1e-4  # labels stored as float32 may sit a rounding step outside the range

Fail = Callable[[str], BadInput]  # builds the one-line error of a check, naming the file


@dataclass
class SplitArrays:
    """One split as a reader produces it and `write_cache` stores it."""

    features: dict[str, np.ndarray]  # modality -> float32 (N, L, D), finite, zero-padded at the end
    lengths: dict[str, np.ndarray]  # modality -> (N,) valid steps, in [0, L]
    label: np.ndarray  # (N,)
    ids: Sequence[str]
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)  # "T", "A", "V" -> (N,) unimodal labels
    text_ids: np.ndarray | None = None  # (N, 3, L_T) BERT input_ids / input_mask / segment_ids


def cache_path(data_root: Path, dataset: str, setting: str) -> Path:
    return Path(data_root) / "cache" / f"{dataset}-{setting}.h5"


# ---------------------------------------------------------------------------------------------- writing


def write_cache(path: str | Path, *, dataset: str, setting: str, splits: Mapping[str, SplitArrays],
                label_range: float, provenance: Mapping[str, Any], like: str | None = None) -> Path:
    """Validate `splits` completely, then write them atomically: a failure leaves no file (and no old one lost).

    `like` marks an imported dataset: the published dataset whose recipes and metric set it uses.
    """
    target = Path(path)
    _check_splits(target, splits, label_range)
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.attrs.update({"format": FORMAT, "version": VERSION, "dataset": dataset, "setting": setting,
                                 "label_range": float(label_range), "provenance": json.dumps(dict(provenance))})
            if like is not None:
                handle.attrs["like"] = like
            for name in SPLITS:
                _write_split(handle.create_group(name), splits[name])
    return target


def _write_split(group: h5py.Group, split: SplitArrays) -> None:
    # `data=` without chunks or compression gives contiguous storage: a row sits at offset + row * row_bytes
    for m in MODALITIES:
        group.create_dataset(m, data=split.features[m])
        group.create_dataset(f"{m}_lengths", data=np.asarray(split.lengths[m], dtype=np.int32))
    group.create_dataset("label", data=np.asarray(split.label, dtype=np.float32))
    for key, values in split.extra_labels.items():
        group.create_dataset(f"label_{key}", data=np.asarray(values, dtype=np.float32))
    if split.text_ids is not None:
        group.create_dataset("text_ids", data=np.asarray(split.text_ids, dtype=np.int64))
    group.create_dataset("id", data=np.array(list(split.ids), dtype=object), dtype=h5py.string_dtype("utf-8"))


def _check_splits(target: Path, splits: Mapping[str, SplitArrays], label_range: float) -> None:
    def fail(problem: str) -> BadInput:
        return BadInput(f"cannot write {target}: {problem}")

    if sorted(splits) != sorted(SPLITS):
        raise fail(f"the splits must be exactly {', '.join(SPLITS)}; got {', '.join(splits) or 'none'}")
    first = splits[SPLITS[0]]
    for name in SPLITS:
        split = splits[name]
        for m in MODALITIES:
            _check_modality(fail, name, m, split, first)
        _check_samples(fail, name, split, label_range)
        same_labels = sorted(split.extra_labels) == sorted(first.extra_labels)
        if not same_labels or (split.text_ids is None) != (first.text_ids is None):
            raise fail(f"{name} has other optional arrays (unimodal labels, text_ids) than {SPLITS[0]}")


def _check_modality(fail: Fail, name: str, m: str, split: SplitArrays, first: SplitArrays) -> None:
    if m not in split.features or m not in split.lengths:
        raise fail(f"{name} has no {m} features or lengths")
    x, n = split.features[m], len(split.ids)
    if x.dtype != np.float32 or x.ndim != 3:
        raise fail(f"{name}/{m} must be float32 (N, L, D); got {x.dtype} {x.shape}")
    if x.shape[0] != n:
        raise fail(f"{name}/{m} has {x.shape[0]} samples, the split has {n} ids")
    if x.shape[1:] != first.features[m].shape[1:]:
        raise fail(f"{name}/{m} has shape (L, D) = {x.shape[1:]}, {SPLITS[0]} has {first.features[m].shape[1:]}")
    if not _all_finite(x):
        raise fail(f"{name}/{m} holds NaN or inf; the reader must replace them before caching")
    lengths = np.asarray(split.lengths[m])
    if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
        raise fail(f"{name}/{m}_lengths must be {n} integers; got {lengths.dtype} {lengths.shape}")
    if n and (lengths.min() < 0 or lengths.max() > x.shape[1]):
        raise fail(f"{name}/{m}_lengths must lie in [0, {x.shape[1]}]; found {lengths.min()}..{lengths.max()}")


def _check_samples(fail: Fail, name: str, split: SplitArrays, label_range: float) -> None:
    n = len(split.ids)
    if n == 0:
        raise fail(f"{name} is empty")
    labels = {"label": split.label, **{f"label_{k}": v for k, v in split.extra_labels.items()}}
    for key, values in labels.items():
        if key != "label" and key[len("label_"):] not in UNIMODAL:
            raise fail(f"{name}/{key}: unimodal labels are {', '.join(UNIMODAL)}")
        values = np.asarray(values)
        if values.shape != (n,):
            raise fail(f"{name}/{key} has shape {values.shape}, expected ({n},)")
        if not np.isfinite(values).all() or np.abs(values).max() > label_range + LABEL_TOLERANCE:
            raise fail(f"{name}/{key} must be finite and within ±{label_range:g}")
    if split.text_ids is not None:
        length = split.features["text"].shape[1]
        if np.shape(split.text_ids) != (n, 3, length):
            raise fail(f"{name}/text_ids has shape {np.shape(split.text_ids)}, expected ({n}, 3, {length})")


def _all_finite(x: np.ndarray) -> bool:
    starts = range(0, x.shape[0], FINITE_CHECK_ROWS)
    return all(np.isfinite(x[start:start + FINITE_CHECK_ROWS]).all() for start in starts)


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CacheSummary:
    """What a cache says of its dataset without reading any data: enough to build networks for it."""

    path: Path
    dataset: str
    setting: str
    label_range: float
    like: str | None
    dims: dict[str, int]
    seq_lens: dict[str, int]
    splits: dict[str, int]
    unimodal_labels: bool


def read_summary(path: str | Path) -> CacheSummary:
    """A cache's attributes and array shapes (metadata only); `open_cache` validates the data when it loads."""
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise BadInput(f"{path}: not a readable HDF5 file, perhaps truncated or damaged ({first_line(error)})") from None
    with handle, damage_as_bad_input(path):
        _check_layout(path, handle)
        attrs, train = handle.attrs, handle["train"]
        return CacheSummary(
            path, _text_attr(attrs["dataset"]), _text_attr(attrs["setting"]), float(attrs["label_range"]),
            _text_attr(attrs["like"]) if "like" in attrs else None,
            {m: int(train[m].shape[2]) for m in MODALITIES}, {m: int(train[m].shape[1]) for m in MODALITIES},
            {name: int(handle[name]["id"].shape[0]) for name in SPLITS},
            all(f"label_{key}" in train for key in UNIMODAL))


@dataclass(frozen=True)
class _SplitIndex:
    """What open validates and keeps of a split: its size and the small per-sample arrays."""

    lengths: dict[str, np.ndarray]  # int64 (N,)
    label: np.ndarray  # float32 (N,)
    ids: list[str]


class _Rows(Protocol):
    def take(self, index: np.ndarray) -> torch.Tensor: ...


class _TensorRows:
    """A whole array held as one tensor; a batch is a single gather."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def take(self, index: np.ndarray) -> torch.Tensor:
        return self.tensor[torch.from_numpy(index)]


class _FileRows:
    """An array left on disk: each batch reads its rows in file order (each once), then puts them in batch order.

    Plain reads, not a memory map: the pages they bring in stay in the OS page cache, which the kernel can
    drop, while every page a map has touched counts in the process's resident memory (6 GB by the end of
    a MOSEI epoch).
    """

    def __init__(self, file: BinaryIO, path: Path, dataset: h5py.Dataset):
        self.file, self.path, self.name = file, path, dataset.name
        self.offset = dataset.id.get_offset()
        self.dtype = dataset.dtype
        self.row_shape = dataset.shape[1:]
        self.row_bytes = math.prod(self.row_shape) * self.dtype.itemsize
        if self.offset is None or self.offset + dataset.shape[0] * self.row_bytes > path.stat().st_size:
            raise BadInput(f"{path}: {dataset.name} ends past the end of the file; the file is truncated")

    def take(self, index: np.ndarray) -> torch.Tensor:
        rows, order = np.unique(index, return_inverse=True)
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        for slot, row in enumerate(rows):
            self.file.seek(self.offset + int(row) * self.row_bytes)
            if self.file.readinto(memoryview(out[slot]).cast("B")) != self.row_bytes:
                raise BadInput(f"{self.path}: {self.name} row {row} is cut short; the file changed or is truncated")
        _check_finite(self.path, self.name, out)
        return torch.from_numpy(out[order])


class SplitData:
    """One split of an open cache: its labels and ids, and batches of it."""

    def __init__(self, index: _SplitIndex, rows: dict[str, _Rows]):
        self._index = index
        self._rows = rows  # "text", "audio", "vision" and, when present, "text_ids"
        self._lengths = {m: torch.from_numpy(n) for m, n in index.lengths.items()}
        self._labels = torch.from_numpy(index.label)

    def __len__(self) -> int:
        return len(self._index.ids)

    @property
    def labels(self) -> np.ndarray:
        """float32 (N,) in stored order, read-only (the batches share it)."""
        view = self._index.label.view()
        view.flags.writeable = False
        return view

    @property
    def ids(self) -> list[str]:
        return list(self._index.ids)

    def batches(self, batch_size: int, *, shuffle: bool, rng: np.random.Generator | None = None,
                indices: np.ndarray | None = None, drop_last: bool = False) -> Iterator[Batch]:
        """Batches over `indices` (default: every row in stored order), shuffled with `rng` when asked.

        The order comes only from `rng`, so a seed fixes it; `indices` lets a caller pass its own order or shard.
        Arguments are checked (and the order drawn) on the call, not on the first batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        order = self._checked_indices(indices)
        if shuffle:
            if rng is None:
                raise ValueError("shuffle=True needs an rng, so that the order is reproducible")
            order = order[rng.permutation(len(order))]
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        return (self._batch(order[start:start + batch_size]) for start in range(0, stop, batch_size))

    def _batch(self, index: np.ndarray) -> Batch:
        """The rows `index` (in that order) as one batch."""
        picked = torch.from_numpy(index)
        text_ids = self._rows["text_ids"].take(index) if "text_ids" in self._rows else None
        inputs = Multimodal({m: self._rows[m].take(index) for m in MODALITIES},
                            {m: self._lengths[m][picked] for m in MODALITIES})
        return Batch(inputs, self._labels[picked], text_ids=text_ids, index=picked)

    def _checked_indices(self, indices: np.ndarray | None) -> np.ndarray:
        if indices is None:
            return np.arange(len(self), dtype=np.int64)
        order = np.asarray(indices)
        if order.ndim != 1 or (order.size and order.dtype.kind not in "iu"):
            raise ValueError(f"indices must be a 1-D integer array; got {order.dtype} {order.shape}")
        if order.size and (order.min() < 0 or order.max() >= len(self)):
            raise ValueError(f"indices must lie in [0, {len(self)}); found {order.min()}..{order.max()}")
        return order.astype(np.int64)


class CacheFile:
    """An open, validated cache. Use `open_cache`; close it (or use it as a context manager) when done."""

    def __init__(self, path: Path, handle: h5py.File, in_memory: bool):
        self.path = path
        self._handle = handle
        self._in_memory = in_memory
        self._rows_file: BinaryIO | None = None
        self._splits: dict[str, SplitData] = {}
        attrs = handle.attrs
        self.dataset: str = _text_attr(attrs["dataset"])
        self.setting: str = _text_attr(attrs["setting"])
        self.label_range = float(attrs["label_range"])
        self.provenance: dict[str, Any] = json.loads(_text_attr(attrs["provenance"]))
        train = handle["train"]
        self.shape = DataShape(dims={m: int(train[m].shape[2]) for m in MODALITIES},
                               seq_lens={m: int(train[m].shape[1]) for m in MODALITIES},
                               label_range=self.label_range, aligned=self.setting == "aligned")
        self._indexes = {name: _read_index(path, handle[name], self.label_range) for name in SPLITS}

    def split(self, name: str) -> SplitData:
        """A split's data, loaded on first use and kept for the next call."""
        if name not in SPLITS:
            raise BadInput(f"{self.path} has no split {name!r}; choose one of: {', '.join(SPLITS)}")
        if name not in self._splits:
            with damage_as_bad_input(self.path):
                self._splits[name] = SplitData(self._indexes[name], self._load_rows(self._handle[name]))
        return self._splits[name]

    def close(self) -> None:
        self._handle.close()
        if self._rows_file is not None:
            self._rows_file.close()

    def __enter__(self) -> CacheFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load_rows(self, group: h5py.Group) -> dict[str, _Rows]:
        names = [*MODALITIES, *(["text_ids"] if "text_ids" in group else [])]
        if self._in_memory:
            arrays = {k: _read(self.path, group[k]) for k in names}
            for k in MODALITIES:
                _check_finite(self.path, group[k].name, arrays[k])
            return {k: _TensorRows(torch.from_numpy(x)) for k, x in arrays.items()}
        if self._rows_file is None:
            self._rows_file = open(self.path, "rb", buffering=0)  # one handle for every split's rows
        return {k: _FileRows(self._rows_file, self.path, group[k]) for k in names}


def open_cache(path: str | Path, *, in_memory: bool = True) -> CacheFile:
    """Open and validate a cache; anything off (not HDF5, truncated, wrong layout) is a one-line BadInput.

    `in_memory=False` leaves the features on disk and reads only each batch's rows from the file, so a
    cache larger than RAM (MOSEI unaligned is about 6 GB) can be trained on.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path} not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise BadInput(f"{path}: not a readable HDF5 file, perhaps truncated or damaged "
                       f"({first_line(error)})") from None
    try:
        with damage_as_bad_input(path):
            _check_layout(path, handle)
            return CacheFile(path, handle, in_memory)
    except BaseException:
        handle.close()
        raise


def _check_layout(path: Path, handle: h5py.File) -> None:
    def fail(problem: str) -> BadInput:
        return BadInput(f"{path}: {problem}")

    attrs = handle.attrs
    if _text_attr(attrs.get("format", "")) != FORMAT:
        raise fail(f"not an msmix cache (no format={FORMAT!r} attribute)")
    version = attrs.get("version")
    if not (np.ndim(version) == 0 and version == VERSION):
        raise fail(f"cache version {version}, this msmix reads version {VERSION}; recreate it with `msmix preprocess`")
    for key in ("dataset", "setting", "label_range", "provenance"):
        if key not in attrs:
            raise fail(f"attribute {key!r} is missing")
    try:
        provenance = json.loads(_text_attr(attrs["provenance"]))
    except ValueError:
        provenance = None
    if not isinstance(provenance, dict):
        raise fail("attribute 'provenance' is not a JSON object")
    if not isinstance(attrs["label_range"], (float, np.floating)) or not 0 < attrs["label_range"] < math.inf:
        raise fail(f"attribute 'label_range' must be a positive number; got {attrs['label_range']!r}")
    for name in SPLITS:
        if not isinstance(handle.get(name), h5py.Group):
            raise fail(f"group /{name} is missing")
        _check_group(fail, handle[name], handle[SPLITS[0]])


def _check_group(fail: Fail, group: h5py.Group, first: h5py.Group) -> None:
    name = group.name.lstrip("/")
    ids = _dataset(fail, group, "id")
    if ids.ndim != 1 or ids.dtype.kind != "O" or ids.shape[0] == 0:
        raise fail(f"{name}/id must be a non-empty vector of strings; got {ids.dtype} {ids.shape}")
    n = ids.shape[0]
    for m in MODALITIES:
        x = _contiguous(fail, group, m, np.float32)
        if x.ndim != 3 or x.shape[0] != n:
            raise fail(f"{name}/{m} must have shape ({n}, L, D); got {x.shape}")
        if x.shape[1:] != _dataset(fail, first, m).shape[1:]:
            raise fail(f"{name}/{m} has (L, D) = {x.shape[1:]}, {first.name.lstrip('/')} has {first[m].shape[1:]}")
        _vector(fail, group, f"{m}_lengths", n, "iu")
    _vector(fail, group, "label", n, "f")
    for key in UNIMODAL:
        if f"label_{key}" in group:
            _vector(fail, group, f"label_{key}", n, "f")
    if "text_ids" in group:
        ids_array = _contiguous(fail, group, "text_ids", None)
        if ids_array.shape != (n, 3, group["text"].shape[1]) or ids_array.dtype.kind not in "iu":
            raise fail(f"{name}/text_ids must be integers of shape ({n}, 3, {group['text'].shape[1]}); got "
                       f"{ids_array.dtype} {ids_array.shape}")


def _dataset(fail: Fail, group: h5py.Group, key: str) -> h5py.Dataset:
    item = group.get(key)
    if not isinstance(item, h5py.Dataset):
        raise fail(f"{group.name.lstrip('/')}/{key} is missing")
    return item


def _contiguous(fail: Fail, group: h5py.Group, key: str, dtype: type | None) -> h5py.Dataset:
    item = _dataset(fail, group, key)
    where = f"{group.name.lstrip('/')}/{key}"
    if dtype is not None and item.dtype != dtype:
        raise fail(f"{where} must be {np.dtype(dtype)}; got {item.dtype}")
    if item.chunks is not None or item.id.get_offset() is None:
        raise fail(f"{where} is not stored contiguously; recreate the cache with `msmix preprocess`")
    return item


def _vector(fail: Fail, group: h5py.Group, key: str, n: int, kinds: str) -> None:
    item = _dataset(fail, group, key)
    if item.shape != (n,) or item.dtype.kind not in kinds:
        what = "integers" if "i" in kinds else "floats"
        raise fail(f"{group.name.lstrip('/')}/{key} must be a vector of {n} {what}; got {item.dtype} {item.shape}")


def _read_index(path: Path, group: h5py.Group, label_range: float) -> _SplitIndex:
    """The per-sample arrays, checked by value: lengths within the padded size, labels within the label range."""
    name = group.name.lstrip("/")
    lengths = {m: _read(path, group[f"{m}_lengths"]).astype(np.int64) for m in MODALITIES}
    for m, values in lengths.items():
        size = group[m].shape[1]
        if values.min() < 0 or values.max() > size:
            raise BadInput(f"{path}: {name}/{m}_lengths must lie in [0, {size}]; found {values.min()}..{values.max()}")
    label = _read(path, group["label"]).astype(np.float32)
    if not np.isfinite(label).all():
        raise BadInput(f"{path}: {name}/label holds NaN or inf")
    if np.abs(label).max() > label_range + LABEL_TOLERANCE:
        raise BadInput(f"{path}: {name}/label holds values outside ±{label_range:g}")
    ids = [str(i) for i in _read(path, group["id"], as_text=True)]
    return _SplitIndex(lengths, label, ids)


def _read(path: Path, dataset: h5py.Dataset, *, as_text: bool = False) -> np.ndarray:
    """A whole dataset; damaged storage (which h5py only finds on reading) is BadInput naming the file."""
    try:
        return np.asarray((dataset.asstr() if as_text else dataset)[()])
    except (OSError, ValueError) as error:
        raise BadInput(f"{path}: cannot read {dataset.name} ({first_line(error)})") from None


def _check_finite(path: Path, name: str, features: np.ndarray) -> None:
    """Features were finite when written (`write_cache` checks): NaN or inf now means the file is damaged."""
    if not _all_finite(features):
        raise BadInput(f"{path}: {name.lstrip('/')} holds NaN or inf; the file is damaged, recreate it")


@contextlib.contextmanager
def damage_as_bad_input(path: Path) -> Iterator[None]:
    """Reading a damaged HDF5 file, h5py raises whatever its C library reported: OSError, KeyError,
    RuntimeError, or ValueError (also for a name or attribute that is not UTF-8). All one BadInput naming it."""
    try:
        yield
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        raise BadInput(f"{path}: damaged HDF5 file ({first_line(error)})") from None


def _text_attr(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
