"""GLoMo ("GLoMo: Global-Local Modal Fusion for Multimodal Sentiment Analysis", ACM MM 2024,
doi:10.1145/3664647.3681527), after the authors' code (YetZzzzzz/GLoMo, `GLoMo_MSA/GLoMo.py` and
`main_GLoMo.py` for the MOSI settings).

The authors import their mixture-of-experts layer from a `MoE.py` that their repository does not hold;
its call (`MoE(input_size, output_size, num_experts, hidden_size, model=MLP, k)` returning an output and
a loss) matches the sparsely gated MoE of Shazeer et al. (2017) as David Rau's widely copied PyTorch port
writes it, which `SparseMoE` follows (see there for what is assumed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msmix_cli.errors import BadInput
from msmix_cli.models.attention import VectorFusionEncoder
from msmix_cli.models.base import BACKBONES, Backbone, HeadOutput, Latents
from msmix_cli.models.blocks import Dropout, TransformerEncoder, lengths_to_mask, valid_lengths
from msmix_cli.models.text_encoder import build_text_encoder, text_width
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal


@dataclass
class GLoMoConfig:
    """The authors' MOSI settings (`main_GLoMo.py` defaults)."""

    width: int = 96  # d_l: every modality's feature width
    heads: int = 16  # in the audio/vision encoders and the fusion transformer
    layers: int = 2  # audio/vision encoder depth
    segments: int = 3  # gran_t/a/v: local representations per modality
    experts: int = 3
    top_k: int = 2
    moe_loss_weight: float = 0.01  # the MoE's load-balancing loss coefficient (per modality, summed)
    attn_dropout: float = 0.5
    relu_dropout: float = 0.3
    res_dropout: float = 0.3
    embed_dropout: float = 0.2
    gate_dropout: float = 0.3  # in the modality-attention MLPs
    fusion_layers: int = 2
    fusion_ffn: int = 2048  # torch's TransformerEncoderLayer default, which the authors keep
    fusion_dropout: float = 0.1
    text_encoder: str | None = None  # local model directory (e.g. bert-base-uncased); None = the stored features
    finetune_text: bool = True


def segment_max(x: Tensor, lengths: Tensor | None, segments: int) -> Tensor:
    """Adaptive max pooling over each sample's valid steps: [B, T, D] -> [B, segments, D].

    Segment i of a sample with n valid steps covers steps [floor(i n / s), ceil((i + 1) n / s)), the bins
    of `nn.AdaptiveMaxPool1d` laid over the valid steps instead of the padded length.
    """
    n = valid_lengths(x, lengths).clamp(1, x.shape[1])[:, None, None]
    step = torch.arange(x.shape[1], device=x.device)[None, None, :]
    index = torch.arange(segments, device=x.device)[None, :, None]
    start = torch.div(index * n, segments, rounding_mode="floor")
    end = torch.div((index + 1) * n + segments - 1, segments, rounding_mode="floor")
    inside = (step >= start) & (step < end)  # [B, segments, T]
    spread = x.unsqueeze(1).masked_fill(~inside.unsqueeze(-1), float("-inf"))
    return spread.amax(dim=2)


def join_valid(first: Tensor, second: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """The valid steps of `first` followed by those of `second` ([B, T, D] each): [B, 2T, D] and lengths 2n.

    The authors concatenate BERT's last two layers along time, padding included; joining the valid parts
    keeps the padding out of the convolution and the pooling.
    """
    steps = first.shape[1]
    n = valid_lengths(first, lengths).clamp(1, steps)
    position = torch.arange(2 * steps, device=first.device)[None, :]
    from_first = position < n[:, None]
    source = torch.where(from_first, position, position - n[:, None]).clamp(0, steps - 1)
    gathered = torch.where(
        from_first.unsqueeze(-1),
        first.gather(1, source.unsqueeze(-1).expand(-1, -1, first.shape[2])),
        second.gather(1, source.unsqueeze(-1).expand(-1, -1, second.shape[2])),
    )
    return gathered, 2 * n


class SparseMoE(nn.Module):
    """Noisily gated top-k mixture of experts with the load-balancing loss of Shazeer et al. (2017).

    Gate logits x W_g, plus (in training) Gaussian noise of scale softplus(x W_n) + 0.01; the top k logits
    per row are softmaxed into the gates, the others are 0. The loss is `weight` x (CV^2 of the experts'
    summed gates + CV^2 of their load), the load being, in training, the smooth probability that each
    expert stays in the top k under resampled noise (so that W_n learns), else the count of rows routed.

    Assumed where GLoMo's MoE.py is not public: experts are two-layer ReLU MLPs with a linear output,
    combined as the gate-weighted sum (Rau's example code combines log-probabilities instead, which suits
    classifier experts, not features). W_g and W_n start at zero, as in that port. Every expert runs on
    every row and unrouted ones are weighted 0: the same result, with no data-dependent shapes.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, experts: int, k: int, weight: float) -> None:
        super().__init__()
        if not 1 <= k <= experts:
            raise BadInput(f"GLoMo's top_k must be between 1 and experts ({experts}), got {k}")
        self.k = k
        self.weight = weight
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)) for _ in range(experts))
        self.gate = nn.Parameter(torch.zeros(in_dim, experts))
        self.noise = nn.Parameter(torch.zeros(in_dim, experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gates, load = self.route(x)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [N, E, out]
        mixed = (gates.unsqueeze(-1) * outputs).sum(dim=1)
        return mixed, self.weight * (squared_variation(gates.sum(dim=0)) + squared_variation(load))

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gates [N, E] and load [E]."""
        clean = x @ self.gate
        if not self.training:
            gates, _ = self.top_k(clean)
            return gates, (gates > 0).sum(dim=0).to(x.dtype)
        scale = nn.functional.softplus(x @ self.noise) + 1e-2
        noisy = clean + torch.randn_like(clean) * scale
        gates, top = self.top_k(noisy)
        if self.k == clean.shape[1]:
            return gates, (gates > 0).sum(dim=0).to(x.dtype)
        return gates, self.stay_in_top_k(clean, noisy, scale, top).sum(dim=0)

    def top_k(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax over each row's k largest logits, 0 elsewhere; and the k + 1 largest logits (fewer if E = k)."""
        top, index = logits.topk(min(self.k + 1, logits.shape[1]), dim=1)
        # CUDA autocast runs softmax in float32; scatter needs the logits' dtype.
        weights = top[:, : self.k].softmax(dim=1).to(logits.dtype)
        gates = torch.zeros_like(logits).scatter(1, index[:, : self.k], weights)
        return gates, top

    def stay_in_top_k(self, clean: Tensor, noisy: Tensor, scale: Tensor, top: Tensor) -> Tensor:
        """P(expert e is in a row's top k) when only its own noise is redrawn, [N, E]."""
        threshold_if_in = top[:, self.k : self.k + 1]  # the (k+1)-th logit: what an expert in the top k must beat
        threshold_if_out = top[:, self.k - 1 : self.k]  # the k-th: what an expert outside must beat
        is_in = noisy > threshold_if_in
        return torch.where(is_in, torch.special.ndtr((clean - threshold_if_in) / scale), torch.special.ndtr((clean - threshold_if_out) / scale))


def squared_variation(x: Tensor) -> Tensor:
    """Squared coefficient of variation (unbiased variance / mean^2); 0 for a single expert."""
    if x.numel() == 1:
        return x.new_zeros(())
    return x.var() / (x.mean().pow(2) + 1e-10)


class ModalityAttention(nn.Module):
    """GLoMo's attention over the three modalities: an MLP on their concatenation scores each one; the
    softmax of the scores (scaled by width^-0.5) weights their sum. Returns weights [N, 3] and the sum [N, d]."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.score = nn.Sequential(nn.Linear(3 * dim, dim), Dropout(dropout), nn.ReLU(), nn.Linear(dim, 3))

    def forward(self, vectors: list[Tensor]) -> tuple[Tensor, Tensor]:
        weights = (self.score(torch.cat(vectors, dim=1)) * self.scale).softmax(dim=1)
        return weights, (torch.stack(vectors, dim=2) @ weights.unsqueeze(-1)).squeeze(-1)


class SequenceEncoder(nn.Module):
    """GLoMo's audio/vision network: Conv1d (kernel 3, no bias) to `width`, MulT's transformer encoder, then the
    max over valid steps (the global feature) and `segment_max` (the local ones): [B, 1 + segments, width]."""

    def __init__(self, in_dim: int, c: GLoMoConfig) -> None:
        super().__init__()
        self.segments = c.segments
        self.conv = nn.Conv1d(in_dim, c.width, kernel_size=3, padding=1, bias=False)
        self.encoder = TransformerEncoder(c.width, c.heads, c.layers, c.attn_dropout, c.relu_dropout, c.res_dropout, c.embed_dropout)

    def forward(self, x: Tensor, lengths: Tensor | None, mask: Tensor | None) -> Tensor:
        h = self.encoder(convolve(self.conv, x, mask), x_mask=mask)
        return torch.cat([segment_max(h, lengths, 1), segment_max(h, lengths, self.segments)], dim=1)


def convolve(conv: nn.Conv1d, x: Tensor, mask: Tensor | None) -> Tensor:
    """A same-length Conv1d over [B, T, D] whose windows see zeros, never padding values (which may be -inf)."""
    if mask is not None:
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
    return conv(x.transpose(1, 2)).transpose(1, 2)


@BACKBONES.register("glomo")
class GLoMo(Backbone):
    """GLoMo with the authors' structure.

    Text: the global feature is a linear map of the first ([CLS]) step; the local features are a Conv1d
    (kernel 3, no bias) over the text followed by `segment_max`. With `text_encoder` the text is BERT's last
    layer followed by its second-to-last (valid tokens of each, joined), as the authors do; with the stored
    features only the last layer exists, so the convolution reads that alone. Audio and vision: a
    `SequenceEncoder` each.

    `encode` ends at these coarse unimodal features, before any mixture of experts or fusion: the latent of
    each modality is [B, 1 + segments, width], the global feature first, then the local ones (all valid).

    `head`: per modality a `SparseMoE` turns the flattened local features into one local representation
    (its load-balancing losses, summed over modalities and computed over all N rows, are the head's
    auxiliary loss); the fusion transformer runs over (global t, local t, global a, local a, global v,
    local v); a `ModalityAttention` over the three globals gives weights and a global summary, another over
    the locals a local summary; per modality a linear map joins its global and local outputs, and those
    three are summed with the *global* attention weights (the global guidance); the score is a linear map
    of [linear(global summary, local summary), guided sum].

    Departures: padding is kept out of the convolutions, attention and pooling (the authors pool over the
    padded length), and `SparseMoE` assumes the parts of the authors' MoE that are not public.
    """

    config_class = GLoMoConfig
    task_loss = "l1"

    def __init__(self, config: GLoMoConfig, shape: DataShape) -> None:
        super().__init__(config, shape)
        c = config
        d = c.width
        self.text_encoder = build_text_encoder(c.text_encoder, c.finetune_text)
        self.latent_dims = {m: d for m in MODALITIES}
        text_dim = text_width(shape, self.text_encoder)
        self.text_global = nn.Linear(text_dim, d)
        self.text_conv = nn.Conv1d(text_dim, d, kernel_size=3, padding=1, bias=False)
        self.audio = SequenceEncoder(shape.dims["audio"], c)
        self.vision = SequenceEncoder(shape.dims["vision"], c)
        self.moe = nn.ModuleDict({m: SparseMoE(d * c.segments, d, d, c.experts, c.top_k, c.moe_loss_weight) for m in MODALITIES})
        self.fusion = VectorFusionEncoder(d, c.heads, c.fusion_layers, c.fusion_ffn, c.fusion_dropout)
        self.global_attention = ModalityAttention(d, c.gate_dropout)
        self.local_attention = ModalityAttention(d, c.gate_dropout)
        self.join = nn.ModuleDict({m: nn.Linear(2 * d, d) for m in MODALITIES})
        self.join_summaries = nn.Linear(2 * d, d)
        self.out = nn.Linear(2 * d, 1)

    def encode(self, batch: Batch) -> Latents:
        inputs = batch.inputs
        return Latents(Multimodal({
            "text": self.text_features(batch),
            "audio": self.audio(inputs["audio"], inputs.length("audio"), inputs.mask("audio")),
            "vision": self.vision(inputs["vision"], inputs.length("vision"), inputs.mask("vision")),
        }))

    def text_features(self, batch: Batch) -> Tensor:
        if self.text_encoder is None:
            text, lengths = batch.inputs["text"], batch.inputs.length("text")
            last = text
        else:
            states = self.text_encoder.encode_batch(batch)
            last = states.last
            text, lengths = join_valid(last, states.layers[-2], states.mask.sum(dim=1))
        mask = lengths_to_mask(lengths, text.shape[1])
        local = segment_max(convolve(self.text_conv, text, mask), lengths, self.config.segments)
        return torch.cat([self.text_global(last[:, :1]), local], dim=1)

    def head(self, views: Multimodal) -> HeadOutput:
        coarse = {m: views[m][:, 0] for m in MODALITIES}
        local: dict[str, Tensor] = {}
        moe_loss: Tensor | float = 0.0
        for m in MODALITIES:
            local[m], loss = self.moe[m](views[m][:, 1:].flatten(1))
            moe_loss = moe_loss + loss
        h = self.fusion([part[m] for m in MODALITIES for part in (coarse, local)])
        fused_global = {m: h[:, 2 * i] for i, m in enumerate(MODALITIES)}
        fused_local = {m: h[:, 2 * i + 1] for i, m in enumerate(MODALITIES)}
        weights, global_summary = self.global_attention([fused_global[m] for m in MODALITIES])
        _, local_summary = self.local_attention([fused_local[m] for m in MODALITIES])
        joined = torch.stack([self.join[m](torch.cat([fused_global[m], fused_local[m]], dim=1)) for m in MODALITIES], dim=2)
        guided = (joined @ weights.unsqueeze(-1)).squeeze(-1)
        summary = self.join_summaries(torch.cat([global_summary, local_summary], dim=1))
        return HeadOutput(self.out(torch.cat([summary, guided], dim=1)), moe_loss)
