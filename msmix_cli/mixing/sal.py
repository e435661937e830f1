"""SAL, the sentiment alignment loss (MSMIX.md section 3): batch intensity distributions follow the labels'."""

from __future__ import annotations

import torch
from torch import Tensor

from msmix_cli.mixing.sig import INTENSITY_BOUND

EPS = 1e-8


def sentiment_alignment_loss(intensity: dict[str, Tensor], label: Tensor, label_range: float, scale: float = 1000.0) -> Tensor:
    """scale * sum_m KL(q || p^m) / B, with q = softmax_B(|y| / label_range) and p^m = softmax_B(|I^m| / 3).

    KL(label || intensity), as the authors' code computes it (the paper writes the reverse). Both
    distributions get +1e-8, which keeps the loss >= 0 (equal totals) and 0 when they coincide. float32.
    """
    target = _batch_distribution(label.detach().float().abs() / label_range)
    divergences = [_kl(target, _batch_distribution(values.float().abs() / INTENSITY_BOUND)) for values in intensity.values()]
    return scale * torch.stack(divergences).sum() / label.shape[0]


def intensity_regression_loss(intensity: dict[str, Tensor], label: Tensor, label_range: float, scale: float = 1.0) -> Tensor:
    """scale * sum_m mean_B (I^m - 3 y / label_range)^2: each predictor regresses the label on the intensity scale.

    msmix's alternative to the KL (`mix.sal_kind: regression`): a softmax over the batch of |y| / 3 is almost
    uniform, so the KL hardly tells a predictor which sample is intense; a regression target does. float32.
    """
    target = label.detach().float() * (INTENSITY_BOUND / label_range)
    return scale * torch.stack([(values.float() - target).pow(2).mean() for values in intensity.values()]).sum()


def _batch_distribution(scores: Tensor) -> Tensor:
    return torch.softmax(scores.reshape(-1), dim=0) + EPS


def _kl(target: Tensor, predicted: Tensor) -> Tensor:
    return (target * (target.log() - predicted.log())).sum()
