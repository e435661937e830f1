"""Attention layers that MISA and GLoMo share (blocks.py holds those every backbone may use)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msmix_cli.models.blocks import Dropout


class VectorFusionEncoder(nn.Module):
    """Self-attention across a handful of per-modality vectors: [N, d] each -> [N, k, d].

    Both MISA (as MMSA writes it) and GLoMo stack their six vectors into a short sequence and run torch's
    `nn.TransformerEncoder` with the default layer: post-norm, ReLU, a 2048-wide feed-forward and dropout
    0.1 whatever the width. That default layer is kept, rather than blocks' pre-norm one, so both backbones
    match their references in structure and size. Like `nn.TransformerEncoder`, the layers start as copies
    of one initialisation. There are no position embeddings: the layers after it tell the slots apart.
    The layer's three dropouts are blocks' `Dropout` (its draws are cheaper on the CPU; no state changes).
    """

    def __init__(self, dim: int, heads: int, layers: int, ffn: int, dropout: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ffn, dropout=dropout, batch_first=True)
        layer.dropout, layer.dropout1, layer.dropout2 = Dropout(dropout), Dropout(dropout), Dropout(dropout)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, vectors: list[Tensor]) -> Tensor:
        return self.encoder(torch.stack(vectors, dim=1))
