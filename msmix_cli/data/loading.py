"""From a dataset name to an open cache: generated on demand for `synth`, preprocessed beforehand for the rest."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Mapping

from msmix_cli import __version__
from msmix_cli.data.cache import CacheFile, cache_path, open_cache, write_cache
from msmix_cli.data.specs import DATASETS, DatasetSpec, data_root_default  # noqa: F401 (the CLI's import point)
from msmix_cli.data.synth import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, GENERATOR_VERSION, SPEC as SYNTH, generate_synth
from msmix_cli.errors import BadInput

def load_dataset(name: str, *, setting: str | None, data_root: Path, samples: int | None = None, data_seed: int = 0,
                 synth_dims: Mapping[str, int] | None = None, synth_seq_len: int | None = None,
                 in_memory: bool = True) -> CacheFile:
    """Open the cache of dataset `name` in `setting` (None: the dataset's first setting).

    `samples`, `data_seed`, `synth_dims` and `synth_seq_len` shape the synthetic benchmark; `synth` caches are
    named by a hash of them and generated when missing. A real dataset's cache must exist already.
    `in_memory=False` keeps features on disk (see `open_cache`).
    """
    spec = DATASETS.get(name, data_root)
    setting = _resolve_setting(spec, setting)
    if name == SYNTH.name:
        path = _synth_cache(Path(data_root), samples, data_seed, synth_dims, synth_seq_len)
    else:
        _refuse_synth_options(samples, synth_dims, synth_seq_len)
        path = cache_path(data_root, name, setting)
        if not path.is_file():
            preprocess = f"msmix preprocess --dataset {name}{_setting_flag(spec, setting)}"
            raise BadInput(f"{path} not found; create it with `msmix download --dataset {name}` (add `--from PATH` "
                           f"for MMSA's feature pickles) then `{preprocess}`")
    cache = open_cache(path, in_memory=in_memory)
    if (cache.dataset, cache.setting) != (name, setting):
        cache.close()
        raise BadInput(f"{path} holds {cache.dataset} ({cache.setting}), not {name} ({setting}); recreate it")
    return cache


def _setting_flag(spec: DatasetSpec, setting: str) -> str:
    return "" if setting == spec.settings[0] else f" --setting {setting}"


def _resolve_setting(spec: DatasetSpec, setting: str | None) -> str:
    if setting is None:
        return spec.settings[0]
    if setting not in spec.seq_lens:
        raise BadInput(f"{spec.name} has no setting {setting!r}; choose one of: {', '.join(spec.settings)}")
    return setting


def _refuse_synth_options(samples: int | None, dims: Mapping[str, int] | None, seq_len: int | None) -> None:
    if samples is not None:
        raise BadInput("--samples applies to synth only")
    if dims is not None or seq_len is not None:
        raise BadInput("synthetic feature widths and sequence length apply to synth only")


def synth_cache_path(data_root: Path, parameters: Mapping[str, object]) -> Path:
    """Named by a hash of every parameter (defaults filled in), so equal data always gets one file."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]
    return Path(data_root) / "cache" / f"{SYNTH.name}-{digest}.h5"


def _synth_cache(data_root: Path, samples: int | None, seed: int, dims: Mapping[str, int] | None,
                 seq_len: int | None) -> Path:
    total = DEFAULT_SAMPLES if samples is None else samples
    widths = {**SYNTH.dims, **(dims or {})}
    length = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    parameters = {"generator_version": GENERATOR_VERSION, "samples": total, "seed": seed, "dims": widths,
                  "seq_len": length}
    path = synth_cache_path(data_root, parameters)
    if not path.is_file():
        splits = generate_synth(samples=total, seed=seed, dims=widths, seq_len=length)
        provenance = {"source": "generated", "generator": "msmix_cli.data.synth", **parameters,
                      "msmix_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_cache(path, dataset=SYNTH.name, setting=SYNTH.settings[0], splits=splits,
                    label_range=SYNTH.label_range, provenance=provenance)
    return path
