"""SASS, sentiment-aware sample selection (MSMIX.md section 1): pair samples whose latents are similar.

Selection only picks indices, so it runs on detached latents, in float32 and outside autocast, on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from msmix_cli.mixing.base import masked_mean
from msmix_cli.types import Multimodal

FLAT_SPREAD = 1e-8  # below this max - min, similarities are indistinguishable (MSMIX.md 1.3)


def similarity_matrix(views: Multimodal) -> Tensor:
    """[B, B] float32: the mean over modalities of the cosine similarity of the samples' latents.

    msmix decides (MSMIX.md 1.1): a [B, T, d] latent is first mean-pooled over its valid steps, so padding
    never drives the similarity.
    """
    device_type = next(iter(views.features.values())).device.type
    with torch.autocast(device_type=device_type, enabled=False):
        per_modality = [_cosine(_pooled(views, m)) for m in views.features]
    return torch.stack(per_modality).mean(dim=0)


def _pooled(views: Multimodal, modality: str) -> Tensor:
    x = views[modality].detach().float()
    return x if x.dim() == 2 else masked_mean(x, views.mask(modality))


def _cosine(z: Tensor) -> Tensor:
    unit = F.normalize(z, dim=-1)
    return unit @ unit.T


def normalise_similarity(sim: Tensor) -> Tensor:
    """S': min-max over the off-diagonal entries only, diagonal 0; all 0.5 when they are (almost) equal."""
    size = sim.shape[0]
    off_diagonal = ~torch.eye(size, dtype=torch.bool, device=sim.device)
    sim = sim.float()
    if size < 2:
        return torch.zeros_like(sim)
    values = sim[off_diagonal]
    low, high = values.min(), values.max()
    if high - low <= FLAT_SPREAD:
        scaled = torch.full_like(sim, 0.5)
    else:
        scaled = (sim - low) / (high - low)
    return torch.where(off_diagonal, scaled, torch.zeros_like(scaled))


@dataclass(frozen=True)
class Selection:
    """The pairs SASS chose, and what a researcher needs to judge the choice."""

    pairs: Tensor  # [K, 2] long (i, j), i != j
    candidate_share: float  # share of the ordered pairs i != j that passed the threshold (and polarity)
    fell_back: bool  # too few candidates: the pairs came from the most similar ones instead


def select_pairs(
    sim: Tensor,
    num_mix: int,
    delta: float,
    rng: np.random.Generator,
    label: Tensor | None = None,
    same_polarity: bool = False,
    threshold: str = "relative",
    label_bandwidth: float | None = None,
) -> Selection:
    """K = num_mix pairs (i, j), i != j, on sim's device (MSMIX.md 1.3-1.6); none when B < 2.

    Candidates are the ordered pairs whose similarity passes delta: S'_ij > delta on the min-max normalised
    similarity (`threshold="relative"`, the authors'), or S_ij > delta on the raw mean cosine similarity
    (`"absolute"`, msmix's option: a per-batch min-max lets 70-94 % of pairs pass whatever the batch holds).
    num_mix of them are drawn without replacement, uniformly, or (msmix's option `label_bandwidth`, as C-Mixup
    does for regression) with weight exp(-(y_i - y_j)^2 / (2 bw^2)). With too few candidates, the
    2 * num_mix most similar pairs (i < j) are the pool instead, drawn without replacement when the pool is
    large enough, else with replacement.
    msmix decides: with `same_polarity`, sign(y_i) = sign(y_j) is required of candidates and of the fallback
    pool (0 matches only 0); only when no pair of the batch shares a sign does the fallback ignore polarity,
    so that a batch still yields mixed samples. Ties in similarity go to the lower pair index.
    """
    size = sim.shape[0]
    if size < 2:
        return Selection(torch.empty((0, 2), dtype=torch.long, device=sim.device), 0.0, False)
    scores = (normalise_similarity(sim) if threshold == "relative" else sim.float()).cpu().numpy()
    allowed = ~np.eye(size, dtype=bool)
    labels = None if label is None else label.detach().float().cpu().numpy()
    if same_polarity:
        if labels is None:
            raise ValueError("same_polarity needs the labels")
        sign = np.sign(labels)
        allowed &= sign[:, None] == sign[None, :]
    passed = allowed & (scores > delta)
    candidates = np.argwhere(passed)
    fell_back = len(candidates) < num_mix
    pool = _most_similar_pairs(scores, allowed, 2 * num_mix) if fell_back else candidates
    weights = None
    if label_bandwidth is not None:
        if labels is None:
            raise ValueError("label_bandwidth needs the labels")
        distance = labels[pool[:, 0]] - labels[pool[:, 1]]
        kernel = np.exp(-distance**2 / (2 * label_bandwidth**2)) + 1e-12  # every pair keeps some chance
        weights = kernel / kernel.sum()
    replace = len(pool) < num_mix
    if weights is not None and not replace:
        replace = np.count_nonzero(weights) < num_mix
    chosen = pool[rng.choice(len(pool), size=num_mix, replace=replace, p=weights)]
    share = float(passed.sum()) / (size * (size - 1))
    return Selection(torch.as_tensor(chosen, dtype=torch.long, device=sim.device), share, fell_back)


def _most_similar_pairs(scores: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
    """The `count` most similar pairs (i < j) of the strict upper triangle, among allowed ones if any."""
    rows, cols = np.triu_indices(scores.shape[0], k=1)
    keep = allowed[rows, cols]
    if keep.any():
        rows, cols = rows[keep], cols[keep]
    order = np.argsort(-scores[rows, cols], kind="stable")[:count]
    return np.stack([rows[order], cols[order]], axis=1)


def random_pairs(batch_size: int, num_mix: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> Tensor:
    """[K, 2] pairs (i, j) drawn uniformly among i != j: the -SASS ablation. K = 0 when B < 2."""
    if batch_size < 2:
        return torch.empty((0, 2), dtype=torch.long, device=device)
    first = rng.integers(0, batch_size, size=num_mix)
    second = (first + rng.integers(1, batch_size, size=num_mix)) % batch_size
    return torch.as_tensor(np.stack([first, second], axis=1), dtype=torch.long, device=device)
