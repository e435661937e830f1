"""Mixers: SASS pair selection, SIG ratios, SAL, MS-Mix end to end, the Mixup baselines, and purity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msmix_cli.mixing import MIXERS, MixConfig, build_mixer, mix_loss
from msmix_cli.mixing.base import masked_mean
from msmix_cli.mixing.mixup import ManifoldMixup, Mixup
from msmix_cli.mixing.msmix import MSMix
from msmix_cli.mixing.sal import sentiment_alignment_loss
from msmix_cli.mixing.sass import normalise_similarity, random_pairs, select_pairs, similarity_matrix
from msmix_cli.mixing.sig import IntensityPredictor, label_ratio, modality_ratios
from msmix_cli.types import Multimodal

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DIMS = {"text": 12, "audio": 5, "vision": 7}


def latents(batch: int = 6, seed: int = 0, device: str = "cpu", steps: int = 4) -> tuple[Multimodal, torch.Tensor]:
    """Text [B, d]; audio and vision [B, T, d] with padding (random junk) after their lengths."""
    gen = torch.Generator().manual_seed(seed)
    features = {
        "text": torch.randn(batch, DIMS["text"], generator=gen),
        "audio": torch.randn(batch, steps, DIMS["audio"], generator=gen),
        "vision": torch.randn(batch, steps, DIMS["vision"], generator=gen),
    }
    lengths = {m: torch.randint(1, steps + 1, (batch,), generator=gen) for m in ("audio", "vision")}
    label = torch.empty(batch).uniform_(-3, 3, generator=gen)
    views = Multimodal({m: x.to(device).requires_grad_() for m, x in features.items()}, {m: n.to(device) for m, n in lengths.items()})
    return views, label.to(device)


def msmix(**overrides: object) -> MSMix:
    torch.manual_seed(0)
    return build_mixer(MixConfig(name="msmix", **overrides), DIMS, label_range=3.0)


def pair_set(pairs: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(p) for p in pairs.tolist()}


def hand_similarity(scores: np.ndarray) -> torch.Tensor:
    """A symmetric similarity whose normalised form S' is `scores` (already in [0, 1] with min 0, max 1)."""
    sim = torch.tensor(scores, dtype=torch.float32)
    return sim + torch.eye(len(scores)) * 7.0  # the diagonal must play no part


# ---- SASS ----------------------------------------------------------------------------------------


def test_normalise_similarity_uses_off_diagonal_only() -> None:
    sim = torch.tensor([[9.0, 0.2, 0.6], [0.2, 9.0, 1.0], [0.6, 1.0, 9.0]])
    scaled = normalise_similarity(sim)
    assert torch.allclose(scaled, torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.5, 1.0, 0.0]]))


def test_normalise_similarity_flat_is_one_half() -> None:
    scaled = normalise_similarity(torch.full((3, 3), 0.3) + torch.eye(3))
    assert torch.equal(scaled, torch.full((3, 3), 0.5) * (1 - torch.eye(3)))


def test_sass_never_selects_below_threshold_with_enough_candidates() -> None:
    scores = np.array([
        [0.0, 0.9, 0.1, 0.8, 0.0],
        [0.9, 0.0, 0.7, 0.2, 0.3],
        [0.1, 0.7, 0.0, 0.4, 1.0],
        [0.8, 0.2, 0.4, 0.0, 0.35],
        [0.0, 0.3, 1.0, 0.35, 0.0],
    ])
    above = {(i, j) for i in range(5) for j in range(5) if i != j and scores[i, j] > 0.4}  # 8 ordered pairs
    seen: set[tuple[int, int]] = set()
    for seed in range(40):
        pairs = select_pairs(hand_similarity(scores), 5, 0.4, np.random.default_rng(seed)).pairs
        assert pairs.shape == (5, 2) and pairs.dtype == torch.long
        assert pair_set(pairs) <= above and len(pair_set(pairs)) == 5  # without replacement
        seen |= pair_set(pairs)
    assert seen == above  # uniform over every candidate, both orders


def test_sass_falls_back_to_the_most_similar_upper_triangle_pairs() -> None:
    scores = np.array([
        [0.0, 0.5, 0.3, 0.1, 0.0],
        [0.5, 0.0, 0.2, 0.25, 0.05],
        [0.3, 0.2, 0.0, 1.0, 0.15],
        [0.1, 0.25, 1.0, 0.0, 0.12],
        [0.0, 0.05, 0.15, 0.12, 0.0],
    ])
    top_six = {(2, 3), (0, 1), (0, 2), (1, 3), (1, 2), (2, 4)}  # only (2, 3)/(3, 2) pass delta = 0.6: 2 < 3
    seen: set[tuple[int, int]] = set()
    for seed in range(60):
        pairs = select_pairs(hand_similarity(scores), 3, 0.6, np.random.default_rng(seed)).pairs
        assert len(pair_set(pairs)) == 3 and pair_set(pairs) <= top_six
        seen |= pair_set(pairs)
    assert seen == top_six
    candidates_suffice = select_pairs(hand_similarity(scores), 2, 0.6, np.random.default_rng(0)).pairs
    assert pair_set(candidates_suffice) == {(2, 3), (3, 2)}


def test_sass_draws_with_replacement_when_the_batch_is_too_small() -> None:
    sim = hand_similarity(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.5, 0.0]]))
    pairs = select_pairs(sim, 5, 0.99, np.random.default_rng(0)).pairs  # 2 candidates, pool of all 3 pairs < 5
    assert pairs.shape == (5, 2)
    assert pair_set(pairs) <= {(0, 1), (0, 2), (1, 2)}


def test_sass_same_polarity() -> None:
    scores = np.full((6, 6), 0.9) - np.eye(6) * 0.9
    label = torch.tensor([-2.0, -1.0, 0.5, 1.0, 2.5, -0.3])
    sign = torch.sign(label)
    crossing = []
    for seed in range(20):
        chosen = select_pairs(hand_similarity(scores), 6, 0.4, np.random.default_rng(seed), label, same_polarity=True).pairs
        assert all(sign[i] == sign[j] for i, j in chosen.tolist())
        free = select_pairs(hand_similarity(scores), 6, 0.4, np.random.default_rng(seed), label).pairs
        crossing += [sign[i] != sign[j] for i, j in free.tolist()]
    assert any(crossing)


def test_sass_same_polarity_holds_in_the_fallback() -> None:
    scores = np.array([[0.0, 1.0, 0.0, 0.2], [1.0, 0.0, 0.1, 0.0], [0.0, 0.1, 0.0, 0.3], [0.2, 0.0, 0.3, 0.0]])
    label = torch.tensor([1.0, -1.0, 2.0, -2.0])  # same sign: (0, 2) and (1, 3) only, both below delta
    pairs = select_pairs(hand_similarity(scores), 3, 0.5, np.random.default_rng(0), label, same_polarity=True).pairs
    assert pair_set(pairs) <= {(0, 2), (1, 3)}


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.integers(1, 12), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_sass_pairs_are_valid_for_any_similarity(batch: int, num_mix: int, delta: float, seed: int) -> None:
    raw = torch.rand(batch, batch, generator=torch.Generator().manual_seed(seed))
    sim = (raw + raw.T) / 2
    pairs = select_pairs(sim, num_mix, delta, np.random.default_rng(seed)).pairs
    scaled = normalise_similarity(sim)
    assert pairs.shape == (num_mix, 2)
    assert bool((pairs[:, 0] != pairs[:, 1]).all())
    if int(((scaled > delta) & ~torch.eye(batch, dtype=torch.bool)).sum()) >= num_mix:
        assert bool((scaled[pairs[:, 0], pairs[:, 1]] > delta).all())


def test_random_pairs_are_distinct_and_cover_the_batch() -> None:
    pairs = random_pairs(5, 400, np.random.default_rng(0))
    assert pairs.shape == (400, 2) and bool((pairs[:, 0] != pairs[:, 1]).all())
    assert len(pair_set(pairs)) == 20


def test_batch_of_one_has_no_pairs() -> None:
    assert select_pairs(torch.ones(1, 1), 4, 0.4, np.random.default_rng(0)).pairs.shape == (0, 2)
    assert random_pairs(1, 4, np.random.default_rng(0)).shape == (0, 2)


def test_similarity_is_the_mean_cosine_of_pooled_latents() -> None:
    views, _ = latents()
    expected = []
    for m, x in views.features.items():
        pooled = x if x.dim() == 2 else torch.stack([x[b, : views.lengths[m][b]].mean(0) for b in range(x.shape[0])])
        expected.append(torch.nn.functional.cosine_similarity(pooled[:, None], pooled[None, :], dim=-1))
    sim = similarity_matrix(views)
    assert sim.dtype == torch.float32 and not sim.requires_grad
    assert torch.allclose(sim, torch.stack(expected).mean(0), atol=1e-6)


def test_padding_does_not_change_similarity() -> None:
    views, _ = latents()
    junk = {m: torch.where(views.mask(m)[..., None], x, torch.full_like(x, 1e4)) if x.dim() == 3 else x for m, x in views.features.items()}
    assert torch.allclose(similarity_matrix(views), similarity_matrix(Multimodal(junk, views.lengths)), atol=1e-6)
    assert not torch.allclose(similarity_matrix(views), similarity_matrix(Multimodal(junk)), atol=1e-3)


# ---- SIG -----------------------------------------------------------------------------------------


def test_modality_ratios_by_hand() -> None:
    intensity = {"text": torch.tensor([0.0, 1.0, -2.0]), "audio": torch.tensor([2.0, 0.0, 1.0])}
    pairs = torch.tensor([[0, 1], [2, 1], [1, 0]])
    lam0 = torch.tensor([0.2, 0.5, 0.8])
    ratios = modality_ratios(intensity, pairs, lam0)
    assert torch.allclose(ratios["text"], torch.tensor([0.1, (0.5 + 2 / 3) / 2, 0.9]), atol=1e-6)
    assert torch.allclose(ratios["audio"], torch.tensor([0.6, 0.75, 0.4]), atol=1e-6)
    assert torch.allclose(label_ratio(ratios), (ratios["text"] + ratios["audio"]) / 2)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31))
def test_modality_ratios_lie_in_unit_interval(batch: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    intensity = {m: torch.empty(batch).uniform_(-3, 3, generator=gen) for m in DIMS}
    pairs = random_pairs(batch, 10, np.random.default_rng(seed))
    lam0 = torch.rand(10, generator=gen)
    for ratio in modality_ratios(intensity, pairs, lam0).values():
        assert bool(((ratio >= 0) & (ratio <= 1)).all())


def test_msmix_ratios_differ_per_modality_and_stay_in_unit_interval() -> None:
    views, label = latents(batch=8)
    mix = msmix()(views, label, np.random.default_rng(0))
    ratios = [mix.stats[f"lam_{m}"] for m in DIMS]
    assert all(bool(((r >= 0) & (r <= 1)).all()) for r in ratios)
    assert not torch.allclose(ratios[0], ratios[1]) and not torch.allclose(ratios[1], ratios[2])
    assert torch.allclose(mix.lam, sum(ratios) / 3)


def test_without_sig_every_ratio_is_lambda0() -> None:
    views, label = latents(batch=8)
    mix = msmix(sig=False)(views, label, np.random.default_rng(0))
    assert all(torch.equal(mix.stats[f"lam_{m}"], mix.stats["lam0"]) for m in DIMS)
    assert torch.equal(mix.lam, mix.stats["lam0"])
    assert mix.loss.item() > 0  # the predictors are still trained by SAL


def test_intensity_predictor_shape_bound_and_width_padding() -> None:
    for dim, tokens in [(5, 1), (12, 1), (12, 3), (2048, 2)]:
        predictor = IntensityPredictor(dim, heads=4, tokens=tokens)
        out = predictor(torch.randn(3, dim) * 50)
        assert out.shape == (3,) and out.dtype == torch.float32 and bool((out.abs() <= 3).all())
        assert predictor.padded_width % (4 * tokens) == 0
    assert isinstance(IntensityPredictor(2048).project, torch.nn.Linear)
    assert isinstance(IntensityPredictor(2000).project, torch.nn.Identity)


@pytest.mark.parametrize("tokens", [1, 2])
def test_intensity_attention_stays_within_a_sample_and_ignores_padding(tokens: int) -> None:
    torch.manual_seed(0)
    predictor = IntensityPredictor(7, tokens=tokens)
    x = torch.randn(4, 5, 7)
    lengths = torch.tensor([5, 2, 3, 0])
    base = predictor(x, lengths)
    other = x.clone()
    other[1] = torch.randn(5, 7)  # another sample changes
    other[2, 3:] = 1e4  # padding changes
    other[3, 1:] = float("nan")  # an empty sample is read as its first step
    changed = predictor(other, lengths)
    assert torch.allclose(changed[[0, 2, 3]], base[[0, 2, 3]], atol=1e-5)
    assert not torch.allclose(changed[1], base[1])


def test_intensity_of_a_padded_sample_is_that_of_its_valid_steps() -> None:
    torch.manual_seed(0)
    predictor = IntensityPredictor(7)
    x = torch.randn(3, 5, 7)
    lengths = torch.tensor([5, 2, 3])
    padded = predictor(x, lengths)
    alone = torch.stack([predictor(x[b : b + 1, :n]) for b, n in enumerate(lengths.tolist())]).reshape(-1)
    assert torch.allclose(padded, alone, atol=1e-5)


# ---- SAL -----------------------------------------------------------------------------------------


def test_sal_hand_computed_three_samples() -> None:
    label = torch.tensor([0.0, 3.0, -3.0])
    e = math.e
    q = [1 / (1 + 2 * e), e / (1 + 2 * e), e / (1 + 2 * e)]
    kl = sum(qi * math.log(qi / (1 / 3)) for qi in q)  # p uniform: every intensity is 0
    intensity = {"text": torch.zeros(3), "audio": label.clone()}  # audio matches the labels: KL 0
    loss = sentiment_alignment_loss(intensity, label, label_range=3.0, scale=1000.0)
    assert loss.item() == pytest.approx(1000.0 * kl / 3, rel=1e-4)


def test_sal_is_zero_when_distributions_match_and_positive_otherwise() -> None:
    label = torch.tensor([-1.0, 0.2, 0.7, 0.9])
    matching = {m: label * 3 for m in DIMS}  # |I| / 3 == |y| / 1 on CH-SIMS's scale
    assert sentiment_alignment_loss(matching, label, label_range=1.0).item() == pytest.approx(0.0, abs=1e-4)
    off = {m: torch.tensor([0.1, -2.0, 0.0, 1.0]) for m in DIMS}
    assert sentiment_alignment_loss(off, label, label_range=1.0).item() > 0.1


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**31))
def test_sal_is_never_negative(batch: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    intensity = {m: torch.empty(batch).uniform_(-3, 3, generator=gen) for m in DIMS}
    label = torch.empty(batch).uniform_(-3, 3, generator=gen)
    assert sentiment_alignment_loss(intensity, label, label_range=3.0).item() >= -1e-4


# ---- MS-Mix end to end ---------------------------------------------------------------------------


def head(views: Multimodal) -> torch.Tensor:
    """Some prediction of (mixed) latents: a fixed linear read-out of every modality's pooled features."""
    total = 0
    for m, x in views.features.items():
        pooled = x if x.dim() == 2 else masked_mean(x, views.mask(m))
        total = total + pooled.sum(-1) * (0.1 + len(m) / 10)
    return total[:, None]


@pytest.mark.parametrize("overrides", [{}, {"sal": False}, {"sig": False}])
def test_gradient_reaches_every_intensity_predictor_parameter(overrides: dict) -> None:
    dims = {"text": 2048, "audio": 5, "vision": 7}
    mixer = build_mixer(MixConfig(**overrides), dims, label_range=3.0)
    gen = torch.Generator().manual_seed(1)
    views = Multimodal(
        {m: torch.randn(6, 4, d, generator=gen, requires_grad=True) for m, d in dims.items()},
        {m: torch.tensor([4, 2, 3, 4, 1, 2]) for m in dims},
    )
    label = torch.linspace(-3, 3, 6)
    mix = mixer(views, label, np.random.default_rng(0))
    (mix_loss(head(mix.views), mix) + mix.loss).backward()
    for name, param in mixer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(x.grad is not None for x in views.features.values())  # the backbone is trained too


def test_gradient_reaches_predictors_of_vector_latents_with_split_tokens() -> None:
    views, label = latents()
    mixer = msmix(sig_tokens=3)
    mix = mixer(views, label, np.random.default_rng(0))
    (mix_loss(head(mix.views), mix) + mix.loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.predictors["text"].parameters())


def test_msmix_mixes_every_modality_with_its_own_ratio() -> None:
    views, label = latents(batch=7)
    mix = msmix(num_mix=5)(views, label, np.random.default_rng(3))
    i, j = mix.stats["pairs"][:, 0], mix.stats["pairs"][:, 1]
    assert mix.stats["pairs"].shape == (5, 2)
    for m, x in views.features.items():
        lam = mix.stats[f"lam_{m}"].reshape(-1, *([1] * (x.dim() - 1)))
        clean = x if x.dim() == 2 else x * views.mask(m)[..., None]
        assert torch.allclose(mix.views[m], lam * clean[i] + (1 - lam) * clean[j], atol=1e-6)
    for m, n in views.lengths.items():
        assert torch.equal(mix.views.lengths[m], torch.maximum(n[i], n[j]))
    assert torch.equal(mix.y_a, label[i]) and torch.equal(mix.y_b, label[j])


def test_msmix_without_sass_or_sal() -> None:
    views, label = latents(batch=5)
    mix = msmix(sass=False, sal=False, sig=False)(views, label, np.random.default_rng(0))
    assert mix.loss == 0.0 and not any(k.startswith("intensity") for k in mix.stats)
    assert bool((mix.stats["pairs"][:, 0] != mix.stats["pairs"][:, 1]).all())


def test_same_seed_same_mix_and_different_seed_different_mix() -> None:
    views, label = latents(batch=8)
    mixer = msmix()
    first, again, other = (mixer(views, label, np.random.default_rng(s)) for s in (11, 11, 12))
    assert torch.equal(first.stats["pairs"], again.stats["pairs"]) and torch.equal(first.lam, again.lam)
    assert all(torch.equal(first.views[m], again.views[m]) for m in DIMS)
    assert torch.equal(first.loss, again.loss)
    assert not (torch.equal(first.stats["pairs"], other.stats["pairs"]) and torch.equal(first.lam, other.lam))


def test_nan_padding_does_not_leak_into_the_mix() -> None:
    views, label = latents(batch=6)
    poisoned = {
        m: x.detach() if x.dim() == 2 else torch.where(views.mask(m)[..., None], x.detach(), float("nan"))
        for m, x in views.features.items()
    }
    mix = msmix()(Multimodal(poisoned, views.lengths), label, np.random.default_rng(0))
    assert all(bool(torch.isfinite(x).all()) for x in mix.views.features.values())
    assert bool(torch.isfinite(mix.loss)) and bool(torch.isfinite(mix.lam).all())


def test_autocast_bf16_latents() -> None:
    views, label = latents(batch=6)
    half = views.map(lambda m, x: x.detach().to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mix = msmix()(half, label, np.random.default_rng(0))
        assert similarity_matrix(half).dtype == torch.float32
    assert all(mix.views[m].dtype == torch.bfloat16 for m in DIMS)
    assert mix.lam.dtype == torch.float32 and mix.loss.dtype == torch.float32 and bool(torch.isfinite(mix.loss))


@pytest.mark.parametrize("device", DEVICES)
def test_mixers_keep_the_input_device(device: str) -> None:
    views, label = latents(device=device)
    for name in ("msmix", "mixup", "manifold"):
        mixer = build_mixer(MixConfig(name=name), DIMS, 3.0).to(device)
        mix = mixer(views, label, np.random.default_rng(0))
        assert {x.device.type for x in mix.views.features.values()} == {device}
        assert mix.lam.device.type == device and mix.stats["pairs"].device.type == device


# ---- Baselines, registry, purity -----------------------------------------------------------------


@pytest.mark.parametrize("kind", [Mixup, ManifoldMixup])
def test_mixup_mixes_a_permutation_with_one_ratio(kind: type) -> None:
    views, label = latents(batch=7)
    mix = kind(MixConfig(name="mixup"), DIMS, 3.0)(views, label, np.random.default_rng(0))
    pairs, lam = mix.stats["pairs"], mix.lam
    assert torch.equal(pairs[:, 0], torch.arange(7)) and sorted(pairs[:, 1].tolist()) == list(range(7))
    assert bool(((lam >= 0) & (lam <= 1)).all())
    for m, x in views.features.items():
        shaped = lam.reshape(-1, *([1] * (x.dim() - 1)))
        clean = x if x.dim() == 2 else x * views.mask(m)[..., None]
        assert torch.allclose(mix.views[m], shaped * clean + (1 - shaped) * clean[pairs[:, 1]], atol=1e-6)
    assert torch.equal(mix.y_a, label) and torch.equal(mix.y_b, label[pairs[:, 1]])


def test_registry_and_mixing_points() -> None:
    assert {"none", "msmix", "mixup", "manifold"} <= set(MIXERS.names())
    assert MIXERS.get("mixup").point == "input"
    assert MIXERS.get("manifold").point == "latent" and MIXERS.get("msmix").point == "latent"


@pytest.mark.parametrize("name", ["none", "msmix", "mixup", "manifold"])
def test_batch_of_one_mixes_nothing(name: str) -> None:
    views, label = latents(batch=1)
    assert build_mixer(MixConfig(name=name), DIMS, 3.0)(views, label, np.random.default_rng(0)) is None


@pytest.mark.parametrize("name", ["msmix", "mixup", "manifold"])
def test_inputs_are_not_modified_in_place(name: str) -> None:
    views, label = latents(batch=6)
    tensors = [*views.features.values(), *views.lengths.values(), label]
    before = [(t.clone(), t._version) for t in tensors]
    mix = build_mixer(MixConfig(name=name), DIMS, 3.0)(views, label, np.random.default_rng(0))
    (mix_loss(head(mix.views), mix) + mix.loss).backward()
    for t, (copy, version) in zip(tensors, before):
        assert torch.equal(t, copy) and t._version == version


def test_mix_loss_by_hand() -> None:
    views, label = latents(batch=3)
    mix = build_mixer(MixConfig(name="manifold"), DIMS, 3.0)(views, label, np.random.default_rng(0))
    prediction = torch.tensor([[0.5], [-1.0], [2.0]])
    expected = sum(
        mix.lam[k] * (prediction[k, 0] - mix.y_a[k]) ** 2 + (1 - mix.lam[k]) * (prediction[k, 0] - mix.y_b[k]) ** 2 for k in range(3)
    ) / 3
    assert torch.allclose(mix_loss(prediction, mix), expected)
