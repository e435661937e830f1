"""Layers shared by the backbones. A backbone imports these; no backbone copies another's layer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from msmix_cli.types import MODALITIES, Multimodal


def lengths_to_mask(lengths: Tensor | None, steps: int) -> Tensor | None:
    """[B] valid lengths -> [B, T] bool mask, True on valid steps (None stays None)."""
    if lengths is None:
        return None
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the time axis of [B, T, D], counting only valid steps (all steps when mask is None)."""
    if mask is None:
        return x.mean(dim=1)
    # masked_fill rather than a product: padding may hold -inf or NaN (MOSI audio), and 0 * inf is NaN.
    summed = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
    return summed / mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)


def valid_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """[B] valid lengths of a [B, T, D] sequence: `lengths`, or T for every sample when None."""
    if lengths is not None:
        return lengths
    return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)


def last_valid_step(x: Tensor, lengths: Tensor | None) -> Tensor:
    """[B, T, D] -> [B, D]: each sample's last valid step (the last step when lengths is None)."""
    steps = valid_lengths(x, lengths).clamp(1, x.shape[1]) - 1
    return x[torch.arange(x.shape[0], device=x.device), steps]


def append_one(x: Tensor) -> Tensor:
    """[B, D] -> [B, D + 1] with a constant 1 in front, so a product of factors keeps every lower-order term (TFN, LMF)."""
    return torch.cat([torch.ones_like(x[:, :1]), x], dim=1)


def outer_product(vectors: list[Tensor]) -> Tensor:
    """[B, d_1], [B, d_2], ... -> [B, d_1 * d_2 * ...], the first vector's index slowest (TFN's fusion).

    One batched matrix product per factor: forward and backward cost about 60 % of `einsum`'s on the CPU.
    """
    product = vectors[0]
    for vector in vectors[1:]:
        product = torch.bmm(product.unsqueeze(2), vector.unsqueeze(1)).flatten(1)
    return product


def dropout_keep(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Dropout's multiplier for a tensor of `shape`: 0 with probability p, else 1 / (1 - p), for 0 < p < 1.

    torch's dropout draws one random number per element (`bernoulli_`: 70 ms on one CPU thread for TFN's
    32 x 140,481 fusion); here each 64-bit draw is cut into four 16-bit ones (6 ms), so an element is dropped
    with probability round(65536 p) / 65536, p to within 1e-5.
    """
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    draws = words.view(torch.int16)[:count].view(shape)  # uniform over [-32768, 32767]
    return (draws >= round(p * 65536) - 32768).to(dtype).mul_(1.0 / (1.0 - p))


class WideDropout(nn.Module):
    """`nn.Dropout` with `dropout_keep`'s cheaper draws, for activations of millions of elements per batch
    (TFN's fusion). It has no state, so it replaces an nn.Dropout without changing a state_dict."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0:
            return nn.functional.dropout(x, self.p, self.training)
        return x * dropout_keep(x.shape, self.p, x.dtype, x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float) -> Tensor:
    """Scaled dot-product attention over [B, H, T, d] queries and [B, H, S, d] keys and values.

    `mask` [B, 1, T, S] bool, True where query t may attend to key s. A masked key gets the dtype's lowest
    value, not -inf, so a query with no visible key gets uniform (finite) weights rather than NaN. The
    dropout of the weights stays torch's: drawing it with `dropout_keep` saved a twentieth of a MulT step but
    kept a 4-byte multiplier per weight for the backward pass (torch keeps 1 byte), and MS-Mix on unaligned
    MulT batches of 16 then ran out of 23 GB.
    """
    bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
    return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)


def sinusoidal_positions(steps: int, dim: int, device: torch.device | None = None) -> Tensor:
    """[T, D] sinusoidal position embeddings (Vaswani et al.), as MulT's fairseq encoder adds them."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(1, steps + 1, device=device, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(steps, 1, device=device)], dim=1)
    return table


def attention_mask(key_mask: Tensor | None, visible: Tensor | None) -> Tensor | None:
    """[B, 1, T, S] bool, True where query t may attend to key s: the keys' padding mask [B, S] and `visible`
    [B, T, S] joined once per encoder, broadcast over the heads rather than repeated per head and layer
    (MulT on unaligned MOSI: 64 x 10 x 500 x 500 per layer). None when nothing is masked."""
    if key_mask is None:
        return None if visible is None else visible.unsqueeze(1)
    keys = key_mask[:, None, None, :]
    return keys if visible is None else keys & visible.unsqueeze(1)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer; with `kv` given it is a crossmodal layer (queries from x, keys/values from kv).

    The attention's weights live in an `nn.MultiheadAttention` (its parameters and state_dict keys), but it is
    computed by `attend`, with one mask broadcast over the heads.
    """

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0, relu_dropout: float = 0.0, res_dropout: float = 0.0, ffn_mult: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, batch_first=True)
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.ReLU(), nn.Dropout(relu_dropout), nn.Linear(ffn_mult * dim, dim))
        self.res_dropout = nn.Dropout(res_dropout)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """`mask` [B, 1, T, S] bool from `attention_mask`, True where query t may attend to key s."""
        q = self.norm_attn(x)
        k = q if kv is None else self.norm_attn(kv)
        x = x + self.res_dropout(self._attend(q, k, mask))
        return x + self.res_dropout(self.ffn(self.norm_ffn(x)))

    def _attend(self, queries: Tensor, keys: Tensor, mask: Tensor | None) -> Tensor:
        attn = self.attn
        dim, weight, bias = attn.embed_dim, attn.in_proj_weight, attn.in_proj_bias
        if queries is keys:
            q, k, v = nn.functional.linear(queries, weight, bias).chunk(3, dim=-1)
        else:
            q = nn.functional.linear(queries, weight[:dim], bias[:dim])
            k, v = nn.functional.linear(keys, weight[dim:], bias[dim:]).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2) for t in (q, k, v))
        out = attend(q, k, v, mask, attn.dropout if self.training else 0.0)
        return attn.out_proj(out.transpose(1, 2).flatten(2))


class TransformerEncoder(nn.Module):
    """A stack of `TransformerLayer`s with scaled input, sinusoidal positions and a final LayerNorm (MulT's encoder).

    `forward(x, kv=None, x_mask=None, kv_mask=None)`: x [B, T, D]; kv [B, S, D] for crossmodal attention;
    masks are [B, T] / [B, S] bool, True on valid steps. Self-attention uses x_mask as its key mask.
    `visible` [B, T, S] bool (optional) further limits which keys each query sees.
    """

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float = 0.0, relu_dropout: float = 0.0, res_dropout: float = 0.0, embed_dropout: float = 0.0, positions: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.positions = positions
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, attn_dropout, relu_dropout, res_dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def _embed(self, x: Tensor) -> Tensor:
        x = math.sqrt(self.dim) * x
        if self.positions:
            x = x + sinusoidal_positions(x.shape[1], self.dim, x.device).to(x.dtype)
        return self.embed_dropout(x)

    def forward(self, x: Tensor, kv: Tensor | None = None, x_mask: Tensor | None = None, kv_mask: Tensor | None = None, visible: Tensor | None = None) -> Tensor:
        x = self._embed(x)
        if kv is not None:
            kv = self._embed(kv)
        mask = attention_mask(kv_mask if kv is not None else x_mask, visible)
        for layer in self.layers:
            x = layer(x, kv, mask)
        return self.norm(x)


class LSTMSubnet(nn.Module):
    """TFN/LMF's text subnet: an LSTM over the valid steps, its final hidden state through dropout and a linear layer."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.2, layers: int = 1, bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden * (2 if bidirectional else 1), out_dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        steps = None if lengths is None else lengths.clamp(1, x.shape[1]).cpu()
        if steps is not None and bool((steps < x.shape[1]).any()):
            packed = nn.utils.rnn.pack_padded_sequence(x, steps, batch_first=True, enforce_sorted=False)
            _, (h, _) = self.rnn(packed)
        else:  # every sequence is whole (aligned data, mostly): packing would only sort and copy
            _, (h, _) = self.rnn(x)
        last = torch.cat([h[-2], h[-1]], dim=-1) if self.rnn.bidirectional else h[-1]
        return self.linear(self.dropout(last))


class MLPSubnet(nn.Module):
    """TFN/LMF's audio and vision subnet: BatchNorm, dropout, then three ReLU linear layers."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_dim), nn.Dropout(dropout),
            nn.Linear(in_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class UnimodalSubnets(nn.Module):
    """TFN/LMF's pre-fusion encoders: text through `LSTMSubnet`, audio and vision averaged over their valid
    steps and then through `MLPSubnet`. Maps raw inputs to one [B, d_m] vector per modality.

    `hidden_dims` and `dropouts` are in MODALITIES order (text, audio, vision); the text vector has width
    `text_out`, audio and vision their hidden width.
    """

    def __init__(self, dims: dict[str, int], hidden_dims: tuple[int, int, int], text_out: int, dropouts: tuple[float, float, float]) -> None:
        super().__init__()
        hidden = dict(zip(MODALITIES, hidden_dims))
        dropout = dict(zip(MODALITIES, dropouts))
        self.text = LSTMSubnet(dims["text"], hidden["text"], text_out, dropout=dropout["text"])
        self.audio = MLPSubnet(dims["audio"], hidden["audio"], dropout["audio"])
        self.vision = MLPSubnet(dims["vision"], hidden["vision"], dropout["vision"])
        self.out_dims = {"text": text_out, "audio": hidden["audio"], "vision": hidden["vision"]}

    def forward(self, inputs: Multimodal) -> Multimodal:
        return Multimodal({
            "text": self.text(inputs["text"], inputs.length("text")),
            "audio": self.audio(masked_mean(inputs["audio"], inputs.mask("audio"))),
            "vision": self.vision(masked_mean(inputs["vision"], inputs.mask("vision"))),
        })
