"""MISA, ALMT and GLoMo: the backbone contract (shapes, B + K latents, gradients, padding, determinism,
save/load), their own losses and layers, parameter counts against the references at MOSI settings, and the
optional pretrained text encoder."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch

from msmix_cli.errors import BadInput
from msmix_cli.mixing import MixConfig, build_mixer
from msmix_cli.models import almt, glomo, misa
from msmix_cli.models.base import BACKBONES, Backbone, count_parameters, task_loss
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal

DIMS = {"text": 16, "audio": 5, "vision": 7}
SHAPES = {
    "aligned": DataShape(DIMS, {"text": 6, "audio": 6, "vision": 6}),
    "unaligned": DataShape(DIMS, {"text": 6, "audio": 9, "vision": 8}, aligned=False),
}
TINY = {
    "misa": misa.MISAConfig(hidden=8, fusion_ffn=16, dropout=0.1),
    "almt": almt.ALMTConfig(tokens=2, dim=8, heads=2, dim_head=4, mlp_dim=8, hyper_heads=2, hyper_dim_head=4, dropout=0.1),
    "glomo": glomo.GLoMoConfig(width=8, heads=2, layers=1, fusion_ffn=16, fusion_layers=1),
}
CLASSES = {"misa": misa.MISA, "almt": almt.ALMT, "glomo": glomo.GLoMo}
NAMES = sorted(TINY)


def make_model(name: str, setting: str = "unaligned", seed: int = 0, **changes) -> Backbone:
    torch.manual_seed(seed)
    config = TINY[name] if not changes else type(TINY[name])(**{**TINY[name].__dict__, **changes})
    return CLASSES[name](config, SHAPES[setting])


def make_batch(setting: str = "unaligned", size: int = 4, seed: int = 0) -> Batch:
    """Random features; aligned batches share one length per sample, unaligned ones draw per modality."""
    generator = torch.Generator().manual_seed(seed)
    shape = SHAPES[setting]
    features = {m: torch.randn(size, shape.seq_lens[m], DIMS[m], generator=generator) for m in MODALITIES}
    if setting == "aligned":
        shared = torch.randint(1, shape.seq_lens["text"] + 1, (size,), generator=generator)
        shared[0] = shape.seq_lens["text"]
        lengths = {m: shared for m in MODALITIES}
    else:
        lengths = {m: torch.randint(1, shape.seq_lens[m] + 1, (size,), generator=generator) for m in MODALITIES}
        for m in MODALITIES:
            lengths[m][0] = shape.seq_lens[m]
            lengths[m][-1] = 1  # a one-step sample (the only sample when size is 1)
    return Batch(Multimodal(features, lengths), torch.randn(size, generator=generator))


def with_padding(batch: Batch, value: float) -> Batch:
    inputs = batch.inputs
    features = {m: x.masked_fill(~inputs.mask(m).unsqueeze(-1), value) for m, x in inputs.features.items()}
    return Batch(Multimodal(features, inputs.lengths), batch.label)


def total_loss(model: Backbone, batch: Batch) -> torch.Tensor:
    """Task loss on the originals, a second pass of shifted latents standing in for mixed samples, all aux losses."""
    latents = model.encode(batch)
    shifted = latents.views.map(lambda m, x: x.flip(0))
    out = model.head(latents.views.cat(shifted))
    return task_loss(model.task_loss, out.prediction[: batch.size], batch.label) + out.prediction[batch.size:].pow(2).mean() + latents.aux_loss + out.aux_loss


# ---------------------------------------------------------------- the contract, for every backbone


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_its_task_loss(name: str) -> None:
    assert BACKBONES.get(name) is CLASSES[name]
    assert CLASSES[name].config_class is type(TINY[name])
    assert CLASSES[name].task_loss == {"misa": "mse", "almt": "mse", "glomo": "l1"}[name]


@pytest.mark.parametrize("setting", sorted(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_latents_have_the_declared_widths_and_the_head_takes_b_plus_k_rows(name: str, setting: str) -> None:
    model = make_model(name, setting)
    batch = make_batch(setting, size=5)
    latents = model.encode(batch)
    for m in MODALITIES:
        assert latents.views[m].shape[0] == 5
        assert latents.views[m].shape[-1] == model.latent_dims[m]
    extra = latents.views.select(torch.tensor([2, 0, 4]))
    out = model.head(latents.views.cat(extra))
    assert out.prediction.shape == (8, 1)
    assert torch.isfinite(out.prediction).all()
    assert model(batch).prediction.shape == (5, 1)


@pytest.mark.parametrize("name", NAMES)
def test_latent_layouts_are_where_the_paper_mixes(name: str) -> None:
    model = make_model(name)
    views = model.encode(make_batch(size=3)).views
    expected = {
        "misa": (3, 2 * TINY["misa"].hidden),  # concat(shared, private)
        "almt": (3, TINY["almt"].tokens, TINY["almt"].dim),  # the learned tokens' outputs
        "glomo": (3, 1 + TINY["glomo"].segments, TINY["glomo"].width),  # global feature, then local ones
    }[name]
    assert all(tuple(views[m].shape) == expected and views.length(m) is None for m in MODALITIES)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    model = make_model(name)
    model.train()
    total_loss(model, make_batch()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert missing == []


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_one_trains(name: str) -> None:
    """Batch statistics (MISA's CMD and difference loss, GLoMo's load balancing) must not turn NaN at N = 1."""
    model = make_model(name)
    batch = make_batch(size=1)
    latents = model.encode(batch)
    out = model.head(latents.views)
    loss = task_loss(model.task_loss, out.prediction, batch.label) + latents.aux_loss + out.aux_loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("value", [0.0, 1e4, float("-inf"), float("nan")])
@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_predictions(name: str, value: float) -> None:
    model = make_model(name).eval()
    batch = make_batch(size=4)
    with torch.no_grad():
        reference = model(batch).prediction
        padded = model(with_padding(batch, value)).prediction
    torch.testing.assert_close(padded, reference)


@pytest.mark.parametrize("name", NAMES)
def test_trailing_padding_steps_do_not_change_predictions(name: str) -> None:
    """The same samples padded to fewer steps: padding must be out of attention, pooling and recurrences."""
    model = make_model(name).eval()
    batch = make_batch(size=4)
    keep = {m: SHAPES["unaligned"].seq_lens[m] - 2 for m in MODALITIES}
    lengths = {m: batch.inputs.length(m).clamp(max=keep[m]) for m in MODALITIES}
    long = Batch(Multimodal(batch.inputs.features, lengths), batch.label)
    short = Batch(Multimodal({m: x[:, : keep[m]] for m, x in batch.inputs.features.items()}, lengths), batch.label)
    with torch.no_grad():
        torch.testing.assert_close(model(short).prediction, model(long).prediction)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model_and_same_training_step(name: str) -> None:
    results = []
    for _ in range(2):
        model = make_model(name, seed=3).train()
        torch.manual_seed(7)  # dropout and GLoMo's gate noise
        loss = total_loss(model, make_batch())
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    other = make_model(name, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(make_model(name, seed=3).parameters(), other.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    model = make_model(name, seed=1).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = make_model(name, seed=2).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(restored(batch).prediction, model(batch).prediction, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_ms_mix_runs_on_the_latents(name: str) -> None:
    """The real MS-Mix mixer on each backbone's latents, then one head pass over originals and mixed."""
    model = make_model(name).train()
    batch = make_batch(size=6)
    latents = model.encode(batch)
    mixer = build_mixer(MixConfig(), model.latent_dims, 3.0)
    mix = mixer(latents.views, batch.label, np.random.default_rng(0))
    out = model.head(latents.views.cat(mix.views))
    assert out.prediction.shape == (6 + mix.views.batch_size, 1)
    (out.prediction.sum() + mix.loss).backward()
    assert all(p.grad is not None for p in mixer.parameters())


# ---------------------------------------------------------------- parameter counts at MOSI settings

MOSI_ALIGNED = DataShape({"text": 768, "audio": 5, "vision": 20}, {"text": 50, "audio": 50, "vision": 50})
MOSI_UNALIGNED = DataShape({"text": 768, "audio": 5, "vision": 20}, {"text": 50, "audio": 375, "vision": 500}, aligned=False)

# The reference numbers come from rebuilding each reference module's parameter structure (its constructors
# only, with the same nn layers and sizes, BERT left out) from the source at MOSI settings, in a throwaway
# script, and agree with a count by hand:
#  - MISA, thuiar/MMSA src/MMSA/models/singleTask/MISA.py with config_regression.json's MOSI entry
#    (hidden_size 128, rnncell lstm, use_cmd_sim, so no discriminator): sLSTMs v 6,720 + 9,920, a 480 + 680;
#    project_t 98,688, project_v 10,624, project_a 2,944; 3 private + 1 shared + 3 recon layers 115,584;
#    sp_discriminator 516; fusion MLP 295,681; LayerNorms t 3,072, v 80, a 20; nn.TransformerEncoderLayer(128,
#    nhead=2), ff 2048: 593,024. Total 1,138,033. msmix leaves out sp_discriminator (its loss is never added)
#    and the text LayerNorm (unused with BERT): 1,134,445, 0.3% fewer.
#  - ALMT, Haoyu-ha/ALMT models/almt.py + almt_layer.py with configs/mosi.yaml (8 tokens of 128, dim_head 64,
#    embedding depth 1, language encoder depth 2, AHL depth 3 with 8 x 16 heads, fusion depth 2, mlp 128):
#    one transformer layer is 296,320; proj_l 403,200, proj_a 305,536, proj_v 307,456 at lengths 50/50/50
#    (their positions cover length + 8); l_encoder 593,664; hyper layers 298,368; fusion 595,072; h_hyper
#    1,024; regression 129. Total 2,504,449 aligned, 2,603,649 at the config's unaligned lengths 50/375/500.
#  - GLoMo (not required; recorded for reference), YetZzzzzz/GLoMo GLoMo_MSA/GLoMo.py with main_GLoMo.py's
#    defaults (d_l 96, 16 heads, 2 layers, 3 segments, 3 experts) and MMSA's MOSI widths: 2,084,999, with the
#    MoE experts taken as Linear(288, 96) + Linear(96, 96) and two [288, 3] gate matrices each.
REFERENCE_COUNTS = [
    ("misa", MOSI_ALIGNED, 1_138_033),
    ("almt", MOSI_ALIGNED, 2_504_449),
    ("almt", MOSI_UNALIGNED, 2_603_649),
    ("glomo", MOSI_ALIGNED, 2_084_999),
]


@pytest.mark.parametrize(("name", "shape", "reference"), REFERENCE_COUNTS)
def test_parameter_count_is_within_5_percent_of_the_reference(name: str, shape: DataShape, reference: int) -> None:
    model = CLASSES[name](CLASSES[name].config_class(), shape)
    ours = count_parameters(model)
    assert abs(ours - reference) / reference < 0.05
    assert ours == {"misa": 1_134_445}.get(name, reference)  # exact, so a structural change is noticed


# ---------------------------------------------------------------- reference defaults


def test_defaults_are_the_mosi_reference_settings() -> None:
    m, a, g = misa.MISAConfig(), almt.ALMTConfig(), glomo.GLoMoConfig()
    assert (m.hidden, m.dropout, m.diff_weight, m.sim_weight, m.recon_weight, m.cmd_moments) == (128, 0.2, 0.1, 0.3, 1.0, 5)
    assert (a.tokens, a.dim, a.heads, a.embed_depth, a.hyper_depth, a.fusion_depth) == (8, 128, 8, 1, 3, 2)
    assert (g.width, g.heads, g.segments, g.experts, g.top_k) == (96, 16, 3, 3, 2)
    assert m.text_encoder is a.text_encoder is g.text_encoder is None


# ---------------------------------------------------------------- MISA's parts


def test_misa_difference_loss_is_zero_for_uncorrelated_codes_only() -> None:
    """It penalises the cross-correlation of two codes over the batch."""
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    uncorrelated = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [0.0, -1.0]])
    correlated = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0]])
    assert misa.difference_loss(a, uncorrelated).item() == pytest.approx(0.0, abs=1e-8)
    assert misa.difference_loss(a, correlated).item() == pytest.approx(4.0, rel=1e-4)  # one entry of 4^2, mean over 2 x 2


def test_misa_cmd_is_zero_for_equal_samples_and_grows_with_a_shift() -> None:
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    assert misa.central_moment_discrepancy(x, x.clone(), 5).item() == pytest.approx(0.0, abs=1e-6)
    near = misa.central_moment_discrepancy(x, x + 0.1, 5).item()
    far = misa.central_moment_discrepancy(x, x + 1.0, 5).item()
    assert 0 < near < far
    # only the means differ: CMD is then exactly the distance of the means
    assert far == pytest.approx(float(torch.full((6,), 1.0).norm()), rel=1e-5)


def test_misa_loss_weights_scale_its_auxiliary_losses() -> None:
    batch = make_batch()
    base = make_model("misa")
    latents = base.encode(batch)
    out = base.head(latents.views)
    assert latents.aux_loss.item() > 0 and out.aux_loss.item() > 0
    off = make_model("misa", diff_weight=0.0, sim_weight=0.0, recon_weight=0.0)
    off_latents = off.encode(batch)
    assert off_latents.aux_loss.item() == 0.0 and off.head(off_latents.views).aux_loss.item() == 0.0
    double = make_model("misa", recon_weight=2.0)
    assert double.encode(batch).aux_loss.item() == pytest.approx(2 * latents.aux_loss.item())


def test_misa_latents_are_shared_then_private_codes() -> None:
    """Each half is a sigmoid code; the shared half of all modalities comes from one layer."""
    model = make_model("misa")
    views = model.encode(make_batch()).views
    h = TINY["misa"].hidden
    for m in MODALITIES:
        assert ((views[m] > 0) & (views[m] < 1)).all()
    projected = model.project["text"](model.utterances(make_batch())["text"])
    torch.testing.assert_close(views["text"][:, :h], model.shared(projected))
    torch.testing.assert_close(views["text"][:, h:], model.private["text"](projected))


# ---------------------------------------------------------------- ALMT's parts


def test_almt_rejects_sequences_longer_than_it_was_built_for() -> None:
    model = make_model("almt", setting="aligned")
    with pytest.raises(BadInput, match="at most 6 steps"):
        model.encode(make_batch("unaligned"))


def test_almt_tokens_read_the_sequence() -> None:
    """The latents are the learned tokens' outputs, and they attend to the valid steps."""
    model = make_model("almt").eval()
    batch = make_batch()
    changed = Batch(batch.inputs.map(lambda m, x: x + 1.0 if m == "audio" else x), batch.label)
    with torch.no_grad():
        before, after = model.encode(batch).views, model.encode(changed).views
    torch.testing.assert_close(before["text"], after["text"])
    assert not torch.allclose(before["audio"], after["audio"])


# ---------------------------------------------------------------- GLoMo's parts


def test_segment_max_matches_adaptive_max_pooling_on_the_valid_steps() -> None:
    x = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([10, 7, 2])
    pooled = glomo.segment_max(x, lengths, 3)
    for i, n in enumerate(lengths.tolist()):
        expected = torch.nn.functional.adaptive_max_pool1d(x[i : i + 1, :n].transpose(1, 2), 3).transpose(1, 2)
        torch.testing.assert_close(pooled[i : i + 1], expected)
    torch.testing.assert_close(glomo.segment_max(x, None, 1)[:, 0], x.amax(dim=1))


def test_join_valid_puts_the_valid_steps_of_both_sequences_together() -> None:
    first = torch.arange(8.0).reshape(2, 4, 1)
    second = -torch.arange(8.0).reshape(2, 4, 1) - 1
    joined, lengths = glomo.join_valid(first, second, torch.tensor([4, 2]))
    assert lengths.tolist() == [8, 4]
    assert joined[0, :, 0].tolist() == [0, 1, 2, 3, -1, -2, -3, -4]
    assert joined[1, :4, 0].tolist() == [4, 5, -5, -6]


def test_sparse_moe_routes_each_row_to_k_experts_and_mixes_their_outputs() -> None:
    torch.manual_seed(0)
    moe = glomo.SparseMoE(6, 4, 5, experts=3, k=2, weight=0.01)
    torch.nn.init.normal_(moe.gate)
    x = torch.randn(10, 6)
    moe.eval()
    gates, load = moe.route(x)
    assert ((gates > 0).sum(dim=1) == 2).all()
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(10))
    assert load.sum().item() == 20
    out, loss = moe(x)
    expected = sum(gates[:, e : e + 1] * moe.experts[e](x) for e in range(3))
    torch.testing.assert_close(out, expected)
    assert loss.item() >= 0
    moe.train()
    _, train_load = moe.route(x)
    assert train_load.requires_grad  # the smooth load, through which the noise weights learn


def test_moe_balance_loss_penalises_uneven_use() -> None:
    balanced = glomo.squared_variation(torch.tensor([4.0, 4.0, 4.0]))
    skewed = glomo.squared_variation(torch.tensor([10.0, 1.0, 1.0]))
    assert balanced.item() == 0.0 and skewed.item() > 1.0


def test_glomo_head_loss_is_the_weighted_moe_loss() -> None:
    batch = make_batch()
    off = make_model("glomo", moe_loss_weight=0.0)
    with torch.no_grad():
        assert float(off.head(off.encode(batch).views).aux_loss) == 0.0
        on = make_model("glomo")
        assert float(on.head(on.encode(batch).views).aux_loss) > 0.0


def test_glomo_rejects_top_k_above_the_expert_count() -> None:
    with pytest.raises(BadInput, match="top_k"):
        make_model("glomo", experts=2, top_k=3)


# ---------------------------------------------------------------- the optional pretrained text encoder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).save_pretrained(path)
    return str(path)


def with_text_ids(batch: Batch, vocab: int = 40) -> Batch:
    """MMSA's text_bert rows, stored as floats: ids, attention mask (the text lengths), segment ids."""
    steps = batch.inputs["text"].shape[1]
    mask = batch.inputs.mask("text").float()
    ids = torch.randint(1, vocab, (batch.size, steps), generator=torch.Generator().manual_seed(0)).float() * mask
    return Batch(batch.inputs, batch.label, text_ids=torch.stack([ids, mask, torch.zeros_like(mask)], dim=1))


@pytest.mark.parametrize("name", NAMES)
def test_text_encoder_is_fine_tuned_through_the_backbone(name: str, tiny_bert: str) -> None:
    model = make_model(name, text_encoder=tiny_bert).train()
    assert model.text_encoder.hidden_size == 12
    batch = with_text_ids(make_batch())
    total_loss(model, batch).backward()
    bert = dict(model.text_encoder.named_parameters())
    assert bert and all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in bert.items() if "pooler" not in n)
    frozen = make_model(name, text_encoder=tiny_bert, finetune_text=False)
    assert count_parameters(frozen) == count_parameters(model) - sum(p.numel() for p in bert.values())


def test_text_encoder_needs_token_ids(tiny_bert: str) -> None:
    model = make_model("misa", text_encoder=tiny_bert)
    with pytest.raises(BadInput, match="text_bert"):
        model.encode(make_batch())


def test_text_encoder_refuses_input_level_mixing(tiny_bert: str) -> None:
    model = make_model("almt", text_encoder=tiny_bert)
    batch = with_text_ids(make_batch())
    doubled = Batch(batch.inputs.cat(batch.inputs), torch.cat([batch.label, batch.label]), text_ids=batch.text_ids)
    with pytest.raises(BadInput, match="latent-space mixer"):
        model.encode(doubled)


def test_text_encoder_reports_a_bad_directory(tmp_path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(BadInput, match="not a directory"):
        make_model("misa", text_encoder=str(tmp_path / "missing"))
    with pytest.raises(BadInput, match="cannot load"):
        make_model("misa", text_encoder=str(tmp_path))


def test_text_encoder_without_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(BadInput, match=r"pip install 'msmix\[bert\]'"):
        make_model("almt", text_encoder=str(tmp_path))
