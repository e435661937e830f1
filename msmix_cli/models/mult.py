"""Multimodal Transformer (Tsai et al., ACL 2019), as MMSA implements it (`models/singleTask/MULT.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msmix_cli.errors import BadInput
from msmix_cli.models.base import BACKBONES, Backbone, HeadOutput, Latents
from msmix_cli.models.blocks import Dropout, TransformerEncoder, last_valid_step, valid_lengths
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal


@dataclass
class MulTConfig:
    """MMSA's MOSI settings. Triples are in (text, audio, vision) order."""

    d_model: int = 50  # width of every modality after its temporal convolution
    heads: int = 10
    layers: int = 4  # per crossmodal transformer; the memory transformers get max(layers, 3), as in MMSA
    conv_kernels: tuple[int, int, int] = (5, 5, 5)
    # Attention dropout by *source* modality of a crossmodal transformer (MMSA's attn_dropout,
    # attn_dropout_a, attn_dropout_v); the memory transformers use the text's, as MMSA does.
    attn_dropouts: tuple[float, float, float] = (0.3, 0.2, 0.0)
    relu_dropout: float = 0.0
    embed_dropout: float = 0.2
    res_dropout: float = 0.0
    out_dropout: float = 0.5
    text_dropout: float = 0.5  # on the text features, before their convolution
    causal: bool = True  # the reference's future mask (its attn_mask option, on by default)


def conv_lengths(lengths: Tensor | None, kernel: int) -> Tensor | None:
    """Valid output steps of an unpadded, stride-1 convolution; at least 1 so every sample keeps a key."""
    return None if lengths is None else (lengths - kernel + 1).clamp_min(1)


def future_mask(query_lengths: Tensor, key_lengths: Tensor, query_steps: int, key_steps: int) -> Tensor:
    """[B, T, S] bool, True where query t may see key s: s <= t + |S_b - T_b|.

    This is the reference's future mask with offset |S - T| (from the padded lengths there), taken here
    from each sample's valid lengths. With it a sample's last valid query sees all of its valid keys, the
    property the last-step read-out relies on, whatever the padding of the batch.
    """
    offset = (key_lengths - query_lengths).abs()
    query = torch.arange(query_steps, device=offset.device)[None, :, None]
    key = torch.arange(key_steps, device=offset.device)[None, None, :]
    return key <= query + offset[:, None, None]


@BACKBONES.register("mult")
class MulT(Backbone):
    """Multimodal Transformer.

    `encode` ends at the temporal convolutions: per modality a Conv1d (no padding, no bias, kernel from
    `conv_kernels`) maps [B, T_m, D_m] to [B, T_m - k_m + 1, d_model], with the valid lengths shrunk the
    same way. MS-Mix mixes these sequences. Padded input steps are zeroed before the convolution so no
    window reads padding values. (MMSA skips the convolution when D_m equals d_model; msmix always applies it.)

    `head` runs the six crossmodal transformers (target <- source: text<-audio, text<-vision, audio<-text,
    audio<-vision, vision<-text, vision<-audio), concatenates the two per target, runs the target's memory
    self-attention transformer, takes its last *valid* step (the reference takes the last padded step,
    which for unaligned data with lengths would read padding), concatenates the three, and applies the
    residual projection block and the output layer. Padding is excluded from attention by key padding
    masks; with `causal`, the reference's future mask is applied per sample (see `future_mask`).
    """

    config_class = MulTConfig
    task_loss = "l1"

    def __init__(self, config: MulTConfig, shape: DataShape) -> None:
        super().__init__(config, shape)
        d = config.d_model
        self.kernels = dict(zip(MODALITIES, config.conv_kernels))
        if any(shape.seq_lens[m] < self.kernels[m] for m in MODALITIES):
            # an unpadded convolution needs a whole window: say so now, not as a torch error mid-epoch
            steps = ", ".join(f"{m} {shape.seq_lens[m]}" for m in MODALITIES)
            raise BadInput(f"MulT's temporal convolutions (kernels {', '.join(map(str, config.conv_kernels))}) need at "
                           f"least that many steps per modality and the data has {steps}: shorten them, e.g. "
                           "--set 'model.conv_kernels=[1,1,1]'")
        attn_dropout = dict(zip(MODALITIES, config.attn_dropouts))
        self.latent_dims = {m: d for m in MODALITIES}
        self.text_dropout = Dropout(config.text_dropout)
        self.projections = nn.ModuleDict({
            m: nn.Conv1d(shape.dims[m], d, kernel_size=self.kernels[m], padding=0, bias=False) for m in MODALITIES
        })
        self.crossmodal = nn.ModuleDict({
            f"{target}_from_{source}": self._encoder(d, config.layers, attn_dropout[source])
            for target in MODALITIES for source in MODALITIES if source != target
        })
        self.memory = nn.ModuleDict({m: self._encoder(2 * d, max(config.layers, 3), attn_dropout["text"]) for m in MODALITIES})
        fused_dim = 2 * d * len(MODALITIES)
        self.residual = nn.Sequential(
            nn.Linear(fused_dim, fused_dim), nn.ReLU(), Dropout(config.out_dropout), nn.Linear(fused_dim, fused_dim),
        )
        self.out = nn.Linear(fused_dim, 1)

    def _encoder(self, dim: int, layers: int, attn_dropout: float) -> TransformerEncoder:
        c = self.config
        return TransformerEncoder(dim, c.heads, layers, attn_dropout, c.relu_dropout, c.res_dropout, c.embed_dropout)

    def encode(self, batch: Batch) -> Latents:
        inputs = batch.inputs
        features: dict[str, Tensor] = {}
        lengths: dict[str, Tensor | None] = {}
        for m in MODALITIES:
            x = inputs[m]
            mask = inputs.mask(m)
            if mask is not None:
                x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
            if m == "text":
                x = self.text_dropout(x)
            features[m] = self.projections[m](x.transpose(1, 2)).transpose(1, 2)
            lengths[m] = conv_lengths(inputs.length(m), self.kernels[m])
        return Latents(Multimodal(features, lengths))

    def head(self, views: Multimodal) -> HeadOutput:
        lengths = {m: valid_lengths(views[m], views.length(m)) for m in MODALITIES}
        finals = []
        for target in MODALITIES:
            crossed = [
                self.crossmodal[f"{target}_from_{source}"](
                    views[target], views[source], kv_mask=views.mask(source), visible=self._visible(views, lengths, target, source),
                )
                for source in MODALITIES if source != target
            ]
            memory = self.memory[target](
                torch.cat(crossed, dim=-1), x_mask=views.mask(target), visible=self._visible(views, lengths, target, target),
            )
            finals.append(last_valid_step(memory, views.length(target)))
        fused = torch.cat(finals, dim=-1)
        return HeadOutput(self.out(fused + self.residual(fused)))

    def _visible(self, views: Multimodal, lengths: dict[str, Tensor], query: str, key: str) -> Tensor | None:
        if not self.config.causal:
            return None
        return future_mask(lengths[query], lengths[key], views[query].shape[1], views[key].shape[1])
