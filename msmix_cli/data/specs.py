"""One record per dataset: shapes, split sizes, label range and where its files come from."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from msmix_cli.errors import BadInput
from msmix_cli.registry import Registry

DATA_ROOT_ENV = "MSMIX_DATA_ROOT"
DEFAULT_TOLERANCE = 1e-3  # seconds a .csd overlap must exceed to count (msmix_cli/data/mmsdk.py says why)
# An imported dataset's name becomes part of its cache's file name: one plain file-name component.
IMPORTED_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

MMSDK_BASE_URL = "http://immortal.multicomp.cs.cmu.edu/"
# The MMSA feature pickles live in this Google Drive folder (and on Baidu); neither allows a scripted download.
MMSA_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1A2S4pqCHryGmiqnNSPLv7rEg63WvjCSk"
MMSA_BY_HAND = f"the MMSA Google Drive folder {MMSA_DRIVE_FOLDER} (or MMSA's Baidu mirror)"
# CH-SIMS v2's authors share its pickle in their own folder (thuiar/ch-sims-v2, README), also mirrored on Baidu.
SIMSV2_BY_HAND = ("the CH-SIMS v2 Google Drive folder https://drive.google.com/drive/folders/"
                  "1wFvGS0ebKRvT3q6Xolot-sDtCNfz7HRA (or its Baidu mirror, see github.com/thuiar/ch-sims-v2)")


@dataclass(frozen=True)
class RemoteFile:
    """A published file: where it lives under raw/<dataset>/, where to fetch it, and its SHA-256 if known."""

    name: str  # path under data/raw/<dataset>/
    url: str | None  # None: no scripted download exists; the user imports it with `--from`
    sha256: str | None = None
    # What preprocess reads it as: a setting ("aligned"/"unaligned") for a feature pickle; "text", "audio",
    # "vision" or "labels" for a computational sequence; "label_csv" for CH-SIMS' label table.
    role: str | None = None
    columns: tuple[int, ...] | None = None  # the feature columns the field uses, when it uses a subset
    required: bool = True  # False: preprocess uses it when present (download reports it, never fails on it)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    dims: dict[str, int]  # feature width per modality of the features the field uses
    seq_lens: dict[str, dict[str, int]]  # setting ("aligned"/"unaligned") -> modality -> padded length
    splits: dict[str, int]  # published number of segments per split
    label_range: float  # labels lie in [-label_range, label_range]
    metric_set: str  # "mosi" (MOSI/MOSEI metrics) or "sims" (CH-SIMS metrics)
    unimodal_labels: bool = False  # True when every sample also has T, A and V labels (CH-SIMS)
    sources: dict[str, tuple[RemoteFile, ...]] = field(default_factory=dict)  # source kind -> files
    # An imported dataset trains with the shipped recipes of this published one (and keeps its metric set)
    like: str | None = None
    by_hand: str = MMSA_BY_HAND  # where a user gets the files that have no scripted download

    @property
    def settings(self) -> list[str]:
        return list(self.seq_lens)

    @property
    def default_source(self) -> str | None:
        """The first source listed: the one the field's published results use."""
        return next(iter(self.sources), None)

    def source_files(self, source: str) -> tuple[RemoteFile, ...]:
        if source not in self.sources:
            known = ", ".join(self.sources) or "none (it is generated, not downloaded)"
            raise BadInput(f"{self.name} has no source {source!r}; its sources: {known}")
        return self.sources[source]

    def file_for(self, source: str, role: str) -> RemoteFile | None:
        return next((f for f in self.source_files(source) if f.role == role), None)


def data_root_default() -> Path:
    """$MSMIX_DATA_ROOT when set, else ./data."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


class DatasetRegistry(Registry[DatasetSpec]):
    """The published datasets, then those a user imported, found by their caches under the data root.

    A process works with one data root: $MSMIX_DATA_ROOT or ./data, or what a command's `--data-root` gave
    `use_data_root`. `get(name, data_root)` looks under another root for that one lookup.
    """

    def __init__(self) -> None:
        super().__init__("dataset")
        self.data_root: Path | None = None

    def use_data_root(self, data_root: Path) -> None:
        self.data_root = Path(data_root)

    def get(self, name: str, data_root: Path | None = None) -> DatasetSpec:
        if name in self:
            return super().get(name)
        root = Path(data_root) if data_root is not None else self.data_root or data_root_default()
        spec = imported_spec(root, name) if IMPORTED_NAME.fullmatch(name) else None
        if spec is None:
            raise BadInput(f"unknown dataset {name!r}; choose one of: {', '.join(self.names())}, or a dataset "
                           f"imported into {root / 'cache'} (`msmix preprocess --from FILE.pkl --name {name}`)")
        return spec


DATASETS = DatasetRegistry()


def imported_spec(data_root: Path, name: str) -> DatasetSpec | None:
    """The record of dataset `name` imported under `data_root`, read from its caches' attributes; None if none."""
    # Imported here: the cache module loads h5py and NumPy, which `msmix --help` (it lists the datasets) does without.
    from msmix_cli.data.cache import IMPORTABLE_SETTINGS, cache_path, read_summary

    summaries = [read_summary(path) for setting in IMPORTABLE_SETTINGS
                 if (path := cache_path(data_root, name, setting)).is_file()]
    summaries = [s for s in summaries if s.dataset == name and s.like is not None]
    if not summaries:
        return None
    first = summaries[0]
    for other in summaries[1:]:
        if other.dims != first.dims or other.label_range != first.label_range or other.like != first.like:
            raise BadInput(f"{other.path} and {first.path} disagree on feature widths, label range or recipes; "
                           f"import {name} again")
    if first.like not in DATASETS:  # `like` names a published dataset, never another import (nor itself)
        raise BadInput(f"{first.path}: attribute 'like' is {first.like!r}, not a published dataset; import {name} again")
    like = DATASETS.get(first.like)
    return DatasetSpec(name=name, dims=dict(first.dims), seq_lens={s.setting: dict(s.seq_lens) for s in summaries},
                       splits=dict(first.splits), label_range=first.label_range, metric_set=like.metric_set,
                       unimodal_labels=first.unimodal_labels, like=like.name)


def raw_dir(data_root: Path, dataset: str) -> Path:
    """Where `download` puts a dataset's published files and `preprocess` reads them."""
    return Path(data_root) / "raw" / dataset


def _add(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(spec)


def _mmsdk(folder: str, text: str, audio: str, vision: str, labels: str, *,
           audio_columns: tuple[int, ...] | None = None, vision_columns: tuple[int, ...] | None = None,
           ) -> tuple[RemoteFile, ...]:
    """The computational sequences preprocess reads: word vectors (text), COVAREP, FACET and the labels.

    The SDK publishes no SHA-256 for these files, so the download cannot verify them; preprocess records the
    hash of what it read, so a run still names exactly the files it trained on.
    """
    def remote(path: str, role: str, columns: tuple[int, ...] | None = None) -> RemoteFile:
        return RemoteFile(path.rsplit("/", 1)[-1], f"{MMSDK_BASE_URL}{folder}/{path}", role=role, columns=columns)

    return (remote(text, "text"), remote(audio, "audio", audio_columns), remote(vision, "vision", vision_columns),
            remote(labels, "labels"))


def _pickle(name: str, setting: str, sha256: str) -> RemoteFile:
    return RemoteFile(name, None, sha256, role=setting)


_add(DatasetSpec(
    name="synth",
    dims={"text": 768, "audio": 5, "vision": 20},
    seq_lens={"aligned": {"text": 50, "audio": 50, "vision": 50}},
    splits={"train": 1284, "valid": 229, "test": 686},
    label_range=3.0,
    metric_set="mosi",
))
_add(DatasetSpec(
    name="mosi",
    dims={"text": 768, "audio": 5, "vision": 20},
    seq_lens={"aligned": {"text": 50, "audio": 50, "vision": 50}, "unaligned": {"text": 50, "audio": 375, "vision": 500}},
    splits={"train": 1284, "valid": 229, "test": 686},
    label_range=3.0,
    metric_set="mosi",
    sources={
        "mmsa": (
            _pickle("aligned_50.pkl", "aligned", "d3994fd25681f9c7ad6e9c6596a6fe9b4beb85ff7d478ba978b124139002e5f9"),
            _pickle("unaligned_50.pkl", "unaligned", "78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524"),
        ),
        "mmsdk": _mmsdk(
            "CMU-MOSI", "language/CMU_MOSI_TimestampedWordVectors.csd", "acoustic/CMU_MOSI_COVAREP.csd",
            "visual/CMU_MOSI_Visual_Facet_41.csd", "labels/CMU_MOSI_Opinion_Labels.csd",
            # The subsets MMSA and MulT feed their models (FORMATS.md): 5 of COVAREP's 74, 20 of FACET 4.1.
            audio_columns=(1, 3, 6, 25, 60),
            vision_columns=(0, 2, 5, 10, 11, 12, 14, 17, 20, 21, 22, 24, 25, 29, 30, 31, 32, 36, 37, 40),
        ),
    },
))
_add(DatasetSpec(
    name="mosei",
    dims={"text": 768, "audio": 74, "vision": 35},
    seq_lens={"aligned": {"text": 50, "audio": 50, "vision": 50}, "unaligned": {"text": 50, "audio": 500, "vision": 500}},
    splits={"train": 16326, "valid": 1871, "test": 4659},
    label_range=3.0,
    metric_set="mosi",
    sources={
        "mmsa": (
            _pickle("aligned_50.pkl", "aligned", "45eccfb748a87c80ecab9bfac29582e7b1466bf6605ff29d3b338a75120bf791"),
            _pickle("unaligned_50.pkl", "unaligned", "ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f"),
        ),
        "mmsdk": _mmsdk(
            "CMU-MOSEI", "language/CMU_MOSEI_TimestampedWordVectors.csd", "acoustic/CMU_MOSEI_COVAREP.csd",
            "visual/CMU_MOSEI_VisualFacet42.csd", "labels/CMU_MOSEI_Labels.csd",
        ),
    },
))
def _chsims(name: str, dims: dict[str, int], seq_lens: dict[str, int], splits: dict[str, int], features: RemoteFile,
            **extra: str) -> DatasetSpec:
    """A CH-SIMS release: unaligned, labels in [-1, 1] with unimodal T/A/V labels, CH-SIMS' metrics, and its
    own label table (ids, splits, unimodal labels), which supplies the unimodal labels when a pickle lacks them."""
    return DatasetSpec(name=name, dims=dims, seq_lens={"unaligned": seq_lens}, splits=splits, label_range=1.0,
                       metric_set="sims", unimodal_labels=True,
                       sources={"mmsa": (features, RemoteFile("label.csv", None, role="label_csv", required=False))},
                       **extra)


_add(_chsims(
    "sims", {"text": 768, "audio": 33, "vision": 709}, {"text": 39, "audio": 400, "vision": 55},
    {"train": 1368, "valid": 456, "test": 457},
    _pickle("unaligned_39.pkl", "unaligned", "c9e20c13ec0454d98bb9c1e520e490c75146bfa2dfeeea78d84de047dbdd442f"),
))
# CH-SIMS v2.0 (Liu et al., ICMI 2022), its supervised part. Widths and padded lengths are those of the released
# `ch-simsv2s.pkl` as its authors' code reads it (thuiar/ch-sims-v2, config/config_regression.py: seq_lens
# (50, 925, 232), feature_dims (768, 25, 177), 2722 training clips); MMSA's config lists SIMS's numbers for
# simsv2, but its loader takes the shapes from the file. Splits: the dataset paper's. The authors publish no
# checksum: preprocess records the SHA-256 of the file it read.
_add(_chsims(
    "simsv2", {"text": 768, "audio": 25, "vision": 177}, {"text": 50, "audio": 925, "vision": 232},
    {"train": 2722, "valid": 647, "test": 1034}, RemoteFile("ch-simsv2s.pkl", None, None, role="unaligned"),
    by_hand=SIMSV2_BY_HAND,
))
