"""CMU Multimodal SDK computational sequences (`.csd`, HDF5) read with h5py, and the SDK's alignment, vectorised.

What the SDK's `align` computes, and what this module reproduces (FORMATS.md):
- word level: for each word interval [r0, r1], the rows of another sequence whose interval, clipped to the
  word, keeps more than `tolerance` seconds are averaged (plain mean of their features); a word that no row
  overlaps gets zeros. The word vectors themselves are the text features (the reference keeps its own row).
- segments: the label intervals cut every sequence; a segment keeps, in time order, the rows that overlap
  it by more than `tolerance` (words for the aligned setting, each modality's own frames for the unaligned one).
  A segment that keeps no row of some modality is dropped, as the SDK's `unify` drops it.
- padding: a segment keeps its FIRST L rows and is zero-padded at the END. This is MMSA's convention and
  the cache's (valid steps first, then padding), not the SDK's default (last L rows, padded on the left).
- NaN and ±inf feature values (COVAREP holds -inf) become 0 before averaging, and are counted.

The tolerance. The SDK's `align` uses one `epsilon` for every comparison above. Its GitHub code has used
1e-5 s since commit 399de1e (December 2019); from September 2018 until then it used 1e-3 s, and so does the
release on PyPI (cmu-multimodal-sdk 0.0.6). The two give different rows: on the real MOSI files, 356 of the
1811 word rows of COVAREP differ (issue 13). msmix defaults to 1e-3, so that its output matches the SDK a
user installs with pip row for row; `tolerance=1e-5` reproduces the GitHub code.

Speed: rows are sorted by start, so the rows overlapping an interval form one contiguous range found
with `searchsorted`, and a mean over a range is a difference of block sums: one pass over the n rows plus
O(m log n) for m words, instead of the SDK's words × frames. Sequences whose intervals nest (ends not sorted with starts)
fall back to a blocked overlap matrix, still vectorised. One video is in memory at a time besides the output.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from msmix_cli.data.cache import SplitArrays, damage_as_bad_input
from msmix_cli.data.specs import DEFAULT_TOLERANCE  # noqa: F401 (defined with the records, read by --help)
from msmix_cli.errors import BadInput, first_line
from msmix_cli.types import MODALITIES

SPLITS = ("train", "valid", "test")
DENSE_BLOCK = 1 << 22  # elements of one block of the fallback overlap matrix (4 MiB of bools)


@dataclass(frozen=True)
class Track:
    """One video's rows of one sequence: clean intervals sorted by start, and their features."""

    intervals: np.ndarray  # (n, 2) float64, finite, each longer than the tolerance
    features: np.ndarray  # (n, D) float32, finite


class Csd:
    """An open computational sequence whose layout has been checked; reads one video at a time."""

    def __init__(self, path: Path, role: str, *, dim: int | None = None, columns: Sequence[int] | None = None):
        self.path, self.role = Path(path), role
        self.columns = None if columns is None else np.asarray(columns)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise BadInput(f"{self.path}: not a readable HDF5 file, perhaps truncated ({first_line(error)})") from None
        try:
            with damage_as_bad_input(self.path):
                self.root = self._root()
                self.data = self._group("data")
                self._group("metadata")
                self.videos = list(self.data)
                self.dim = self._check_videos(dim)
        except BaseException:
            self.file.close()
            raise

    def close(self) -> None:
        self.file.close()

    def _root(self) -> str:
        roots = list(self.file)
        if len(roots) != 1 or not isinstance(self.file[roots[0]], h5py.Group):
            raise BadInput(f"{self.path}: a computational sequence has exactly one top-level group; found {roots}")
        return roots[0]

    def _group(self, name: str) -> h5py.Group:
        group = self.file[self.root].get(name)
        if not isinstance(group, h5py.Group):
            raise BadInput(f"{self.path}: missing group {self.root}/{name}")
        return group

    def _check_videos(self, expected_dim: int | None) -> int:
        """Check every video's shapes (metadata only, no data read); return the feature width."""
        if not self.videos:
            raise BadInput(f"{self.path}: {self.root}/data holds no video")
        dims = set()
        for video in self.videos:
            group = self.data.get(video)
            features = group.get("features") if isinstance(group, h5py.Group) else None
            intervals = group.get("intervals") if isinstance(group, h5py.Group) else None
            if not isinstance(features, h5py.Dataset) or not isinstance(intervals, h5py.Dataset):
                raise BadInput(f"{self.path}: {self.root}/data/{video} needs datasets 'features' and 'intervals'")
            if features.ndim != 2 or intervals.shape != (features.shape[0], 2):
                raise BadInput(f"{self.path}: {self.root}/data/{video} has features {features.shape} and intervals "
                               f"{intervals.shape}; expected (n, D) and (n, 2)")
            if features.dtype.kind not in "biuf" or intervals.dtype.kind not in "iuf":
                raise BadInput(f"{self.path}: {self.root}/data/{video} holds features of {features.dtype} and intervals "
                               f"of {intervals.dtype}; expected numbers")
            dims.add(features.shape[1])
        if len(dims) > 1:
            raise BadInput(f"{self.path}: feature widths differ between videos: {sorted(dims)}")
        dim = dims.pop()
        if self.columns is not None and (dim <= self.columns.max()):
            raise BadInput(f"{self.path}: {self.role} features have {dim} columns; the subset the field uses needs "
                           f"column {self.columns.max()}")
        if self.columns is None and expected_dim is not None and dim != expected_dim:
            raise BadInput(f"{self.path}: {self.role} features have {dim} columns, expected {expected_dim}")
        return dim if self.columns is None else len(self.columns)

    def read(self, video: str) -> tuple[np.ndarray, np.ndarray]:
        """(intervals float64 (n, 2), features float32 (n, D)) as stored, the column subset applied."""
        group = self.data[video]
        try:
            intervals = np.asarray(group["intervals"][()], dtype=np.float64)
            features = np.asarray(group["features"][()], dtype=np.float32)
        except (OSError, KeyError, RuntimeError, ValueError) as error:  # a damaged chunk surfaces only when read
            raise BadInput(f"{self.path}: cannot read {self.root}/data/{video} ({first_line(error)})") from None
        except MemoryError:  # the sizes are the file's word: a damaged or hostile one may claim terabytes
            raise BadInput(f"{self.path}: {self.root}/data/{video} claims {group['features'].shape} features, more "
                           "than fits in memory") from None
        if self.columns is not None:
            features = features[:, self.columns]
        return intervals, features


def standard_folds(dataset: str) -> dict[str, list[str]]:
    """The SDK's standard video folds (train/valid/test video ids), shipped with msmix."""
    source = resources.files("msmix_cli.data").joinpath("folds", f"{dataset}.json")
    if not source.is_file():
        raise BadInput(f"msmix has no standard folds for {dataset}")
    folds = json.loads(source.read_text(encoding="utf-8"))
    return {split: list(folds[split]) for split in SPLITS}


def clean_track(intervals: np.ndarray, features: np.ndarray,
                tolerance: float = DEFAULT_TOLERANCE) -> tuple[Track, int]:
    """Sort by start, drop rows that can overlap nothing, zero NaN/inf; return the track and the zeroed count."""
    with np.errstate(over="ignore", invalid="ignore"):  # the length of (-1e308, 1e308) is inf, still a length
        keep = np.all(np.isfinite(intervals), axis=1) & (intervals[:, 1] - intervals[:, 0] > tolerance)
    if not keep.all():
        intervals, features = intervals[keep], features[keep]
    if not _sorted(intervals):  # released files are in time order: skip the copy then
        order = np.lexsort((intervals[:, 1], intervals[:, 0]))
        intervals, features = intervals[order], features[order]
    finite = np.isfinite(features)
    if finite.all():
        return Track(intervals, features), 0
    features = np.where(finite, features, np.float32(0))
    return Track(intervals, features), int(finite.size - np.count_nonzero(finite))


def _sorted(intervals: np.ndarray) -> bool:
    """Ordered by start, then by end among equal starts."""
    starts, ends = np.diff(intervals[:, 0]), np.diff(intervals[:, 1])
    return bool(np.all((starts > 0) | ((starts == 0) & (ends >= 0))))


def overlap_ranges(reference: np.ndarray, track: Track,
                   tolerance: float = DEFAULT_TOLERANCE) -> tuple[np.ndarray, np.ndarray] | None:
    """[lo, hi) of the track rows overlapping each reference interval by more than `tolerance`.

    The rows are sorted by start; when their ends are sorted too, the rows that end after r0 + tolerance form
    a suffix and those that start before r1 - tolerance a prefix, so their overlap is one range. None otherwise.
    """
    starts, ends = track.intervals[:, 0], track.intervals[:, 1]
    if np.any(np.diff(ends) < 0):
        return None
    lo = np.searchsorted(ends, reference[:, 0] + tolerance, side="right")
    hi = np.searchsorted(starts, reference[:, 1] - tolerance, side="left")
    long_enough = reference[:, 1] - reference[:, 0] > tolerance
    return lo, np.where(long_enough, np.maximum(hi, lo), lo)


def overlap_matrix(reference: np.ndarray, track: Track, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """(m, n) bool: row j of the track overlaps reference interval i by more than `tolerance`."""
    starts, ends = track.intervals[:, 0], track.intervals[:, 1]
    overlap = np.minimum(ends[None, :], reference[:, 1:2]) - np.maximum(starts[None, :], reference[:, 0:1])
    return overlap > tolerance


def overlap_mean(reference: np.ndarray, track: Track, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """(m, D) float32: per reference interval, the mean of the overlapping rows' features; zeros where none."""
    ranges = overlap_ranges(reference, track, tolerance)
    if ranges is None:
        return _overlap_mean_blocked(reference, track, tolerance)
    lo, hi = ranges
    counts = np.maximum(hi - lo, 1)[:, None]
    return (range_sums(track.features, lo, hi) / counts).astype(np.float32)


def range_sums(features: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(m, D) float64 sums of features[lo[i]:hi[i]], with one pass over the rows.

    The range ends cut the rows into at most 2m + 1 blocks; `reduceat` sums each block, and a range is a
    difference of prefix sums over blocks. (A prefix sum over every row costs several times more for a
    100 Hz track, and float64 sums keep small ranges exact next to large ones.)
    """
    rows, dim = features.shape
    if rows == 0:
        return np.zeros((len(lo), dim))
    bounds = np.unique(np.concatenate([[0], lo, hi]))
    bounds = bounds[bounds < rows]
    prefix = np.zeros((len(bounds) + 1, dim))
    np.cumsum(np.add.reduceat(features.astype(np.float64), bounds, axis=0), axis=0, out=prefix[1:])
    return prefix[np.searchsorted(bounds, hi)] - prefix[np.searchsorted(bounds, lo)]


def _overlap_mean_blocked(reference: np.ndarray, track: Track, tolerance: float) -> np.ndarray:
    rows = max(1, DENSE_BLOCK // max(1, track.features.shape[0]))
    out = np.zeros((reference.shape[0], track.features.shape[1]), dtype=np.float32)
    for start in range(0, reference.shape[0], rows):
        mask = overlap_matrix(reference[start:start + rows], track, tolerance)
        sums = mask.astype(np.float64) @ track.features.astype(np.float64)
        out[start:start + rows] = sums / np.maximum(mask.sum(axis=1), 1)[:, None]
    return out


def segment_rows(segments: np.ndarray, track: Track, length: int,
                 tolerance: float = DEFAULT_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Cut a track by segment intervals: ((k, length, D) first rows, zero-padded at the end; (k,) rows found)."""
    k, dim = segments.shape[0], track.features.shape[1]
    out = np.zeros((k, length, dim), dtype=np.float32)
    ranges = overlap_ranges(segments, track, tolerance)
    if ranges is None:
        mask = overlap_matrix(segments, track, tolerance)
        found = mask.sum(axis=1)
        for i in range(k):  # one iteration per segment (a handful per video), not per row
            rows = np.flatnonzero(mask[i])[:length]
            out[i, :rows.size] = track.features[rows]
        return out, found
    lo, hi = ranges
    found = hi - lo
    steps = np.arange(length)
    valid = steps[None, :] < np.minimum(found, length)[:, None]
    out[valid] = track.features[(lo[:, None] + steps[None, :])[valid]]
    return out, found


@dataclass
class MmsdkData:
    splits: dict[str, SplitArrays]
    replaced_nonfinite: dict[str, int]
    text_dim: int
    truncated: dict[str, int]  # modality -> segments longer than the padded length, cut
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> segments left out


@dataclass
class _SplitBuffer:
    """Preallocated output of one split, filled video by video; `rows` is how much is filled."""

    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    label: np.ndarray
    ids: list[str] = field(default_factory=list)
    rows: int = 0

    @classmethod
    def allocate(cls, capacity: int, seq_lens: Mapping[str, int], dims: Mapping[str, int]) -> _SplitBuffer:
        # np.zeros maps untouched pages lazily, so the unused tail of the capacity costs no memory
        return cls({m: np.zeros((capacity, seq_lens[m], dims[m]), np.float32) for m in MODALITIES},
                   {m: np.zeros(capacity, np.int32) for m in MODALITIES}, np.zeros(capacity, np.float32))

    def append(self, features: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray], label: np.ndarray,
               ids: Sequence[str]) -> None:
        end = self.rows + len(ids)
        for m in MODALITIES:
            self.features[m][self.rows:end] = features[m]
            self.lengths[m][self.rows:end] = lengths[m]
        self.label[self.rows:end] = label
        self.ids.extend(ids)
        self.rows = end

    def arrays(self) -> SplitArrays:
        n = self.rows
        return SplitArrays(features={m: x[:n] for m, x in self.features.items()},
                           lengths={m: x[:n] for m, x in self.lengths.items()}, label=self.label[:n], ids=self.ids)


@dataclass(frozen=True)
class _Segments:
    intervals: np.ndarray  # (k, 2)
    label: np.ndarray  # (k,) sentiment
    ids: list[str]


class _Builder:
    """Turns four open sequences (text, audio, vision, labels) into the three splits of one setting."""

    def __init__(self, sequences: Mapping[str, Csd], setting: str, seq_lens: Mapping[str, int], label_range: float,
                 tolerance: float):
        self.sequences, self.setting, self.seq_lens, self.label_range = sequences, setting, seq_lens, label_range
        self.tolerance = tolerance
        self.replaced = {m: 0 for m in MODALITIES}
        self.truncated = {m: 0 for m in MODALITIES}
        self.dropped: dict[str, int] = {}

    def segments(self, video: str) -> _Segments:
        labels = self.sequences["labels"]
        intervals, features = labels.read(video)
        sentiment = features[:, 0]
        ids = [f"{video}[{i}]" for i in range(len(sentiment))]  # the SDK's segment keys, in file order
        finite = np.isfinite(sentiment) & np.all(np.isfinite(intervals), axis=1)
        self.drop("label or interval not a number", int(np.count_nonzero(~finite)))
        if np.any(np.abs(sentiment[finite]) > self.label_range + 1e-6):
            raise BadInput(f"{labels.path}: {video} has sentiment labels outside ±{self.label_range:g} "
                           f"(column 0 of the label features holds the sentiment score)")
        return _Segments(intervals[finite], sentiment[finite], [i for i, ok in zip(ids, finite) if ok])

    def build(self, video: str, segments: _Segments) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Features (k, L, D) and lengths (k,) per modality of one video's segments, and which segments to keep."""
        tracks = {m: self._track(m, video) for m in MODALITIES}
        if self.setting == "aligned":
            words = tracks["text"]
            aligned = {"text": words.features,
                       **{m: overlap_mean(words.intervals, tracks[m], self.tolerance) for m in ("audio", "vision")}}
            tracks = {m: Track(words.intervals, aligned[m]) for m in MODALITIES}
        features, lengths = {}, {}
        for m in MODALITIES:
            features[m], found = segment_rows(segments.intervals, tracks[m], self.seq_lens[m], self.tolerance)
            self.truncated[m] += int(np.count_nonzero(found > self.seq_lens[m]))
            lengths[m] = np.minimum(found, self.seq_lens[m]).astype(np.int32)
        keep = np.all([lengths[m] > 0 for m in MODALITIES], axis=0)
        self.drop("no overlapping rows in some modality", int(np.count_nonzero(~keep)))
        return features, lengths, keep

    def _track(self, modality: str, video: str) -> Track:
        track, replaced = clean_track(*self.sequences[modality].read(video), self.tolerance)
        self.replaced[modality] += replaced
        return track

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


def read_mmsdk(paths: Mapping[str, Path], *, setting: str, seq_lens: Mapping[str, int], dims: Mapping[str, int],
               columns: Mapping[str, Sequence[int] | None], folds: Mapping[str, Sequence[str]], label_range: float,
               tolerance: float = DEFAULT_TOLERANCE, progress: Callable[[int, int], None] | None = None) -> MmsdkData:
    """Align, segment and split the four sequences (`paths`: text, audio, vision, labels -> .csd file).

    `dims` gives the expected widths of audio and vision (after `columns`; absent: any width); the text width
    is the file's. `tolerance` (seconds): an overlap this short or shorter does not count.
    """
    if not (0 <= tolerance < 1):
        raise BadInput(f"the overlap tolerance must lie in [0, 1) seconds; got {tolerance:g}")
    with _open_all(paths, dims, columns) as sequences:
        builder = _Builder(sequences, setting, seq_lens, label_range, tolerance)
        plan = _plan(sequences, folds, builder)
        widths = {m: sequences[m].dim for m in MODALITIES}
        buffers = {split: _SplitBuffer.allocate(sum(len(s.ids) for s in plan[split].values()), seq_lens, widths)
                   for split in SPLITS}
        total, done = sum(len(videos) for videos in plan.values()), 0
        for split in SPLITS:
            for video, segments in plan[split].items():
                features, lengths, keep = builder.build(video, segments)
                buffers[split].append({m: x[keep] for m, x in features.items()}, {m: n[keep] for m, n in lengths.items()},
                                      segments.label[keep], [i for i, ok in zip(segments.ids, keep) if ok])
                done += 1
                if progress is not None:
                    progress(done, total)
        return MmsdkData({split: buffers[split].arrays() for split in SPLITS}, builder.replaced,
                         sequences["text"].dim, builder.truncated, builder.dropped)


@contextlib.contextmanager
def _open_all(paths: Mapping[str, Path], dims: Mapping[str, int],
              columns: Mapping[str, Sequence[int] | None]) -> Iterator[dict[str, Csd]]:
    with contextlib.ExitStack() as stack:
        sequences = {}
        for role in (*MODALITIES, "labels"):
            expected = dims.get(role) if role in ("audio", "vision") else None
            sequences[role] = Csd(paths[role], role, dim=expected, columns=columns.get(role))
            stack.callback(sequences[role].close)
        if sequences["labels"].dim < 1:
            raise BadInput(f"{paths['labels']}: label features have no column; the first holds the sentiment score")
        yield sequences


def _plan(sequences: Mapping[str, Csd], folds: Mapping[str, Sequence[str]],
          builder: _Builder) -> dict[str, dict[str, _Segments]]:
    """Split -> video -> its labelled segments, for the fold videos every sequence has, in fold order."""
    labels = sequences["labels"]
    labelled = set(labels.videos)
    complete = labelled.intersection(*(sequences[m].videos for m in MODALITIES))
    in_folds = {video for split in SPLITS for video in folds[split]}

    def segment_count(video: str) -> int:
        return len(labels.data[video]["intervals"])

    builder.drop("video in no standard fold", sum(segment_count(v) for v in labelled - in_folds))
    builder.drop("video missing from a feature file", sum(segment_count(v) for v in (labelled - complete) & in_folds))
    # fold order (the published lists' order) makes the cache's rows reproducible
    return {split: {video: builder.segments(video) for video in folds[split] if video in complete} for split in SPLITS}
