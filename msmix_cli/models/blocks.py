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


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Dropout's draw for a tensor of `shape`: bool, False with probability p, for 0 < p < 1.

    torch's dropout draws one random number per element (`bernoulli_`: 70 ms on one CPU thread for TFN's
    32 x 140,481 fusion); here each 64-bit draw is cut into four 16-bit ones (6 ms), so an element is dropped
    with probability round(65536 p) / 65536, p to within 1e-5.
    """
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    draws = words.view(torch.int16)[:count].view(shape)  # uniform over [-32768, 32767]
    return draws >= round(p * 65536) - 32768


def dropped(x: Tensor, keep: Tensor, scale: float) -> Tensor:
    """What dropout makes of `x` for the draw `keep`: x * keep * scale, in a new tensor."""
    return torch.mul(x, keep).mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, keeping only the 1-byte `keep` for the backward pass; torch's CPU dropout keeps a
    4-byte multiplier per element."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return dropped(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return dropped(grad, keep, ctx.scale), None, None


class Dropout(nn.Module):
    """`nn.Dropout` with `keep_mask`'s cheaper draws and a 1-byte mask on the CPU; on CUDA it is torch's, whose
    fused kernel already draws cheaply and keeps a 1-byte mask. It has no state, so it replaces an
    nn.Dropout without changing a state_dict: checkpoints of either load into the other."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p in (0.0, 1.0) or x.is_cuda:
            return nn.functional.dropout(x, self.p, self.training)
        return _MaskedScale.apply(x, keep_mask(x.shape, self.p, x.device), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _DroppedWeightsTimesValues(torch.autograd.Function):
    """(weights * keep * scale) @ values for attention weights [B, H, T, S]. It keeps the weights (which the
    softmax keeps anyway) and the 1-byte mask, and recomputes the dropped weights in the backward pass: a
    plain product would also keep the dropped weights, and torch's dropout a 4-byte multiplier, 9 bytes more
    per weight, which MulT on unaligned data has tens of millions of per layer."""

    @staticmethod
    def forward(ctx, weights: Tensor, keep: Tensor, scale: float, values: Tensor) -> Tensor:
        ctx.save_for_backward(weights, keep, values)
        ctx.scale = scale
        return dropped(weights, keep, scale) @ values

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, Tensor | None]:
        weights, keep, values = ctx.saved_tensors
        grad_weights = grad_values = None
        if ctx.needs_input_grad[3]:
            grad_values = dropped(weights, keep, ctx.scale).transpose(-2, -1) @ grad
        if ctx.needs_input_grad[0]:
            grad_weights = (grad @ values.transpose(-2, -1)).mul_(keep).mul_(ctx.scale)
        return grad_weights, None, None, grad_values


class _ColumnBlockedLinear(torch.autograd.Function):
    """x W^T + b for a 2-D x, whose backward computes the input and weight gradients in blocks of
    `WideLinear.COLUMNS` input columns. Every element of a gradient sums the same products in the same order as
    torch's, so the numbers are the same (test); only the products' shapes change."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        blocks = [slice(start, start + WideLinear.COLUMNS) for start in range(0, x.shape[1], WideLinear.COLUMNS)]
        if ctx.needs_input_grad[0]:
            grad_x = x.new_empty(x.shape)
            for block in blocks:
                torch.mm(grad, weight[:, block], out=grad_x[:, block])
        if ctx.needs_input_grad[1]:
            grad_weight = weight.new_empty(weight.shape)
            for block in blocks:
                torch.mm(grad.t(), x[:, block], out=grad_weight[:, block])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


class WideLinear(nn.Linear):
    """`nn.Linear` for very many inputs and few outputs (TFN's post-fusion layer: 140,481 -> 64); the same
    parameters, initialisation and state_dict. On one CPU thread MKL computes the two gradient products of such
    a layer, [B x 64] [64 x 140,481] and [64 x B] [B x 140,481], faster in blocks of 1,024 columns whose
    operands stay in cache: a whole TFN training step 11–15 % faster at B = 32 (interleaved A/B, benchmarks/README)."""

    COLUMNS = 1024

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda or x.dim() != 2:
            return super().forward(x)
        return _ColumnBlockedLinear.apply(x, self.weight, self.bias)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float) -> Tensor:
    """Scaled dot-product attention over [B, H, T, d] queries and [B, H, S, d] keys and values.

    `mask` [B, 1, T, S] bool, True where query t may attend to key s. A masked key gets the dtype's lowest
    value, not -inf, so a query with no visible key gets uniform (finite) weights rather than NaN. Without
    dropout (and on CUDA) this is torch's `scaled_dot_product_attention`. With dropout on the CPU torch
    would fall back to a plain product that draws with `bernoulli_` (a quarter of an MMSA MulT step) and
    keeps 12 bytes per attention weight for the backward pass; written out here, the draws are
    `keep_mask`'s and the product `_DroppedWeightsTimesValues`, 5 bytes per weight.
    """
    bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
    if dropout == 0.0 or q.is_cuda:
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores.add_(bias)
    weights = scores.softmax(dim=-1)
    return _DroppedWeightsTimesValues.apply(weights, keep_mask(weights.shape, dropout, weights.device), 1.0 / (1.0 - dropout), v)


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
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.ReLU(), Dropout(relu_dropout), nn.Linear(ffn_mult * dim, dim))
        self.res_dropout = Dropout(res_dropout)

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
        self.embed_dropout = Dropout(embed_dropout)
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


def packed_lstm_final_state(rnn: nn.LSTM, packed: nn.utils.rnn.PackedSequence) -> Tensor:
    """The final hidden state [B, H] of a one-layer, one-direction `rnn` over a packed batch, in the batch's
    order: what `rnn(packed)[1][0][-1]` returns, computed step by step here.

    torch's CPU LSTM projects the inputs of all steps at once and takes each step's rows with a slice, whose
    backward writes a zero tensor as large as all the rows per step (LMF on MOSI: 50 x 1,880 x 512 floats
    per batch). Here the rows are split once, so the backward joins the steps' gradients in one copy.
    """
    sizes = packed.batch_sizes.tolist()
    inputs = nn.functional.linear(packed.data, rnn.weight_ih_l0, rnn.bias_ih_l0 + rnn.bias_hh_l0)
    h = c = inputs.new_zeros(sizes[0], rnn.hidden_size)
    finished = []  # the samples leave the batch shortest first (they are sorted longest first)
    for step, size in zip(inputs.split(sizes), sizes):
        if size < h.shape[0]:
            finished.append(h[size:])
            h, c = h[:size], c[:size]
        i, f, g, o = torch.addmm(step, h, rnn.weight_hh_l0.t()).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    finished.append(h)
    return torch.cat(finished[::-1])[packed.unsorted_indices]


class LSTMSubnet(nn.Module):
    """TFN/LMF's text subnet: an LSTM over the valid steps, its final hidden state through dropout and a linear layer."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.2, layers: int = 1, bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional, batch_first=True)
        self.dropout = Dropout(dropout)
        self.linear = nn.Linear(hidden * (2 if bidirectional else 1), out_dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.linear(self.dropout(self._final_state(x, lengths)))

    def _final_state(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        steps = None if lengths is None else lengths.clamp(1, x.shape[1]).cpu()
        if steps is None or not bool((steps < x.shape[1]).any()):  # every sequence is whole: packing would only sort and copy
            _, (h, _) = self.rnn(x)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, steps, batch_first=True, enforce_sorted=False)
            if self.rnn.num_layers == 1 and not self.rnn.bidirectional and not x.is_cuda:
                return packed_lstm_final_state(self.rnn, packed)
            _, (h, _) = self.rnn(packed)
        return torch.cat([h[-2], h[-1]], dim=-1) if self.rnn.bidirectional else h[-1]


class MLPSubnet(nn.Module):
    """TFN/LMF's audio and vision subnet: BatchNorm, dropout, then three ReLU linear layers."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_dim), Dropout(dropout),
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
