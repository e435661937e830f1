"""TFN, LMF and MulT: the backbone contract (shapes, B + K latents, gradients, padding, determinism, save/load)
and parameter counts equal to MMSA's at the MOSI reference settings."""

from __future__ import annotations

import io

import pytest
import torch

from msmix_cli.models import BACKBONES, Backbone, build_backbone, count_parameters, task_loss
from msmix_cli.models.lmf import LMFConfig
from msmix_cli.models.mult import MulTConfig, future_mask
from msmix_cli.models.tfn import TFNConfig
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal

DIMS = {"text": 16, "audio": 5, "vision": 7}
SHAPES = {
    "aligned": DataShape(DIMS, {"text": 8, "audio": 8, "vision": 8}),
    "aligned-lengths": DataShape(DIMS, {"text": 8, "audio": 8, "vision": 8}),
    "unaligned": DataShape(DIMS, {"text": 8, "audio": 12, "vision": 10}, aligned=False),
}
TINY = {
    "tfn": TFNConfig(hidden_dims=(8, 4, 6), text_out=4, post_fusion_dim=8, dropouts=(0.1, 0.1, 0.1, 0.1)),
    "lmf": LMFConfig(hidden_dims=(8, 4, 6), text_out=4, dropouts=(0.1, 0.1, 0.1), rank=2),
    "mult": MulTConfig(d_model=8, heads=2, layers=1, conv_kernels=(3, 1, 3)),
}
NAMES = sorted(TINY)


def make_model(name: str, setting: str, seed: int = 0, shape: DataShape | None = None) -> Backbone:
    torch.manual_seed(seed)
    return build_backbone(name, TINY[name], shape or SHAPES[setting])


def make_batch(setting: str, size: int = 4, seed: int = 0, min_length: int = 1) -> Batch:
    """Random features; with lengths unless `setting` is "aligned" (aligned-lengths: one length per sample)."""
    generator = torch.Generator().manual_seed(seed)
    shape = SHAPES[setting]
    features = {m: torch.randn(size, shape.seq_lens[m], DIMS[m], generator=generator) for m in MODALITIES}
    if setting == "aligned":
        lengths: dict[str, torch.Tensor | None] = {m: None for m in MODALITIES}
    elif setting == "aligned-lengths":
        shared = torch.randint(min_length, shape.seq_lens["text"] + 1, (size,), generator=generator)
        shared[0] = shape.seq_lens["text"]
        lengths = {m: shared for m in MODALITIES}
    else:
        lengths = {m: torch.randint(min_length, shape.seq_lens[m] + 1, (size,), generator=generator) for m in MODALITIES}
        for m in MODALITIES:
            lengths[m][0] = shape.seq_lens[m]  # one sample without padding
    return Batch(Multimodal(features, lengths), torch.randn(size, generator=generator))


def with_padding(batch: Batch, value: float) -> Batch:
    """The same batch with every padded step set to `value`."""
    inputs = batch.inputs
    features = {m: x.masked_fill(~inputs.mask(m).unsqueeze(-1), value) for m, x in inputs.features.items()}
    return Batch(Multimodal(features, inputs.lengths), batch.label)


def blend(views: Multimodal, ratio: float = 0.3) -> Multimodal:
    """Stand-in for a mixer: each sample blended with the next; lengths the longer of the two."""
    order = torch.roll(torch.arange(views.batch_size), 1)
    other = views.select(order)
    lengths = {m: None if n is None else torch.maximum(n, other.length(m)) for m, n in views.lengths.items()}
    features = {m: ratio * x + (1 - ratio) * other[m] for m, x in views.features.items()}
    return Multimodal(features, lengths)


@pytest.mark.parametrize("setting", sorted(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_one_finite_score_per_sample(name: str, setting: str) -> None:
    model = make_model(name, setting).eval()
    prediction = model(make_batch(setting, size=5)).prediction
    assert prediction.shape == (5, 1)
    assert torch.isfinite(prediction).all()


@pytest.mark.parametrize("setting", sorted(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_head_scores_originals_and_mixed_independently(name: str, setting: str) -> None:
    model = make_model(name, setting).eval()
    with torch.no_grad():
        first = model.encode(make_batch(setting, size=4, seed=1)).views
        second = model.encode(make_batch(setting, size=3, seed=2)).views
        both = model.head(first.cat(blend(second))).prediction
        alone = model.head(first).prediction
    assert both.shape == (7, 1)
    torch.testing.assert_close(both[:4], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("setting", sorted(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_a_train_step_reaches_every_parameter(name: str, setting: str) -> None:
    model = make_model(name, setting).train()
    batch = make_batch(setting, size=4)
    views = model.encode(batch).views
    prediction = model.head(views.cat(blend(views))).prediction
    assert prediction.shape == (8, 1)
    task_loss(model.task_loss, prediction, torch.cat([batch.label, batch.label])).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{parameter_name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_the_same_training_output(name: str) -> None:
    def run(seed: int) -> torch.Tensor:
        model = make_model(name, "unaligned", seed=seed).train()
        torch.manual_seed(seed)  # dropout
        return model(make_batch("unaligned")).prediction

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize("setting", ["aligned-lengths", "unaligned"])
@pytest.mark.parametrize("name", NAMES)
def test_padding_values_do_not_change_the_prediction(name: str, setting: str) -> None:
    model = make_model(name, setting).eval()
    batch = make_batch(setting, size=6, seed=3)
    with torch.no_grad():
        reference = model(with_padding(batch, 0.0)).prediction
        for value in (7.5, float("-inf"), float("nan")):
            torch.testing.assert_close(model(with_padding(batch, value)).prediction, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("setting", ["aligned-lengths", "unaligned"])
@pytest.mark.parametrize("name", NAMES)
def test_a_padded_sample_scores_as_its_unpadded_self(name: str, setting: str) -> None:
    """Reads the last *valid* step and masks padding: cutting a sample to its lengths changes nothing."""
    model = make_model(name, setting).eval()
    batch = make_batch(setting, size=5, seed=4, min_length=3)  # MulT's widest kernel is 3
    with torch.no_grad():
        padded = model(batch).prediction
        for i in range(batch.size):
            lengths = {m: int(batch.inputs.length(m)[i]) for m in MODALITIES}
            cut = {m: batch.inputs[m][i:i + 1, :lengths[m]] for m in MODALITIES}
            alone = model(Batch(Multimodal(cut, {m: None for m in MODALITIES}), batch.label[i:i + 1])).prediction
            torch.testing.assert_close(alone, padded[i:i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_restores_the_output(name: str) -> None:
    trained = make_model(name, "unaligned", seed=0).train()
    trained(make_batch("unaligned", seed=5))  # moves BatchNorm running statistics off their start values
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    restored = make_model(name, "unaligned", seed=1)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    batch = make_batch("unaligned", seed=6)
    with torch.no_grad():
        assert torch.equal(restored.eval()(batch).prediction, trained.eval()(batch).prediction)


def test_tfn_output_spans_the_label_range() -> None:
    sims_like = DataShape(DIMS, SHAPES["unaligned"].seq_lens, label_range=1.0, aligned=False)
    model = make_model("tfn", "unaligned", shape=sims_like).eval()
    for bias, end in ((50.0, 1.0), (-50.0, -1.0)):  # saturate the sigmoid at either end
        with torch.no_grad():
            model.post_fusion[-1].bias.fill_(bias)
            prediction = model(make_batch("unaligned")).prediction
        torch.testing.assert_close(prediction, torch.full_like(prediction, end))


def test_lmf_gives_its_fusion_the_factor_learning_rate() -> None:
    model = make_model("lmf", "aligned")
    fusion, rest = model.param_groups(lr=0.01, weight_decay=0.005)
    assert fusion["lr"] == TINY["lmf"].factor_lr and rest["lr"] == 0.01
    assert fusion["weight_decay"] == rest["weight_decay"] == 0.005
    assert {id(p) for p in fusion["params"]} == {id(p) for p in [*model.factors.values(), model.fusion_weights, model.fusion_bias]}
    grouped = [id(p) for group in (fusion, rest) for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_mult_future_mask_is_the_reference_triangle_with_the_length_offset() -> None:
    same = future_mask(torch.tensor([4]), torch.tensor([4]), 4, 4)[0]
    torch.testing.assert_close(same, torch.ones(4, 4).tril().bool())
    # queries of length 2 over keys of length 5: offset 3, so query 0 sees keys 0..3 and query 1 all five
    longer_keys = future_mask(torch.tensor([2]), torch.tensor([5]), 2, 5)[0]
    assert longer_keys.tolist() == [[True, True, True, True, False], [True] * 5]


def test_mult_encode_shrinks_lengths_by_the_kernel() -> None:
    model = make_model("mult", "unaligned")
    batch = make_batch("unaligned")
    views = model.encode(batch).views
    for m, kernel in zip(MODALITIES, TINY["mult"].conv_kernels):
        assert views[m].shape == (4, SHAPES["unaligned"].seq_lens[m] - kernel + 1, 8)
        expected = (batch.inputs.length(m) - kernel + 1).clamp_min(1)
        assert torch.equal(views.length(m), expected)


# MMSA's parameter counts at its MOSI settings (config_regression.json), derived by hand from its code
# (thuiar/MMSA, src/MMSA/models/...), counting trainable parameters only:
#   SubNet(in, h) (subNets/FeatureNets.py): BatchNorm1d 2*in + Linear(in,h) + 2*Linear(h,h)
#       = 2in + (in*h + h) + 2(h*h + h)
#   TextSubNet(in, h, out): one-layer LSTM 4h(in + h) + 8h, + Linear(h, out) = h*out + out
# TFN (singleTask/TFN.py), hidden (t, a, v) = (128, 32, 128), text_out 32, post_fusion 64, feature dims 768/5/20:
#   audio SubNet(5, 32) = 10 + 192 + 2*1056 = 2,314; video SubNet(20, 128) = 40 + 2,688 + 2*16,512 = 35,752
#   TextSubNet(768, 128, 32) = 4*128*896 + 1,024 + 4,128 = 463,904
#   post_fusion_layer_1: (32+1)(32+1)(128+1) = 140,481 inputs -> 64: 8,990,848; layer_2 4,160; layer_3 65
#   (output_range / output_shift are requires_grad=False)                       total 9,497,043
# LMF (singleTask/LMF.py), hidden (128, 16, 128), text_out = 128 // 2 = 64, rank 3:
#   audio SubNet(5, 16) = 650; video SubNet(20, 128) = 35,752; TextSubNet(768, 128, 64) = 459,776 + 8,256
#   factors 3*(16+1) + 3*(128+1) + 3*(64+1) = 633, fusion_weights 3, fusion_bias 1  total 505,071
# MulT (singleTask/MULT.py + subNets/transformers_encoder/), d = 50, 10 heads, nlevels 4, kernels 5/5/5:
#   Conv1d without bias: 50*5*(768 + 5 + 20) = 198,250
#   TransformerEncoderLayer(d): attention 4d^2 + 4d, fc1 + fc2 8d^2 + 5d, two LayerNorms 4d = 12d^2 + 13d
#   TransformerEncoder(d, n) = n(12d^2 + 13d) + 2d (final LayerNorm); positions are not parameters
#   six crossmodal encoders (d = 50, n = 4): 6 * 122,700 = 736,200
#   three memory encoders (d = 100, n = max(4, 3) = 4): 3 * 485,400 = 1,456,200
#   proj1, proj2 (300 -> 300): 2 * 90,300; out_layer 301                        total 2,571,551
# No MMSA count depends on the sequence lengths, so aligned (50/50/50) and unaligned (50/375/500) agree.
MMSA_MOSI_PARAMETERS = {"tfn": 9_497_043, "lmf": 505_071, "mult": 2_571_551}


@pytest.mark.parametrize("seq_lens", [(50, 50, 50), (50, 375, 500)], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("name", sorted(MMSA_MOSI_PARAMETERS))
def test_mosi_parameter_count_matches_mmsa(name: str, seq_lens: tuple[int, int, int]) -> None:
    mosi = DataShape({"text": 768, "audio": 5, "vision": 20}, dict(zip(MODALITIES, seq_lens)), aligned=seq_lens[1] == 50)
    model = build_backbone(name, BACKBONES.get(name).config_class(), mosi)
    assert count_parameters(model) == pytest.approx(MMSA_MOSI_PARAMETERS[name], rel=0.05)
