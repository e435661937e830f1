"""Test-time perturbations for the robustness study: a modality zeroed, or Gaussian noise on the inputs.

Each builder returns a `Perturbation` (Batch -> Batch) that `evaluate_run(perturb=...)` applies to every
batch before the model sees it. They never touch the labels, never write into the batch they receive,
and keep padded steps at exactly zero, so a backbone's masking sees the same sequence lengths as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np
import torch

from msmix_cli.errors import BadInput
from msmix_cli.types import MODALITIES, Batch, Multimodal

Perturbation = Callable[[Batch], Batch]


def check_modalities(names: Iterable[str]) -> tuple[str, ...]:
    """Validate modality names (a user's `--drop-modality`); the order of MODALITIES, no repeats."""
    wanted = {name.strip() for name in names if name.strip()}
    unknown = sorted(wanted - set(MODALITIES))
    if unknown:
        raise BadInput(f"unknown modality {unknown[0]!r}; choose from: {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in wanted)


def drop_modalities(modalities: Iterable[str]) -> Perturbation:
    """Zero every step of the given modalities (the paper's occlusion of a whole modality)."""
    dropped = check_modalities(modalities)

    def perturb(batch: Batch) -> Batch:
        features = {m: torch.zeros_like(x) if m in dropped else x for m, x in batch.inputs.features.items()}
        # BERT token ids would let a text encoder see the text the features no longer carry.
        text_ids = None if "text" in dropped else batch.text_ids
        return replace(batch, inputs=replace(batch.inputs, features=features), text_ids=text_ids)

    return perturb


def gaussian_noise(sigma: float, *, seed: int = 0, modalities: Iterable[str] = MODALITIES) -> Perturbation:
    """Add N(0, sigma^2) to the valid steps of the given modalities, in the features' own units.

    Each sample's noise is drawn from its own generator, seeded by (seed, modality, row in the split), so a
    sample gets the same noise whatever the batch size, the device or the run: runs compared under noise
    see exactly the same perturbed inputs.
    """
    if not sigma >= 0:
        raise BadInput(f"--noise must be a standard deviation >= 0, got {sigma}")
    noisy = check_modalities(modalities)
    seen = 0  # rows of a batch without `index` are numbered by their position in the (unshuffled) stream

    def perturb(batch: Batch) -> Batch:
        nonlocal seen
        rows = batch.index.tolist() if batch.index is not None else list(range(seen, seen + batch.size))
        seen += batch.size
        inputs: Multimodal = batch.inputs
        features = dict(inputs.features)
        for m in noisy:
            x = inputs.features[m]
            noise = torch.stack([sample_noise(x.shape[1:], seed, MODALITIES.index(m), row) for row in rows])
            noise = noise.to(device=x.device, dtype=x.dtype)
            mask = inputs.mask(m)
            if mask is not None:
                noise = noise * mask.unsqueeze(-1).to(noise.dtype)
            features[m] = x + sigma * noise
        return replace(batch, inputs=replace(inputs, features=features))

    return perturb


def sample_noise(shape: torch.Size, *seeds: int) -> torch.Tensor:
    """Standard normal noise of `shape` from a CPU generator seeded by the integers `seeds`."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seeds).generate_state(1)[0]))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class PerturbSpec:
    """What `msmix evaluate --drop-modality/--noise` asks for: modalities to zero, noise to add, its seed."""

    dropped: tuple[str, ...] = ()
    sigma: float = 0.0
    noisy: tuple[str, ...] = MODALITIES
    seed: int = 0

    @classmethod
    def from_options(cls, drop: str | None, sigma: float | None, noise_on: str | None, seed: int) -> PerturbSpec:
        """From the CLI's comma lists ("audio,vision"); every name and value checked here."""
        if sigma is not None and not 0 <= sigma < math.inf:
            raise BadInput(f"--noise must be a finite standard deviation >= 0, got {sigma}")
        if seed < 0:  # the noise generators are seeded through numpy's SeedSequence, which takes none
            raise BadInput(f"--noise-seed must be >= 0, got {seed}")
        noisy = check_modalities(noise_on.split(",")) if noise_on else MODALITIES
        return cls(check_modalities((drop or "").split(",")), sigma or 0.0, noisy, seed)

    def build(self) -> Perturbation | None:
        """The perturbation, or None when nothing is asked. Noise first, so a zeroed modality stays zero."""
        steps = []
        noisy = tuple(m for m in self.noisy if m not in self.dropped)
        if self.sigma and noisy:
            steps.append(gaussian_noise(self.sigma, seed=self.seed, modalities=noisy))
        if self.dropped:
            steps.append(drop_modalities(self.dropped))
        return compose(steps)

    def describe(self) -> str:
        """One phrase for titles and CSV cells, e.g. "audio zeroed, noise σ=0.1 on text"; "" when unperturbed."""
        parts = []
        if self.dropped:
            parts.append(f"{'+'.join(self.dropped)} zeroed")
        noisy = tuple(m for m in self.noisy if m not in self.dropped)
        if self.sigma and noisy:
            where = "" if set(noisy) == set(MODALITIES) else f" on {'+'.join(noisy)}"
            parts.append(f"noise σ={self.sigma:g}{where}")
        return ", ".join(parts)


def compose(steps: list[Perturbation]) -> Perturbation | None:
    """Apply perturbations in order; None when there are none (evaluate_run's "unperturbed")."""
    if not steps:
        return None

    def perturb(batch: Batch) -> Batch:
        for step in steps:
            batch = step(batch)
        return batch

    return perturb
