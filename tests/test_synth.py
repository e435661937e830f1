"""The synthetic benchmark: reproducible, MOSI-shaped, and carrying a signal that needs more than one modality."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from msmix_cli.data import synth
from msmix_cli.data.synth import generate_synth, split_sizes
from msmix_cli.errors import BadInput
from msmix_cli.types import MODALITIES

SMALL = {"text": 16, "audio": 4, "vision": 6}


@pytest.fixture(scope="module")
def sample() -> dict:
    return generate_synth(samples=900, seed=3, dims=SMALL, seq_len=20)


def pooled(split, modality: str) -> np.ndarray:
    return split.features[modality].sum(axis=1) / np.maximum(split.lengths[modality], 1)[:, None]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (generate_synth(samples=40, seed=seed, dims=SMALL, seq_len=8) for seed in (5, 5, 6))
    for name in a:
        assert a[name].ids == b[name].ids
        np.testing.assert_array_equal(a[name].label, b[name].label)
        for m in MODALITIES:
            np.testing.assert_array_equal(a[name].features[m], b[name].features[m])
    assert not np.array_equal(a["train"].features["text"], c["train"].features["text"])


def test_default_split_sizes_are_mosi_s():
    assert split_sizes(2199) == {"train": 1284, "valid": 229, "test": 686}


@pytest.mark.parametrize("total", [12, 13, 30, 100, 1001])
def test_small_totals_keep_the_proportions_and_four_per_split(total):
    sizes = split_sizes(total)
    assert sum(sizes.values()) == total and min(sizes.values()) >= 4
    assert sizes["train"] >= sizes["test"] >= sizes["valid"]


def test_too_few_samples_and_bad_widths_are_bad_input():
    with pytest.raises(BadInput, match="at least 12"):
        generate_synth(samples=11)
    with pytest.raises(BadInput, match="at least 2"):
        generate_synth(samples=12, dims={"vision": 1})
    with pytest.raises(BadInput, match="no modality"):
        generate_synth(samples=12, dims={"depth": 3})


def test_default_shapes_are_mosi_s():
    splits = generate_synth(samples=12)
    shapes = {m: splits["train"].features[m].shape[1:] for m in MODALITIES}
    assert shapes == {"text": (50, 768), "audio": (50, 5), "vision": (50, 20)}


def test_arrays_are_float32_aligned_and_zero_padded(sample):
    for split in sample.values():
        lengths = split.lengths["text"]
        assert lengths.min() >= 1 and lengths.max() <= 20 and len(np.unique(lengths)) > 5
        for m in MODALITIES:
            x = split.features[m]
            assert x.dtype == np.float32 and np.isfinite(x).all()
            np.testing.assert_array_equal(split.lengths[m], lengths)  # aligned: one length per sample
            padding = np.arange(x.shape[1])[None, :] >= lengths[:, None]
            assert not x[padding].any() and x[~padding].std() > 0.5


def test_labels_look_like_mosi_s(sample):
    labels = np.concatenate([s.label for s in sample.values()])
    assert np.abs(labels).max() <= 3.0
    np.testing.assert_allclose(labels * 3, np.round(labels * 3), atol=1e-5)  # the 1/3 grid
    assert 0.02 <= (labels == 0).mean() <= 0.07
    assert 0.4 <= (labels < 0).mean() <= 0.65 and 0.3 <= (labels > 0).mean() <= 0.6
    assert 0.5 <= ((np.abs(labels) >= 0.3) & (np.abs(labels) <= 2)).mean()


def ridge_mae(sample, modalities) -> float:
    features = {name: np.concatenate([pooled(split, m) for m in modalities], axis=1) for name, split in sample.items()}
    model = Ridge(alpha=10.0).fit(features["train"], sample["train"].label)
    return float(np.abs(model.predict(features["test"]) - sample["test"].label).mean())


def test_every_modality_helps_and_all_three_beat_each(sample):
    trivial = float(np.abs(sample["test"].label - sample["train"].label.mean()).mean())
    single = {m: ridge_mae(sample, [m]) for m in MODALITIES}
    together = ridge_mae(sample, list(MODALITIES))
    assert all(mae < trivial for mae in single.values()), (trivial, single)
    assert together < min(single.values()) and together < 0.8 * trivial, (together, single)


def test_sarcasm_flips_the_text_and_lights_the_vision_cue():
    """The interaction no single modality (or sum of them) captures: text polarity × the cue in vision."""
    seed, total = 2, 600
    splits = generate_synth(samples=total, seed=seed, dims=SMALL, seq_len=20)
    world_stream, sample_stream = np.random.default_rng(seed).spawn(5)[:2]  # the generator's own streams
    world = synth._make_world(world_stream, {**synth.SPEC.dims, **SMALL})
    sarcastic = synth._draw_samples(sample_stream, total, 20).sarcastic
    text = np.concatenate([pooled(s, "text") for s in splits.values()]) @ world.text_polarity
    cue = np.concatenate([pooled(s, "vision") for s in splits.values()]) @ world.vision_cue
    labels = np.concatenate([s.label for s in splits.values()])
    assert 0.08 <= sarcastic.mean() <= 0.17
    assert np.corrcoef(text[~sarcastic], labels[~sarcastic])[0, 1] > 0.5
    assert np.corrcoef(text[sarcastic], labels[sarcastic])[0, 1] < -0.5
    assert cue[sarcastic].mean() > cue[~sarcastic].mean() + 0.5
