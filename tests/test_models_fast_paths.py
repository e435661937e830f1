"""The faster computations of the training step give what the plain ones give: TFN's fusion, the cheaper
dropout, attention with one broadcast mask, the LSTM without packing, fused Adam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msmix_cli.models.blocks import (LSTMSubnet, TransformerLayer, WideDropout, attend, attention_mask, dropout_keep,
                                     outer_product)
from msmix_cli.recipes import resolve_recipe
from msmix_cli.training.loop import build_networks, make_optimizer
from msmix_cli.types import DataShape


def test_outer_product_is_tfns_einsum() -> None:
    generator = torch.Generator().manual_seed(0)
    audio, vision, text = (torch.randn(5, width, generator=generator) for width in (3, 4, 2))
    expected = torch.einsum("na,nv,nt->navt", audio, vision, text).flatten(1)
    assert torch.allclose(outer_product([audio, vision, text]), expected)


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_dropout_keep_drops_p_and_scales_the_rest(p: float) -> None:
    torch.manual_seed(0)
    keep = dropout_keep(torch.Size([400, 1000]), p, torch.float32, torch.device("cpu"))
    assert keep.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    assert (keep == 0).float().mean().item() == pytest.approx(p, abs=0.005)
    rows = (keep == 0).float().mean(dim=1)  # every 16-bit slice of a draw is used: no row is left undropped
    assert rows.min().item() > p - 0.1 and rows.max().item() < p + 0.1


def test_wide_dropout_is_identity_in_eval_and_seeded_in_training() -> None:
    layer = WideDropout(0.5)
    x = torch.randn(8, 100)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    torch.manual_seed(1)
    first = layer(x)
    torch.manual_seed(1)
    assert torch.equal(layer(x), first)
    assert torch.equal(WideDropout(1.0).train()(x), torch.zeros_like(x))


def test_tfn_state_dict_keys_are_unchanged_by_wide_dropout() -> None:
    """Checkpoints written before the change still load: the dropout layer holds no state."""
    recipe = resolve_recipe(None, dataset="mosi", backbone="tfn")
    model, _ = build_networks(recipe, DataShape({"text": 4, "audio": 3, "vision": 2}, {"text": 5, "audio": 5, "vision": 5}))
    assert {k for k in model.state_dict() if k.startswith("post_fusion.")} == {
        f"post_fusion.{i}.{kind}" for i in (1, 3, 5) for kind in ("weight", "bias")}


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


def test_adam_is_fused_on_the_cpu() -> None:
    recipe = resolve_recipe(None, dataset="mosi", backbone="lmf")
    model, mixer = build_networks(recipe, DataShape({"text": 4, "audio": 3, "vision": 2}, {"text": 5, "audio": 5, "vision": 5}))
    optimizer = make_optimizer(recipe, model, mixer)
    assert all(group["fused"] for group in optimizer.param_groups)
