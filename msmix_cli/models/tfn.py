"""Tensor Fusion Network (Zadeh et al., EMNLP 2017), as MMSA implements it (`models/singleTask/TFN.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msmix_cli.models.base import BACKBONES, Backbone, HeadOutput, Latents
from msmix_cli.models.blocks import Dropout, UnimodalSubnets, WideLinear, append_one, outer_product
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal


@dataclass
class TFNConfig:
    """MMSA's MOSI settings. Triples are in (text, audio, vision) order."""

    hidden_dims: tuple[int, int, int] = (128, 32, 128)  # text LSTM, audio MLP, vision MLP
    text_out: int = 32
    post_fusion_dim: int = 64
    # (text, audio, vision, post-fusion). MMSA's config lists 0.3 for text, but its TextSubNet zeroes the
    # dropout of a one-layer LSTM, so 0.0 is what the reference runs.
    dropouts: tuple[float, float, float, float] = (0.0, 0.3, 0.3, 0.5)


@BACKBONES.register("tfn")
class TFN(Backbone):
    """Tensor Fusion Network.

    `encode` ends at the three unimodal subnet outputs: text [B, text_out] (LSTM over the valid steps),
    audio [B, hidden_a] and vision [B, hidden_v] (mean over the valid steps, then a 3-layer MLP). MS-Mix
    mixes these vectors. `head` appends a 1 to each, takes their outer product (the tensor fusion,
    (d_t+1)(d_a+1)(d_v+1) wide), and runs the post-fusion MLP; the output is squashed into the label range
    with sigmoid · 2R − R (R = 3 for MOSI/MOSEI, 1 for CH-SIMS).
    """

    config_class = TFNConfig
    task_loss = "l1"

    def __init__(self, config: TFNConfig, shape: DataShape) -> None:
        super().__init__(config, shape)
        *subnet_dropouts, post_fusion_dropout = config.dropouts
        self.subnets = UnimodalSubnets(shape.dims, config.hidden_dims, config.text_out, tuple(subnet_dropouts))
        self.latent_dims = dict(self.subnets.out_dims)
        fused_dim = math.prod(width + 1 for width in self.latent_dims.values())
        self.post_fusion = nn.Sequential(
            Dropout(post_fusion_dropout),
            WideLinear(fused_dim, config.post_fusion_dim), nn.ReLU(),
            nn.Linear(config.post_fusion_dim, config.post_fusion_dim), nn.ReLU(),
            nn.Linear(config.post_fusion_dim, 1),
        )

    def encode(self, batch: Batch) -> Latents:
        return Latents(self.subnets(batch.inputs))

    def head(self, views: Multimodal) -> HeadOutput:
        text, audio, vision = (append_one(views[m]) for m in MODALITIES)
        fused = outer_product([audio, vision, text])  # MMSA's order: audio slowest, then vision, then text
        return HeadOutput(self._to_label_range(self.post_fusion(fused)))

    def _to_label_range(self, logit: Tensor) -> Tensor:
        span = self.shape.label_range
        return torch.sigmoid(logit) * (2 * span) - span
