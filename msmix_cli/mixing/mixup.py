"""Baselines: Mixup on the raw inputs and Manifold Mixup on the latents, one lambda per pair for all modalities."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from msmix_cli.mixing.base import MIXERS, Mix, Mixer, beta_draws, mix_pairs
from msmix_cli.types import Multimodal


PERMUTATION_KEYS = frozenset({"name", "alpha", "w_mix", "mix_loss", "warmup_epochs"})


def permutation_mix(views: Multimodal, label: Tensor, rng: np.random.Generator, alpha: float) -> Mix | None:
    """Sample i mixes with perm[i] (K = B) with lam ~ Beta(alpha, alpha); a fixed point mixes with itself."""
    size = views.batch_size
    if size < 2:
        return None
    partner = torch.as_tensor(rng.permutation(size), dtype=torch.long, device=label.device)
    pairs = torch.stack([torch.arange(size, device=label.device), partner], dim=1)
    lam = beta_draws(rng, alpha, size, label.device)
    mixed = mix_pairs(views, pairs, {m: lam for m in views.features})
    return Mix(mixed, label, label[partner], lam, stats={"pairs": pairs, "lam0": lam})


@MIXERS.register("mixup")
class Mixup(Mixer):
    """Input-level Mixup: the training loop passes the raw input features, before `encode`."""

    point = "input"
    reads = PERMUTATION_KEYS

    def forward(self, views: Multimodal, label: Tensor, rng: np.random.Generator) -> Mix | None:
        return permutation_mix(views, label, rng, self.config.alpha)


@MIXERS.register("manifold")
class ManifoldMixup(Mixer):
    """Manifold Mixup: the same mix, at the latent point where MS-Mix mixes."""

    point = "latent"
    reads = PERMUTATION_KEYS

    def forward(self, views: Multimodal, label: Tensor, rng: np.random.Generator) -> Mix | None:
        return permutation_mix(views, label, rng, self.config.alpha)
