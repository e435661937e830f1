"""What a run records per epoch beyond its loss: each loss term, how the mixer mixed, and (on request) the
gradient each term sends to each part of the model. Every column lands in `history.csv`.

Mixing columns (present when the mixer mixes):
    pairs_same_sign / random_same_sign   share of chosen pairs with equal label sign / of all pairs i != j of the batch
    pairs_abs_dy / random_abs_dy         mean |y_i - y_j| of chosen pairs / of all pairs i != j of the batch
    sass_candidates, sass_fallback       share of pairs passing SASS's threshold; share of batches that fell back
    lam_y_mean/std, lam_<m>_mean/std     label and per-modality mixing ratios
    saturated_<m>                        share of intensities with |I| > 2.9 (3 tanh saturated)
    corr_I_<m>                           Pearson correlation of |I^m| and |y| over the epoch's training samples
    valid_corr_I_<m>, valid_corr_signed_I_<m>, valid_corr_abs_prediction
                                         on validation: corr(|I^m|, |y|), corr(I^m, y), and the model's own
                                         corr(|prediction|, |y|), the ceiling a magnitude predictor is read against
The "random" columns are exact expectations over the batch, not a second draw: they show what uniform pairing
would have given the same batch, so a selection that selects stands out.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from msmix_cli.types import MODALITIES, Batch

SATURATED = 2.9  # |I| above this: 3 tanh has saturated and passes almost no gradient
TERMS = ("task", "mix", "sal", "aux")


class EpochLog:
    """Accumulates one epoch's loss terms, mixing statistics and gradient norms into history columns."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = defaultdict(float)
        self._weight: dict[str, float] = defaultdict(float)
        self._moments: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # n, sum, sum of squares
        self._intensity: dict[str, list[np.ndarray]] = defaultdict(list)
        self._abs_label: list[np.ndarray] = []

    def _mean(self, key: str, value: float, weight: float = 1.0) -> None:
        self._sum[key] += value * weight
        self._weight[key] += weight

    def mean(self, key: str) -> float:
        return self._sum[key] / self._weight[key]

    def add_terms(self, terms: dict[str, Tensor], size: int) -> None:
        for name, value in terms.items():
            self._mean(f"train_{name}", float(value.detach()), size)

    def add_mix(self, stats: dict[str, Tensor], label: Tensor) -> None:
        y = label.detach().float().cpu()
        pairs = stats["pairs"].cpu()
        if len(pairs) == 0:
            return
        first, second = y[pairs[:, 0]], y[pairs[:, 1]]
        self._mean("pairs_same_sign", float((torch.sign(first) == torch.sign(second)).float().mean()))
        self._mean("pairs_abs_dy", float((first - second).abs().mean()))
        same_sign, abs_dy = _all_pairs(y)
        self._mean("random_same_sign", same_sign)
        self._mean("random_abs_dy", abs_dy)
        if "candidate_share" in stats:
            self._mean("sass_candidates", float(stats["candidate_share"]))
            self._mean("sass_fallback", float(stats["fell_back"]))
        for key in ["lam_y", *(f"lam_{m}" for m in MODALITIES)]:
            if key in stats:
                values = stats[key].detach().float().cpu().numpy()
                moments = self._moments[key]
                moments[0] += values.size
                moments[1] += float(values.sum())
                moments[2] += float((values**2).sum())
        intensities = {m: stats[f"intensity_{m}"] for m in MODALITIES if f"intensity_{m}" in stats}
        if intensities:
            self._abs_label.append(y.abs().numpy())
            for m, values in intensities.items():
                magnitude = values.detach().float().abs().cpu().numpy()
                self._intensity[m].append(magnitude)
                self._mean(f"saturated_{m}", float((magnitude > SATURATED).mean()), magnitude.size)

    def add_grad_norms(self, norms: dict[str, float]) -> None:
        for key, value in norms.items():
            self._mean(f"grad_{key}", value)

    def row(self) -> dict[str, float]:
        row = {key: self._sum[key] / self._weight[key] for key in self._sum if self._weight[key] > 0}
        for key, (n, total, squares) in self._moments.items():
            mean = total / n
            row[f"{key}_mean"] = mean
            row[f"{key}_std"] = float(np.sqrt(max(squares / n - mean**2, 0.0)))
        if self._abs_label:
            labels = np.concatenate(self._abs_label)
            for m, chunks in self._intensity.items():
                row[f"corr_I_{m}"] = pearson(np.concatenate(chunks), labels)
        return row


def _all_pairs(y: Tensor) -> tuple[float, float]:
    """Share of equal signs and mean |y_i - y_j| over the ordered pairs i != j of one batch."""
    size = len(y)
    off_diagonal = size * (size - 1)
    sign = torch.sign(y)
    same = float((sign[:, None] == sign[None, :]).sum() - size) / off_diagonal
    distance = float((y[:, None] - y[None, :]).abs().sum()) / off_diagonal
    return same, distance


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (an untrained predictor may be)."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def intensity_correlations(intensities: dict[str, Sequence[Tensor]], labels: np.ndarray,
                           predictions: np.ndarray) -> dict[str, float]:
    """corr(|I^m|, |y|) and corr(I^m, y) on a split, from the predictors' outputs gathered batch by batch, and
    beside them corr(|prediction|, |y|) of the model itself: how much of the magnitude a trained model gets
    at all, the yardstick corr_I is read against (|y| is much harder to predict than y)."""
    if not intensities:
        return {}
    magnitude = np.abs(labels)
    values = {m: torch.cat(list(chunks)).numpy() for m, chunks in intensities.items()}
    return ({f"corr_I_{m}": pearson(np.abs(v), magnitude) for m, v in values.items()}
            | {f"corr_signed_I_{m}": pearson(v, labels) for m, v in values.items()}
            | {"corr_abs_prediction": pearson(np.abs(predictions), magnitude)})


def parameter_parts(model: nn.Module, mixer: nn.Module, batch: Batch) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters split into encoder, head and the mixer's predictors.

    The head's are those that `model.head` reaches from detached latents, whatever the backbone; the encoder's
    are the rest of the backbone's. Found in eval mode, so that no dropout draw or BatchNorm statistic of the
    run changes, then the model is put back in training mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        views = model.encode(batch).views.map(lambda _, x: x.detach())
        output = model.head(views).prediction
        grads = torch.autograd.grad(output.float().sum(), params, allow_unused=True)
    finally:
        model.train()
    head_ids = {id(p) for p, g in zip(params, grads) if g is not None}
    return {
        "encoder": [p for p in params if id(p) not in head_ids],
        "head": [p for p in params if id(p) in head_ids],
        "predictors": [p for p in mixer.parameters() if p.requires_grad],
    }


def term_grad_norms(terms: dict[str, Tensor], parts: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """||d term / d theta|| for each loss term and each part of the model, e.g. {"sal_encoder": 7.4}."""
    everything = [p for group in parts.values() for p in group]
    norms: dict[str, float] = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, everything, retain_graph=True, allow_unused=True)
        by_param = {id(p): g for p, g in zip(everything, grads)}
        for part, group in parts.items():
            squares = [by_param[id(p)].float().pow(2).sum() for p in group if by_param[id(p)] is not None]
            norms[f"{name}_{part}"] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms
