"""Researchers' own features as named datasets: any MMSA-layout pickle, or `.csd` files of their own.

`import_pickle` takes the widths, padded lengths, setting and label range from the file itself (every split
must agree with the training split), optionally replacing one modality by the same key of another pickle
with the same ids (MMSA's `feature_T/A/V`). `import_csd` aligns and cuts the user's computational sequences
exactly as the SDK route does, with a published dataset's folds and lengths. Either writes
`<data-root>/cache/<name>-<setting>.h5` marked with `like`: the published dataset whose shipped recipes
and metric set the import trains with. `DATASETS.get(name)` finds it there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from msmix_cli.data.cache import IMPORTABLE_SETTINGS, SplitArrays, cache_path, read_summary
from msmix_cli.data.mmsa import SPLITS, UNIMODAL, id_text, load_pickle, read_mmsa_content
from msmix_cli.data.mmsdk import DEFAULT_TOLERANCE
from msmix_cli.data.preprocess import (InputFile, PreprocessReport, ProgressCallback, ReadSplits, read_csd_files,
                                       write_splits)
from msmix_cli.data.specs import DATASETS, IMPORTED_NAME, DatasetSpec
from msmix_cli.errors import BadInput
from msmix_cli.types import MODALITIES

# What a replacement takes from the other pickle: the features, and what describes their steps
REPLACED_KEYS = {"text": ("text", "text_bert"), "audio": ("audio", "audio_lengths"),
                 "vision": ("vision", "vision_lengths")}
KNOWN_RANGES = (1.0, 3.0)  # CH-SIMS' [-1, 1] and MOSI's [-3, 3]: the label range an import takes by default
CSD_ROLES = (*MODALITIES, "labels")


def check_name(name: str) -> None:
    if name in DATASETS:
        raise BadInput(f"{name} is a published dataset; import your features under another --name")
    if not IMPORTED_NAME.fullmatch(name):
        raise BadInput(f"--name must be 1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-'; "
                       f"got {name!r}")


def import_pickle(name: str, path: Path, *, data_root: Path, setting: str | None = None,
                  label_range: float | None = None, like: str | None = None,
                  replace: Mapping[str, Path] | None = None, normalize: bool = False,
                  progress: ProgressCallback | None = None) -> PreprocessReport:
    """Import the MMSA-layout pickle `path` as dataset `name`; `replace` maps a modality to another pickle."""
    check_name(name)
    path = Path(path)
    content = _splits_of(load_pickle(path), path)
    inputs = [InputFile(path)]
    notes: list[str] = []
    for modality, other in (replace or {}).items():
        _replace_modality(content, path, modality, Path(other))
        inputs.append(InputFile(Path(other)))
        notes.append(f"{modality} taken from {Path(other).name}")
    if _without_token_ids(content):
        notes.append("text_bert holds no token ids (its mask is all zero): left out")
    dims, seq_lens = _shape(content, path)
    setting = _setting(setting, seq_lens, path)
    bound = _label_range(content, path, label_range)
    like_spec = _like(like, bound)
    spec = DatasetSpec(name=name, dims=dims, seq_lens={setting: seq_lens}, splits={}, label_range=bound,
                       metric_set=like_spec.metric_set, unimodal_labels=_has_unimodal_labels(content))
    data = read_mmsa_content(content, path, spec, setting)
    _check_other_setting(data_root, name, setting, data.splits["train"], bound, like_spec.name)
    notes += [f"{count} NaN/inf {m} values set to 0" for m, count in data.replaced_nonfinite.items() if count]
    notes.append(f"labels within ±{bound:g} ({'given' if label_range else 'from the data'}); trains with "
                 f"{like_spec.name}'s recipes and metrics")
    facts = {"replaced_nonfinite": data.replaced_nonfinite, "clipped_lengths": data.clipped_lengths,
             "replaced_modalities": {m: Path(p).name for m, p in (replace or {}).items()}, "like": like_spec.name}
    read = ReadSplits(data.splits, inputs, facts, notes)
    return write_splits(read, data_root=data_root, dataset=name, source="pickle", setting=setting, label_range=bound,
                        normalize=normalize, report=progress or _quiet, like=like_spec.name)


def import_csd(name: str, folder: Path, *, data_root: Path, features: Mapping[str, Path] | None = None,
               setting: str | None = None, like: str = "mosi", label_range: float | None = None,
               tolerance: float = DEFAULT_TOLERANCE, normalize: bool = False,
               progress: ProgressCallback | None = None) -> PreprocessReport:
    """Import `.csd` files as dataset `name`, with the folds and padded lengths of the published `like`.

    `features` maps a role (text, audio, vision, labels) to a file (relative to `folder`), read with all its
    columns; a role not given is `like`'s published file in `folder`, read with the columns the field uses.
    """
    check_name(name)
    like_spec = DATASETS.get(like) if like in DATASETS else None
    if like_spec is None or "mmsdk" not in like_spec.sources:
        with_sdk = [n for n in DATASETS if "mmsdk" in DATASETS.get(n).sources]
        raise BadInput(f"--like {like} has no CMU SDK folds; choose one of: {', '.join(with_sdk)}")
    setting = setting or like_spec.settings[0]
    if setting not in like_spec.seq_lens:
        raise BadInput(f"{like} has no setting {setting!r}; choose one of: {', '.join(like_spec.settings)}")
    published = {f.role: f for f in like_spec.source_files("mmsdk")}
    given = dict(features or {})
    unknown = sorted(set(given) - set(CSD_ROLES))
    if unknown:
        raise BadInput(f"unknown role {unknown[0]!r} in --features; the roles are: {', '.join(CSD_ROLES)}")
    paths = {role: Path(folder) / (given[role] if role in given else published[role].name) for role in CSD_ROLES}
    for role, file in paths.items():
        if not file.is_file():
            raise BadInput(f"{file} not found: {role} is read from {published[role].name} in {folder}, or from "
                           f"the file you name with --features {role}=FILE")
    columns = {role: None if role in given else published[role].columns for role in CSD_ROLES}
    dims = {m: like_spec.dims[m] for m in ("audio", "vision") if m not in given}
    bound = like_spec.label_range if label_range is None else _given_range(label_range)
    read = read_csd_files(paths, setting=setting, seq_lens=like_spec.seq_lens[setting], dims=dims, columns=columns,
                          label_range=bound, folds=None, standard=like, tolerance=tolerance,
                          report=progress or _quiet)
    _check_other_setting(data_root, name, setting, read.splits["train"], bound, like)
    read.notes.append(f"labels within ±{bound:g}; folds and padded lengths of {like}; overlap tolerance "
                      f"{tolerance:g} s; trains with {like}'s recipes and metrics")
    return write_splits(read, data_root=data_root, dataset=name, source="csd", setting=setting, label_range=bound,
                        normalize=normalize, report=progress or _quiet, like=like)


def _quiet(stage: str, done: int, total: int) -> None:
    pass


def _splits_of(content: Any, path: Path) -> dict[str, dict]:
    if not isinstance(content, dict) or any(not isinstance(content.get(s), dict) for s in SPLITS):
        found = [str(k) for k in content] if isinstance(content, dict) else type(content).__name__
        raise BadInput(f"{path}: an MMSA pickle is a dict of splits {', '.join(SPLITS)}, each a dict of arrays; "
                       f"found {found}")
    return content


def _ids(split: dict, path: Path, name: str) -> list[str]:
    ids = split.get("id")
    if not isinstance(ids, np.ndarray) or ids.ndim != 1:
        raise BadInput(f"{path}: {name}/id must be a vector of sample ids")
    return [id_text(i, f"{path}: {name}/id", errors="replace") for i in ids]


def _replace_modality(content: dict, path: Path, modality: str, other_path: Path) -> None:
    """Put `other_path`'s arrays of `modality` into `content`, in `content`'s sample order (matched by id)."""
    other = _splits_of(load_pickle(other_path), other_path)
    for name in SPLITS:
        mine, theirs = content[name], other[name]
        ids, their_ids = _ids(mine, path, name), _ids(theirs, other_path, name)
        position = {sample: row for row, sample in enumerate(their_ids)}
        missing = [sample for sample in ids if sample not in position]
        if missing or len(position) != len(their_ids) or len(their_ids) != len(ids):
            example = f" (e.g. {missing[0]!r} is not in it)" if missing else ""
            raise BadInput(f"{other_path}: its {name} ids are not those of {path}{example}; a replacement "
                           f"{modality} must hold the same samples, each once")
        order = np.array([position[sample] for sample in ids], dtype=np.int64)
        for key in REPLACED_KEYS[modality]:
            value = theirs.get(key)
            if value is None and key != modality:
                mine.pop(key, None)  # the old file's lengths or token ids do not describe the new features
                continue
            if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != len(ids):
                raise BadInput(f"{other_path}: {name}/{key} must be an array with one row per sample ({len(ids)})")
            mine[key] = value[order]


def _without_token_ids(content: dict) -> bool:
    """Drop `text_bert` when it holds no token ids anywhere (released files with text features only zero it)."""
    arrays = [content[s].get("text_bert") for s in SPLITS]
    empty = all(isinstance(a, np.ndarray) and a.ndim == 3 and a.shape[1] == 3 and a.dtype.kind in "biuf"
                and not np.any(a[:, 1]) for a in arrays)
    if empty:
        for s in SPLITS:
            del content[s]["text_bert"]
    return empty


def _shape(content: dict, path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Widths and padded lengths of the training split; `read_mmsa_content` holds the other splits to them."""
    dims, seq_lens = {}, {}
    for m in MODALITIES:
        array = content["train"].get(m)
        if not isinstance(array, np.ndarray) or array.ndim != 3 or array.dtype.kind not in "biuf":
            found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
            raise BadInput(f"{path}: train/{m} must be an (N, L, D) array of numbers; found {found}")
        if array.shape[1] < 1 or array.shape[2] < 1:
            raise BadInput(f"{path}: train/{m} has shape {array.shape}; every sample needs at least one step of "
                           "at least one feature")
        seq_lens[m], dims[m] = int(array.shape[1]), int(array.shape[2])
    return dims, seq_lens


def _setting(setting: str | None, seq_lens: Mapping[str, int], path: Path) -> str:
    """Aligned when the three modalities share one padded length (every step is a word), unless told."""
    equal = len(set(seq_lens.values())) == 1
    if setting is None:
        return "aligned" if equal else "unaligned"
    if setting not in IMPORTABLE_SETTINGS:
        raise BadInput(f"--setting must be one of: {', '.join(IMPORTABLE_SETTINGS)}; got {setting!r}")
    if setting == "aligned" and not equal:
        lengths = ", ".join(f"{m} {n}" for m, n in seq_lens.items())
        raise BadInput(f"{path}: aligned features share one padded length; these have {lengths}")
    return setting


def _label_range(content: dict, path: Path, given: float | None) -> float:
    """`given`, else the smallest of CH-SIMS' and MOSI's ranges that holds every finite label."""
    if given is not None:
        return _given_range(given)
    largest = 0.0
    for name in SPLITS:
        labels = content[name].get("regression_labels")
        if isinstance(labels, np.ndarray) and labels.dtype.kind in "biuf":
            finite = np.abs(labels[np.isfinite(labels)])
            largest = max(largest, float(finite.max(initial=0.0)))
    for bound in KNOWN_RANGES:
        if largest <= bound + 1e-6:
            return bound
    raise BadInput(f"{path}: labels reach ±{largest:g}, beyond MOSI's [-3, 3]; give their range with "
                   "--label-range R (labels in [-R, R])")


def _given_range(given: float) -> float:
    if not (0 < given < float("inf")):
        raise BadInput(f"--label-range must be a positive number; got {given:g}")
    return float(given)


def _like(like: str | None, bound: float) -> DatasetSpec:
    if like is not None and like not in DATASETS:
        raise BadInput(f"--like names a published dataset: {', '.join(DATASETS.names())}; got {like!r}")
    spec = DATASETS.get(like or ("sims" if bound <= 1 else "mosi"))
    if spec.metric_set == "sims" and bound > spec.label_range:  # MOSI's Acc-2, MAE and Corr take any range
        raise BadInput(f"--like {spec.name} scores with CH-SIMS' metrics, which clip to ±{spec.label_range:g}; these "
                       f"labels lie within ±{bound:g}")
    return spec


def _has_unimodal_labels(content: dict) -> bool:
    return all(f"regression_labels_{m}" in content[s] for s in SPLITS for m in UNIMODAL)


def _check_other_setting(data_root: Path, name: str, setting: str, train: SplitArrays, bound: float,
                         like: str) -> None:
    """Both settings of one name must describe the same features: widths, label range and recipes agree."""
    dims = {m: int(train.features[m].shape[2]) for m in MODALITIES}
    for other in IMPORTABLE_SETTINGS:
        path = cache_path(data_root, name, other)
        if other == setting or not path.is_file():
            continue
        summary = read_summary(path)
        if (summary.dims, summary.label_range, summary.like) != (dims, bound, like):
            raise BadInput(f"{name} already has an {other} cache ({path}) with widths {summary.dims}, labels within "
                           f"±{summary.label_range:g} and {summary.like}'s recipes; this {setting} import has "
                           f"{dims}, ±{bound:g} and {like}'s: use another --name, or remove that cache first")
