"""ALMT: Adaptive Language-guided Multimodal Transformer (Zhang et al., EMNLP 2023, "Learning Language-guided
Adaptive Hyper-Modality Representation for Multimodal Sentiment Analysis"), after the authors' code
(Haoyu-ha/ALMT, `models/almt.py`, `models/almt_layer.py`, `configs/mosi.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msmix_cli.errors import BadInput
from msmix_cli.models.base import BACKBONES, Backbone, HeadOutput, Latents
from msmix_cli.models.blocks import Dropout
from msmix_cli.models.text_encoder import build_text_encoder, text_sequence, text_width
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal


@dataclass
class ALMTConfig:
    """The authors' MOSI settings (MOSEI and SIMS: fusion_depth 4)."""

    tokens: int = 8  # learned tokens per modality; their outputs are the latents
    dim: int = 128
    heads: int = 8  # embedding, text-encoder and fusion transformers
    dim_head: int = 64  # per head in those transformers (the attention is 512 wide at 8 heads)
    mlp_dim: int = 128
    embed_depth: int = 1  # the per-modality embedding transformers
    hyper_depth: int = 3  # hyper-modality layers; the text encoder has hyper_depth - 1 layers
    hyper_heads: int = 8
    hyper_dim_head: int = 16
    fusion_depth: int = 2
    dropout: float = 0.0  # the authors use none anywhere
    text_encoder: str | None = None  # local model directory (e.g. bert-base-uncased); None = the stored features
    finetune_text: bool = True


def multi_head(x: Tensor, heads: int) -> Tensor:
    """[B, T, heads * d] -> [B, heads, T, d]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    return x.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """ALMT's attention: bias-free query/key/value maps to heads x dim_head, an output map with bias.

    `key_mask` [B, S] bool, True on keys that may be attended to.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.query = nn.Linear(dim, inner, bias=False)
        self.key = nn.Linear(dim, inner, bias=False)
        self.value = nn.Linear(dim, inner, bias=False)
        self.out = nn.Sequential(nn.Linear(inner, dim), Dropout(dropout))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q, k, v = (multi_head(proj(x), self.heads) for proj, x in ((self.query, q), (self.key, k), (self.value, v)))
        allowed = None if key_mask is None else key_mask[:, None, None, :]
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)))


class Layer(nn.Module):
    """Pre-norm transformer layer with separate LayerNorms on queries, keys and values, and a GELU MLP.

    Without `source` it is self-attention; with it, queries come from x and keys/values from `source`
    (the authors' cross-transformer layer).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads, dim_head, dropout)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, mlp_dim), nn.GELU(), Dropout(dropout), nn.Linear(mlp_dim, dim), Dropout(dropout),
        )

    def forward(self, x: Tensor, source: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        source = x if source is None else source
        x = x + self.attention(self.norm_q(x), self.norm_k(source), self.norm_v(source), key_mask)
        return x + self.mlp(x)


class TokenEmbedding(nn.Module):
    """One modality's embedding stage: a linear projection, `tokens` learned tokens in front, learned
    positions, and a transformer; returns the outputs at the tokens, [B, tokens, dim].

    The authors take the first `tokens` outputs of an unmasked transformer; here padding steps are masked
    out of the keys, so the tokens summarise the valid steps only.
    """

    def __init__(self, in_dim: int, max_steps: int, c: ALMTConfig) -> None:
        super().__init__()
        self.max_steps = max_steps
        self.project = nn.Linear(in_dim, c.dim)
        self.tokens = nn.Parameter(torch.zeros(1, c.tokens, c.dim))
        self.positions = nn.Parameter(torch.randn(1, c.tokens + max_steps, c.dim))
        self.dropout = Dropout(c.dropout)
        self.layers = nn.ModuleList(Layer(c.dim, c.heads, c.dim_head, c.mlp_dim, c.dropout) for _ in range(c.embed_depth))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        batch, steps, _ = x.shape
        if steps > self.max_steps:
            raise BadInput(f"ALMT was built for sequences of at most {self.max_steps} steps and got {steps}")
        if mask is not None:
            # Padding may hold -inf or NaN (MOSI audio); masked keys still pass through the value map.
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        count = self.tokens.shape[1]
        h = torch.cat([self.tokens.expand(batch, -1, -1), self.project(x)], dim=1) + self.positions[:, : count + steps]
        h = self.dropout(h)
        key_mask = None if mask is None else torch.cat([mask.new_ones(batch, count), mask], dim=1)
        for layer in self.layers:
            h = layer(h, key_mask=key_mask)
        return h[:, :count]


class HyperModalityLayer(nn.Module):
    """One adaptive hyper-modality learning layer: text tokens query audio and vision (separate key/value
    maps each); the sum of both attended results, mapped back, shifts the hyper-modality tokens.

    As in the authors' code, the shift is added to the *normalised* hyper-modality tokens (their PreNorm
    wrapper normalises all four inputs and the layer updates its normalised copy in place).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_text, self.norm_audio, self.norm_vision, self.norm_hyper = (nn.LayerNorm(dim) for _ in range(4))
        self.query = nn.Linear(dim, inner, bias=False)
        self.key_audio = nn.Linear(dim, inner, bias=False)
        self.key_vision = nn.Linear(dim, inner, bias=False)
        self.value_audio = nn.Linear(dim, inner, bias=False)
        self.value_vision = nn.Linear(dim, inner, bias=False)
        self.out = nn.Sequential(nn.Linear(inner, dim), Dropout(dropout))

    def forward(self, text: Tensor, audio: Tensor, vision: Tensor, hyper: Tensor) -> Tensor:
        text, audio, vision = self.norm_text(text), self.norm_audio(audio), self.norm_vision(vision)
        q = multi_head(self.query(text), self.heads)
        from_audio = F.scaled_dot_product_attention(q, multi_head(self.key_audio(audio), self.heads), multi_head(self.value_audio(audio), self.heads))
        from_vision = F.scaled_dot_product_attention(q, multi_head(self.key_vision(vision), self.heads), multi_head(self.value_vision(vision), self.heads))
        return self.norm_hyper(hyper) + self.out(merge_heads(from_audio + from_vision))


class CrossFusion(nn.Module):
    """The authors' cross-transformer: one learned token (shared by both sides) in front of the source
    (hyper-modality) and target (text) tokens, learned positions per side, layers where the target queries
    the source; returns the target's first output, [B, dim]."""

    def __init__(self, c: ALMTConfig) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.source_positions = nn.Parameter(torch.randn(1, c.tokens + 1, c.dim))
        self.target_positions = nn.Parameter(torch.randn(1, c.tokens + 1, c.dim))
        self.dropout = Dropout(c.dropout)
        self.layers = nn.ModuleList(Layer(c.dim, c.heads, c.dim_head, c.mlp_dim, c.dropout) for _ in range(c.fusion_depth))

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        token = self.token.expand(source.shape[0], -1, -1)
        source = self.dropout(torch.cat([token, source], dim=1) + self.source_positions)
        target = self.dropout(torch.cat([token, target], dim=1) + self.target_positions)
        for layer in self.layers:
            target = layer(target, source)
        return target[:, 0]


@BACKBONES.register("almt")
class ALMT(Backbone):
    """ALMT with the authors' structure and initialisation.

    `encode`: per modality a `TokenEmbedding` (Linear to `dim`, 8 learned tokens prepended, learned
    positions, one transformer layer of 8 heads). `encode` ends at the outputs of the learned tokens: the
    latent of each modality is [B, tokens, dim] with every token valid. MS-Mix mixes these.

    `head`: the text tokens go through the language encoder (learned positions, hyper_depth - 1 layers,
    keeping the input and every layer's output); the hyper-modality tokens (initialised to ones) are updated
    by `hyper_depth` `HyperModalityLayer`s, layer i guided by the text representation of level i; a
    `CrossFusion` lets the final text tokens query the hyper-modality tokens; a linear layer maps its first
    output to the score.

    Departures: padding steps are masked out of the embedding transformers (the authors mask nothing), and
    with `text_encoder` unset the text comes from the stored 768-d BERT features rather than a fine-tuned BERT.
    The learned positions cover the dataset's padded lengths, so the parameter count depends on them.
    """

    config_class = ALMTConfig
    task_loss = "mse"

    def __init__(self, config: ALMTConfig, shape: DataShape) -> None:
        super().__init__(config, shape)
        c = config
        self.text_encoder = build_text_encoder(c.text_encoder, c.finetune_text)
        self.latent_dims = {m: c.dim for m in MODALITIES}
        in_dims = {"text": text_width(shape, self.text_encoder), "audio": shape.dims["audio"], "vision": shape.dims["vision"]}
        self.embed = nn.ModuleDict({m: TokenEmbedding(in_dims[m], shape.seq_lens[m], c) for m in MODALITIES})
        self.text_positions = nn.Parameter(torch.randn(1, c.tokens, c.dim))
        self.text_layers = nn.ModuleList(Layer(c.dim, c.heads, c.dim_head, c.mlp_dim, c.dropout) for _ in range(c.hyper_depth - 1))
        self.hyper = nn.Parameter(torch.ones(1, c.tokens, c.dim))
        self.hyper_layers = nn.ModuleList(HyperModalityLayer(c.dim, c.hyper_heads, c.hyper_dim_head, c.dropout) for _ in range(c.hyper_depth))
        self.fusion = CrossFusion(c)
        self.out = nn.Linear(c.dim, 1)

    def encode(self, batch: Batch) -> Latents:
        text, text_mask = text_sequence(batch, self.text_encoder)
        inputs = batch.inputs
        sequences = {"text": (text, text_mask), "audio": (inputs["audio"], inputs.mask("audio")), "vision": (inputs["vision"], inputs.mask("vision"))}
        return Latents(Multimodal({m: self.embed[m](x, mask) for m, (x, mask) in sequences.items()}))

    def head(self, views: Multimodal) -> HeadOutput:
        text_levels = self.language_levels(views["text"])
        hyper = self.hyper.expand(views["text"].shape[0], -1, -1)
        for level, layer in zip(text_levels, self.hyper_layers):
            hyper = layer(level, views["audio"], views["vision"], hyper)
        return HeadOutput(self.out(self.fusion(hyper, text_levels[-1])))

    def language_levels(self, text: Tensor) -> list[Tensor]:
        """The text tokens with positions added, then after each text layer: hyper_depth levels in all."""
        levels = [text + self.text_positions]
        for layer in self.text_layers:
            levels.append(layer(levels[-1]))
        return levels
