"""The one interface every mixer implements: a seeded callable on per-modality features.

A mixer never knows which backbone it serves. `point` says where the training loop calls it: on the raw
inputs before `encode` ("input", vanilla Mixup) or on the latents `encode` returns ("latent").
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from msmix_cli.registry import Registry
from msmix_cli.types import Multimodal


@dataclass
class MixConfig:
    """MS-Mix and baseline settings; every one is a recipe key. The field defaults are the authors' values
    (docs/msmix.md); a recipe gets them through `preset: authors`, and msmix's recommended ones otherwise."""

    name: str = "msmix"  # none | mixup | manifold | msmix
    preset: str = "msmix"  # msmix | authors: fills the keys below that the recipe does not set (presets.py)
    alpha: float = 2.0  # Beta(alpha, alpha) for the base ratio lambda_0
    delta: float = 0.4  # SASS threshold on the min-max normalised similarity (paper 0.2, authors' code 0.4)
    num_mix: int | None = None  # mixed samples per batch; None = the batch size
    w_mix: float = 0.7  # weight of the mixed-sample loss
    w_sal: float = 0.5  # weight of SAL
    sal_scale: float = 1000.0  # the authors' SAL scale
    sass: bool = True  # similarity-aware pair selection (off: uniform random pairs)
    sig: bool = True  # intensity-guided per-modality ratios (off: lambda^m = lambda_0)
    sal: bool = True  # the alignment loss (off: w_sal = 0)
    same_polarity: bool = False  # msmix decides: also require sign(y_i) = sign(y_j)
    sig_tokens: int = 1  # split each latent vector into this many tokens for the intensity attention
    sig_heads: int = 4
    # What msmix adds to make each part do its job (docs/msmix.md has the evidence for each). The defaults
    # here are the authors' behaviour; the msmix preset (presets.py) names the recommended ones.
    sal_to_encoder: bool = True  # the intensity predictors read the latents undetached, so SAL trains the encoder too
    detach_ratio: bool = False  # false: the mixed loss trains the predictors through lambda (the authors)
    sal_kind: Literal["kl", "regression"] = "kl"  # kl: batch distributions (authors); regression: I^m regresses y
    sass_threshold: Literal["relative", "absolute"] = "relative"  # delta on the min-max normalised or the raw similarity
    label_bandwidth: float | None = None  # C-Mixup: draw pairs with weight exp(-(y_i - y_j)^2 / (2 bw^2))
    mix_loss: Literal["mse", "task"] = "mse"  # the mixed samples' loss: squared error (authors) or the backbone's own
    warmup_epochs: int = 0  # epochs trained without mixing before the mixer starts


@dataclass
class Mix:
    """K mixed samples and what the loss needs of them."""

    views: Multimodal  # the mixed features, same layout as the input of the mixer
    y_a: Tensor  # [K] label of the first partner
    y_b: Tensor  # [K] label of the second partner
    lam: Tensor  # [K] label ratio: the target is lam * y_a + (1 - lam) * y_b
    loss: Tensor | float = 0.0  # the mixer's own weighted loss (w_sal * SAL for MS-Mix)
    stats: dict[str, Tensor] = field(default_factory=dict)  # pairs [K, 2], per-modality ratios, ... (detached)


class Mixer(nn.Module):
    point: ClassVar[Literal["input", "latent"]] = "latent"
    # The MixConfig keys that change what this mixer (and the loop around it) does; a run's other mix keys are
    # inert, so two recipes that differ only there are the same experiment (`recipes.same_experiment`).
    reads: ClassVar[frozenset[str]] = frozenset(f.name for f in fields(MixConfig)) - {"preset"}

    def __init__(self, config: MixConfig, dims: dict[str, int], label_range: float) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.label_range = label_range

    def forward(self, views: Multimodal, label: Tensor, rng: np.random.Generator) -> Mix | None:
        """Mix samples of one batch. Returns None when nothing is mixed (the `none` mixer, batches of one)."""
        raise NotImplementedError

    def used_parameters(self) -> int:
        """Trainable parameters that take part in training (what `train --dry-run` counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


MIXERS: Registry[type[Mixer]] = Registry("mixer")


def mixer_settings(config: MixConfig) -> dict[str, object]:
    """The keys of `config` that its mixer reads, with their values."""
    return {key: getattr(config, key) for key in sorted(MIXERS.get(config.name).reads)}


def build_mixer(config: MixConfig, dims: dict[str, int], label_range: float) -> Mixer:
    return MIXERS.get(config.name)(config, dims, label_range)


def mix_loss(prediction: Tensor, mix: Mix, kind: str = "mse") -> Tensor:
    """mean_k [ lam_k l(p_k, y_a,k) + (1 - lam_k) l(p_k, y_b,k) ] over the K mixed predictions.

    l is the squared error (`mse`, the authors') or the absolute error (`l1`, what an L1 backbone trains on).
    """
    p = prediction.reshape(-1)
    error = (lambda y: (p - y).abs()) if kind == "l1" else (lambda y: (p - y).pow(2))  # noqa: E731
    return (mix.lam * error(mix.y_a) + (1 - mix.lam) * error(mix.y_b)).mean()


def beta_draws(rng: np.random.Generator, alpha: float, k: int, device: torch.device) -> Tensor:
    """k draws of Beta(alpha, alpha) from the run's seeded generator (torch's Beta takes no generator)."""
    return torch.as_tensor(rng.beta(alpha, alpha, size=k), dtype=torch.float32, device=device)


def valid_steps(lengths: Tensor | None, steps: int) -> Tensor | None:
    """[B, T] bool, True on the first `lengths` steps; None when every step is valid."""
    if lengths is None:
        return None
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """A copy of [B, T, d] with padded steps set to 0, so whatever the padding holds (even NaN) cannot leak."""
    if mask is None:
        return x
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of [B, T, d] over its valid steps -> [B, d]; a sample with no valid step pools to 0."""
    if mask is None:
        return x.mean(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
    return zero_padding(x, mask).sum(dim=1) / count


def mix_pairs(views: Multimodal, pairs: Tensor, ratios: dict[str, Tensor]) -> Multimodal:
    """z~^m_k = lam^m_k z^m_i + (1 - lam^m_k) z^m_j for each pair k = (i, j) of `pairs` [K, 2].

    The ratio broadcasts over time. Padded steps count as zeros, and a mixed sequence is as long as the
    longer partner (padding sits at the end). The mix is computed in float32 and returned in the
    features' own dtype, so bf16/fp16 latents stay in their dtype without losing the ratio's precision.
    """
    first, second = pairs[:, 0], pairs[:, 1]
    features: dict[str, Tensor] = {}
    for modality, x in views.features.items():
        clean = zero_padding(x, views.mask(modality))
        lam = ratios[modality].float().reshape(-1, *([1] * (x.dim() - 1)))
        features[modality] = (lam * clean[first] + (1 - lam) * clean[second]).to(x.dtype)
    lengths = {m: None if n is None else torch.maximum(n[first], n[second]) for m, n in views.lengths.items()}
    return Multimodal(features, lengths)
