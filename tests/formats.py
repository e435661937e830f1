"""Small files in exactly the published layouts (FORMATS.md), for the readers' tests.

- `write_csd`: a CMU Multimodal SDK computational sequence (HDF5): one root group, data/<video>/{features,
  intervals} gzip-compressed, metadata/<key> as (1,) variable-length strings holding json.dumps(value).
- `mmsa_split` / `write_pickle`: an MMSA feature pickle, {"train", "valid", "test"} -> dict of arrays.
- `write_label_csv`: CH-SIMS' label.csv.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

METADATA_KEYS = ("root name", "computational sequence description", "computational sequence version",
                 "alignment compatible", "dataset name", "dataset version", "creator", "contact",
                 "featureset bib citation", "dataset bib citation", "dimension names", "md5", "uuid")


def write_csd(path: Path, root: str, videos: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
              metadata: bool = True, data_group: bool = True) -> Path:
    """`videos`: video id -> (features (n, D), intervals (n, 2)). `metadata`/`data_group` False break the layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        group = handle.create_group(root)
        if data_group:
            data = group.create_group("data")
            for video, (features, intervals) in videos.items():
                entry = data.create_group(video)
                entry.create_dataset("features", data=features, compression="gzip")
                entry.create_dataset("intervals", data=intervals, compression="gzip")
        if metadata:
            meta = group.create_group("metadata")
            values: dict[str, Any] = {key: "" for key in METADATA_KEYS}
            values.update({"root name": root, "dataset name": "test", "alignment compatible": True,
                           "dimension names": [f"d{i}" for i in range(_width(videos))]})
            for key, value in values.items():
                dataset = meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
                dataset[0] = json.dumps(value)
    return path


def _width(videos: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> int:
    return next(iter(videos.values()))[0].shape[1] if videos else 0


def intervals(*pairs: tuple[float, float]) -> np.ndarray:
    return np.array(pairs, dtype=np.float64).reshape(-1, 2)


def frames(count: int, rate: float, start: float = 0.0) -> np.ndarray:
    """`count` back-to-back frame intervals of 1/rate seconds from `start`."""
    edges = start + np.arange(count + 1) / rate
    return np.stack([edges[:-1], edges[1:]], axis=1)


def mmsa_split(n: int, seq_lens: Mapping[str, int], dims: Mapping[str, int], *, aligned: bool, seed: int = 0,
               unimodal: bool = False, label_range: float = 3.0, prefix: str = "vid") -> dict[str, np.ndarray]:
    """One split as MMSA stores it: float64 features zero-padded at the end, BERT ids as floats, -inf in audio."""
    rng = np.random.default_rng(seed)
    lengths = {m: rng.integers(1, seq_lens[m] + 1, size=n) for m in ("text", "audio", "vision")}
    split: dict[str, np.ndarray] = {}
    for m in ("text", "audio", "vision"):
        x = rng.normal(size=(n, seq_lens[m], dims[m]))
        valid = (lengths["text"] if aligned else lengths[m])
        x[np.arange(seq_lens[m])[None, :] >= valid[:, None]] = 0.0
        split[m] = x
    split["audio"][0, 0, 0] = -np.inf
    mask = (np.arange(seq_lens["text"])[None, :] < lengths["text"][:, None]).astype(np.float64)
    ids = rng.integers(100, 30000, size=(n, seq_lens["text"])) * mask
    split["text_bert"] = np.stack([ids, mask, np.zeros_like(mask)], axis=1)
    if not aligned:
        split["audio_lengths"] = lengths["audio"]
        split["vision_lengths"] = lengths["vision"]
    split["regression_labels"] = np.round(rng.uniform(-label_range, label_range, size=n), 1)
    if unimodal:
        for m in ("T", "A", "V"):
            split[f"regression_labels_{m}"] = np.round(rng.uniform(-label_range, label_range, size=n), 1)
    split["classification_labels"] = np.sign(split["regression_labels"]) + 1
    split["id"] = np.array([f"{prefix}{i}$_${i % 3}" for i in range(n)], dtype=object)
    split["raw_text"] = np.array([f"words of sample {i}" for i in range(n)], dtype=object)
    split["annotations"] = np.array(["Neutral"] * n, dtype=object)
    return split


def write_pickle(path: Path, content: Any, protocol: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=protocol)
    return path


def write_label_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
