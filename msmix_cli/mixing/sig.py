"""SIG, sentiment-intensity-guided mixing ratios (MSMIX.md section 2): one ratio per modality and pair."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msmix_cli.mixing.base import masked_mean, valid_steps, zero_padding

INTENSITY_BOUND = 3.0  # intensities lie in (-3, 3), the MOSI/MOSEI label scale, whatever the dataset
PROJECT_ABOVE = 2000  # wider latents are first projected to PROJECTED_WIDTH (the authors' cut-off)
PROJECTED_WIDTH = 1024
EPS = 1e-8


class IntensityPredictor(nn.Module):
    """I^m = 3 tanh(Linear(mean-pool(LayerNorm(x + MHA(x))))) over the tokens of one sample (MSMIX.md 2.1).

    Tokens: the T steps of a [B, T, d] latent, attending only within their own sample and only to valid
    steps; a [B, d] latent is one token (the authors' residual MLP). msmix decides: `tokens` > 1 splits each
    step's vector into that many tokens (the width is zero-padded to a multiple of tokens * heads), so the
    option means the same for [B, d] and [B, T, d] latents. A sample of length 0 is read as its first step,
    so that attention always has a key to attend to.
    """

    def __init__(self, dim: int, heads: int = 4, tokens: int = 1) -> None:
        super().__init__()
        self.project = nn.Linear(dim, PROJECTED_WIDTH) if dim > PROJECT_ABOVE else nn.Identity()
        width = PROJECTED_WIDTH if dim > PROJECT_ABOVE else dim
        self.tokens = tokens
        self.padded_width = math.ceil(width / (tokens * heads)) * tokens * heads
        token_width = self.padded_width // tokens
        self.attention = nn.MultiheadAttention(token_width, heads, batch_first=True)
        self.norm = nn.LayerNorm(token_width)
        self.out = nn.Linear(token_width, 1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x [B, d] or [B, T, d] (lengths [B]) -> [B] intensities in (-3, 3), float32."""
        steps = x.unsqueeze(1) if x.dim() == 2 else x
        mask = valid_steps(None if lengths is None else lengths.clamp_min(1), steps.shape[1])
        tokens, token_mask = self._tokenise(self.project(zero_padding(steps, mask)), mask)
        attended, _ = self.attention(
            tokens, tokens, tokens, key_padding_mask=None if token_mask is None else ~token_mask, need_weights=False
        )
        hidden = self.norm(tokens + attended)
        return INTENSITY_BOUND * torch.tanh(self.out(masked_mean(hidden, token_mask)).squeeze(-1).float())

    def _tokenise(self, steps: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """[B, T, w] -> [B, T * tokens, padded_width / tokens], and the step mask repeated per token."""
        batch, length, width = steps.shape
        padded = F.pad(steps, (0, self.padded_width - width))
        tokens = padded.reshape(batch, length * self.tokens, self.padded_width // self.tokens)
        return tokens, None if mask is None else mask.repeat_interleave(self.tokens, dim=1)


def modality_ratios(intensity: dict[str, Tensor], pairs: Tensor, lam0: Tensor) -> dict[str, Tensor]:
    """lam^m_k = (lam0_k + lam^m_adapt,k) / 2 for each pair k = (i, j) (MSMIX.md 2.2-2.3), in [0, 1].

    w^m = |I^m| min-max normalised over the batch; lam^m_adapt = (w_i + 1e-8) / (w_i + w_j + 2e-8).
    Not detached: the mixing loss trains the intensity predictors through these ratios (MSMIX.md 2.6).
    """
    first, second = pairs[:, 0], pairs[:, 1]
    ratios: dict[str, Tensor] = {}
    for modality, values in intensity.items():
        weight = values.float().abs()
        weight = (weight - weight.min()) / (weight.max() - weight.min() + EPS)
        adapt = (weight[first] + EPS) / (weight[first] + weight[second] + 2 * EPS)
        ratios[modality] = (lam0.float() + adapt) / 2
    return ratios


def label_ratio(ratios: dict[str, Tensor]) -> Tensor:
    """lam^y: the mean of the per-modality ratios (MSMIX.md 2.4)."""
    return torch.stack(list(ratios.values())).mean(dim=0)
