"""Low-rank Multimodal Fusion (Liu et al., ACL 2018), as MMSA implements it (`models/singleTask/LMF.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from msmix_cli.models.base import BACKBONES, Backbone, HeadOutput, Latents
from msmix_cli.models.blocks import UnimodalSubnets, append_one
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal


@dataclass
class LMFConfig:
    """MMSA's MOSI settings. Triples are in (text, audio, vision) order."""

    hidden_dims: tuple[int, int, int] = (128, 16, 128)  # text LSTM, audio MLP, vision MLP
    text_out: int = 64  # MMSA: text hidden // 2
    # MMSA's config lists 0.3 for text, but its TextSubNet zeroes the dropout of a one-layer LSTM, so 0.0 is
    # what the reference runs. Its fourth (post-fusion) dropout is defined but never applied, so it is absent.
    dropouts: tuple[float, float, float] = (0.0, 0.3, 0.3)
    rank: int = 3
    factor_lr: float = 1e-3  # learning rate of the fusion factors; the rest uses train.lr


@BACKBONES.register("lmf")
class LMF(Backbone):
    """Low-rank Multimodal Fusion.

    `encode` ends at the three unimodal subnet outputs, exactly as in TFN: text [B, text_out], audio
    [B, hidden_a], vision [B, hidden_v]. MS-Mix mixes these vectors. `head` appends a 1 to each, projects
    it with `rank` modality-specific factors, multiplies the three projections elementwise and sums the
    rank terms with learned weights plus a bias: TFN's tensor fusion without ever forming the tensor.
    """

    config_class = LMFConfig
    task_loss = "l1"

    def __init__(self, config: LMFConfig, shape: DataShape) -> None:
        super().__init__(config, shape)
        self.subnets = UnimodalSubnets(shape.dims, config.hidden_dims, config.text_out, config.dropouts)
        self.latent_dims = dict(self.subnets.out_dims)
        self.factors = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(config.rank, self.latent_dims[m] + 1, 1))) for m in MODALITIES
        })
        self.fusion_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, config.rank)))
        self.fusion_bias = nn.Parameter(torch.zeros(1, 1))

    def encode(self, batch: Batch) -> Latents:
        return Latents(self.subnets(batch.inputs))

    def head(self, views: Multimodal) -> HeadOutput:
        projections = [torch.matmul(append_one(views[m]), self.factors[m]) for m in MODALITIES]  # [rank, N, 1] each
        product = math.prod(projections)
        prediction = torch.matmul(self.fusion_weights, product.permute(1, 0, 2)).squeeze(1) + self.fusion_bias
        return HeadOutput(prediction)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The fusion (factors, weights, bias) at `factor_lr`, the subnets at `lr`; one weight decay for both,
        as MMSA's LMF trainer. MMSA leaves the fusion weights and bias out of its optimiser (they keep their
        initial values); msmix trains them with the factors."""
        fusion = [*self.factors.values(), self.fusion_weights, self.fusion_bias]
        fusion_ids = {id(p) for p in fusion}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in fusion_ids]
        return [
            {"params": fusion, "lr": self.config.factor_lr, "weight_decay": weight_decay},
            {"params": rest, "lr": lr, "weight_decay": weight_decay},
        ]
