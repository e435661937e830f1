"""Missing-modality robustness as a curve, the protocol recent MSA papers report (LNLN, MultiBench): at a
missing rate r, each modality of each test sample is zeroed with probability r, independently; the metrics
are averaged over several seeded draws.

Each (draw, modality) has one uniform number per sample, seeded by (seed, draw, modality) and indexed by the
sample's row in the split: a sample's fate does not depend on the batch size or the device, and the samples
missing at rate r are also missing at every higher rate, so the curve is not jagged by resampling.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from msmix_cli.errors import BadInput
from msmix_cli.naming import run_identity
from msmix_cli.training.perturb import Perturbation
from msmix_cli.training.rundir import RunDir
from msmix_cli.types import MODALITIES, Batch


def parse_rates(text: str) -> list[float]:
    """`"0,0.1,0.5"` -> [0.0, 0.1, 0.5]: each in [0, 1], no repeats, in the order given."""
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise BadInput(f"--missing-rate expects rates in [0, 1] separated by commas, e.g. 0,0.1,0.5; got {part.strip()!r}") from None
        if not 0 <= rate <= 1:
            raise BadInput(f"--missing-rate values must lie in [0, 1], got {rate:g}")
        if rate in rates:
            raise BadInput(f"--missing-rate names {rate:g} twice")
        rates.append(rate)
    return rates


def random_missing(rate: float, seed: int, draw: int) -> Perturbation:
    """Zero each modality of each sample with probability `rate` (see the module's docstring for the draws)."""
    uniforms: dict[str, np.ndarray] = {m: np.empty(0) for m in MODALITIES}
    seen = 0  # rows of a batch without `index` are numbered by their position in the (unshuffled) stream

    def uniform(modality: str, rows: list[int]) -> np.ndarray:
        needed = max(rows) + 1
        if len(uniforms[modality]) < needed:  # a generator's stream is prefix-stable: regenerating longer keeps it
            generator = np.random.default_rng(np.random.SeedSequence([seed, draw, MODALITIES.index(modality)]))
            uniforms[modality] = generator.random(max(needed, 2 * len(uniforms[modality])))
        return uniforms[modality][rows]

    def perturb(batch: Batch) -> Batch:
        nonlocal seen
        rows = batch.index.tolist() if batch.index is not None else list(range(seen, seen + batch.size))
        seen += batch.size
        features = {}
        for m, x in batch.inputs.features.items():
            missing = torch.as_tensor(uniform(m, rows) < rate, device=x.device)
            if m == "text" and batch.text_ids is not None and bool(missing.any()):
                raise BadInput("--missing-rate zeroes features; a run that fine-tunes a text encoder reads token ids instead")
            features[m] = torch.where(missing.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(x), x)
        return replace(batch, inputs=replace(batch.inputs, features=features))

    return perturb


def missing_rate_curve(run: RunDir, *, data_root: Path, rates: Sequence[float], draws: int, seed: int,
                       split: str = "test", device: str = "cpu") -> list[dict[str, Any]]:
    """One row per rate: the run's identity, the rate, and each metric's mean and std over the draws."""
    from msmix_cli.training.loop import build, checkpoint_into, evaluate

    if draws < 1:
        raise BadInput(f"--missing-draws must be >= 1, got {draws}")
    recipe = run.recipe()
    setup = build(recipe, data_root, device)
    checkpoint_into(run.best_file, setup.device, lambda saved: setup.model.load_state_dict(saved["model"]))
    rows = []
    for rate in rates:
        repeats = 1 if rate in (0.0, 1.0) else draws  # nothing is random at 0 or 1
        results = [evaluate(setup, split, random_missing(rate, seed, draw))[0] for draw in range(repeats)]
        row: dict[str, Any] = {"run": run.path.name, **run_identity(recipe), "split": split, "missing_rate": rate,
                               "draws": repeats}
        for name in results[0]:
            values = [r[name] for r in results]
            row[name] = float(np.mean(values))
            row[f"{name}_std"] = float(np.std(values, ddof=1)) if repeats > 1 else math.nan
        rows.append(row)
    return rows
