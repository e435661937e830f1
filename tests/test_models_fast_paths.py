"""The faster computations of the training step give what the plain ones give: TFN's fusion, the cheaper
dropout, attention with one broadcast mask, the LSTM without packing, TFN's wide layer, fused Adam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msmix_cli.models.blocks import (Dropout, LSTMSubnet, TransformerLayer, WideLinear, attend, attention_mask, keep_mask,
                                     outer_product, packed_lstm_final_state)
from msmix_cli.recipes import resolve_recipe
from msmix_cli.training.loop import build_networks, make_optimizer
from msmix_cli.types import DataShape


def test_outer_product_is_tfns_einsum() -> None:
    generator = torch.Generator().manual_seed(0)
    audio, vision, text = (torch.randn(5, width, generator=generator) for width in (3, 4, 2))
    expected = torch.einsum("na,nv,nt->navt", audio, vision, text).flatten(1)
    assert torch.allclose(outer_product([audio, vision, text]), expected)


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_keep_mask_drops_p(p: float) -> None:
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([400, 1000]), p, torch.device("cpu"))
    assert keep.dtype == torch.bool
    assert (~keep).float().mean().item() == pytest.approx(p, abs=0.005)
    rows = (~keep).float().mean(dim=1)  # every 16-bit slice of a draw is used: no row is left undropped
    assert rows.min().item() > p - 0.1 and rows.max().item() < p + 0.1


def test_dropout_scales_what_it_keeps_and_its_gradient_follows_the_mask() -> None:
    layer = Dropout(0.3)
    x = torch.randn(50, 200, requires_grad=True)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    keep = keep_mask(x.shape, 0.3, x.device)
    assert torch.allclose(out, x * keep / 0.7)
    out.backward(torch.full_like(x, 2.0))
    assert torch.allclose(x.grad, keep * 2.0 / 0.7)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_dropout_keeps_one_byte_per_element_for_the_backward_pass() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(64, 100, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        Dropout(0.5).train()(x)
    assert [t.dtype for t in saved] == [torch.bool]


def test_tfn_state_dict_keys_are_unchanged_by_msmix_dropout() -> None:
    """Checkpoints written before the change still load: the dropout layer holds no state."""
    recipe = resolve_recipe(None, dataset="mosi", backbone="tfn")
    model, _ = build_networks(recipe, DataShape({"text": 4, "audio": 3, "vision": 2}, {"text": 5, "audio": 5, "vision": 5}))
    assert {k for k in model.state_dict() if k.startswith("post_fusion.")} == {
        f"post_fusion.{i}.{kind}" for i in (1, 3, 5) for kind in ("weight", "bias")}


@pytest.mark.parametrize("rows, inputs, input_grad", [(6, 2500, True), (4, 1024, True), (3, 700, False)])
def test_wide_linear_is_nn_linear_and_so_are_its_gradients(rows: int, inputs: int, input_grad: bool) -> None:
    torch.manual_seed(0)
    wide = WideLinear(inputs, 8)
    torch.manual_seed(0)
    plain = nn.Linear(inputs, 8)
    assert torch.equal(wide.weight, plain.weight) and torch.equal(wide.bias, plain.bias)  # same initialisation
    x, upstream = torch.randn(rows, inputs), torch.randn(rows, 8)
    x_wide, x_plain = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)
    out_wide, out_plain = wide(x_wide), plain(x_plain)
    out_wide.backward(upstream)
    out_plain.backward(upstream)
    torch.testing.assert_close(out_wide, out_plain)
    torch.testing.assert_close(wide.weight.grad, plain.weight.grad)
    torch.testing.assert_close(wide.bias.grad, plain.bias.grad)
    if input_grad:
        torch.testing.assert_close(x_wide.grad, x_plain.grad)
    assert wide.state_dict().keys() == plain.state_dict().keys()


def reference_layer(layer: TransformerLayer, x: torch.Tensor, kv: torch.Tensor | None, key_mask: torch.Tensor,
                    visible: torch.Tensor | None) -> torch.Tensor:
    """The layer as it was computed before: nn.MultiheadAttention with the [B, T, S] mask repeated per head."""
    q = layer.norm_attn(x)
    k = q if kv is None else layer.norm_attn(kv)
    hidden = None if visible is None else (~visible).repeat_interleave(layer.attn.num_heads, dim=0)
    attended, _ = layer.attn(q, k, k, key_padding_mask=~key_mask, attn_mask=hidden, need_weights=False)
    x = x + attended
    return x + layer.ffn(layer.norm_ffn(x))


@pytest.mark.parametrize("crossmodal", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_one_broadcast_mask_matches_multihead_attention(crossmodal: bool, causal: bool) -> None:
    torch.manual_seed(0)
    layer = TransformerLayer(12, 3, attn_dropout=0.3).eval()
    x = torch.randn(4, 6, 12)
    kv = torch.randn(4, 9, 12) if crossmodal else None
    steps = 9 if crossmodal else 6
    key_mask = torch.arange(steps)[None, :] < torch.tensor([steps, 3, 5, 1])[:, None]
    visible = None
    if causal:
        visible = torch.rand(4, 6, steps) > 0.4
        visible[:, :, 0] = True  # as MulT's future mask: every query sees the first key
    out = layer(x, kv, attention_mask(key_mask, visible))
    assert torch.allclose(out, reference_layer(layer, x, kv, key_mask, visible), atol=1e-5)


def test_attention_stays_finite_when_a_query_sees_no_key() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask[0, 0, 2] = False
    assert torch.isfinite(attend(q, k, v, mask, dropout=0.0)).all() and torch.isfinite(attend(q, k, v, mask, dropout=0.5)).all()


def test_attention_with_dropout_is_softmax_times_the_mask_times_values_and_so_are_its_gradients() -> None:
    """The hand-written dropout path gives the plain product's output and gradients for the same draws, and keeps
    5 bytes per attention weight for backward (the softmax's output and a 1-byte mask)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, steps, 4, requires_grad=True) for steps in (5, 6, 6))
    mask = torch.rand(2, 1, 5, 6) > 0.3
    grad = torch.randn(2, 3, 5, 4)
    saved: list[torch.Tensor] = []
    torch.manual_seed(7)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = attend(q, k, v, mask, dropout=0.4)
    got = torch.autograd.grad(out, (q, k, v), grad)
    torch.manual_seed(7)
    keep = keep_mask(torch.Size([2, 3, 5, 6]), 0.4, q.device)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask, torch.finfo(q.dtype).min)
    expected = (scores.softmax(-1) * keep / 0.6) @ v
    assert torch.allclose(out, expected, atol=1e-6)
    for a, b in zip(got, torch.autograd.grad(expected, (q, k, v), grad)):
        assert torch.allclose(a, b, atol=1e-5)
    weight_sized = {t.data_ptr(): t for t in saved if t.shape == (2, 3, 5, 6)}  # the softmax's output is saved twice
    assert sorted(t.element_size() for t in weight_sized.values()) == [1, 4]


def test_lstm_without_packing_equals_packing_when_every_sequence_is_whole() -> None:
    torch.manual_seed(0)
    subnet = LSTMSubnet(6, 5, 3, dropout=0.0).eval()
    x = torch.randn(4, 7, 6)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.full((4,), 7), batch_first=True, enforce_sorted=False)
    _, (h, _) = subnet.rnn(packed)
    assert torch.allclose(subnet(x, torch.full((4,), 7)), subnet.linear(h[-1]), atol=1e-6)
    short = torch.tensor([7, 3, 5, 1])  # and packs, so padding is not read, when one is shorter
    assert not torch.allclose(subnet(x, short), subnet(x, torch.full((4,), 7)))
    assert torch.allclose(subnet(x, short)[1], subnet(x[1:2, :3], torch.tensor([3]))[0], atol=1e-6)


@pytest.mark.parametrize("lengths", [[7, 3, 5, 1], [2, 6, 6, 4], [1, 1, 1, 1]])
def test_packed_lstm_final_state_equals_torchs_and_so_do_its_gradients(lengths: list[int]) -> None:
    torch.manual_seed(0)
    rnn = nn.LSTM(6, 5, batch_first=True)
    x = torch.randn(4, 7, 6, requires_grad=True)
    def packed() -> nn.utils.rnn.PackedSequence:
        return nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)

    ours = packed_lstm_final_state(rnn, packed())
    theirs = rnn(packed())[1][0][-1]
    assert torch.allclose(ours, theirs, atol=1e-6)
    grad = torch.randn_like(ours)
    params = (x, *rnn.parameters())
    for a, b in zip(torch.autograd.grad(ours, params, grad), torch.autograd.grad(theirs, params, grad)):
        assert torch.allclose(a, b, atol=1e-5)


def test_adam_is_fused_on_the_cpu() -> None:
    recipe = resolve_recipe(None, dataset="mosi", backbone="lmf")
    model, mixer = build_networks(recipe, DataShape({"text": 4, "audio": 3, "vision": 2}, {"text": 5, "audio": 5, "vision": 5}))
    optimizer = make_optimizer(recipe, model, mixer)
    assert all(group["fused"] for group in optimizer.param_groups)
