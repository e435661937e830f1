"""MS-Mix's options beyond the authors' behaviour, the presets, and what every run records about its mixing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from msmix_cli.errors import BadInput
from msmix_cli.mixing import MixConfig, build_mixer, mix_loss
from msmix_cli.mixing.base import Mix
from msmix_cli.mixing.presets import AUTHORS, PRESETS, apply_preset
from msmix_cli.mixing.sal import intensity_regression_loss
from msmix_cli.mixing.sass import select_pairs
from msmix_cli.recipes import recipes_dir, resolve_recipe
from msmix_cli.training.diagnostics import EpochLog, intensity_correlations, pearson
from msmix_cli.training.loop import fit
from msmix_cli.training.rundir import RunDir
from msmix_cli.types import Multimodal

DIMS = {"text": 12, "audio": 5, "vision": 7}


def views_and_labels(batch: int = 8, seed: int = 0) -> tuple[Multimodal, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    views = Multimodal({m: torch.randn(batch, d, generator=gen).requires_grad_() for m, d in DIMS.items()})
    return views, torch.empty(batch).uniform_(-3, 3, generator=gen)


def mixer(**overrides: object):
    torch.manual_seed(0)
    return build_mixer(MixConfig(name="msmix", **overrides), DIMS, label_range=3.0)


def latent_grad(loss: torch.Tensor, views: Multimodal) -> float:
    grads = torch.autograd.grad(loss, list(views.features.values()), retain_graph=True, allow_unused=True)
    return sum(0.0 if g is None else float(g.abs().sum()) for g in grads)


# ---- gradient paths ----------------------------------------------------------------------------------


def test_sal_reaches_the_latents_only_when_asked() -> None:
    views, label = views_and_labels()
    mix = mixer(sig=False)(views, label, np.random.default_rng(0))
    assert latent_grad(mix.loss, views) > 0  # the authors: SAL shapes the backbone
    views, label = views_and_labels()
    model = mixer(sig=False, sal_to_encoder=False)
    detached = model(views, label, np.random.default_rng(0))
    assert latent_grad(detached.loss, views) == 0
    grads = torch.autograd.grad(detached.loss, list(model.parameters()), allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)  # the predictors still learn


def test_detached_ratio_stops_the_mixed_loss_training_the_predictors() -> None:
    for detach, expect_gradient in ((False, True), (True, False)):
        views, label = views_and_labels()
        model = mixer(sal=False, detach_ratio=detach)
        mix = model(views, label, np.random.default_rng(0))
        prediction = sum(x.sum(dim=1) for x in mix.views.features.values())
        loss = mix_loss(prediction, mix)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads) is expect_gradient


def test_intensity_regression_is_zero_on_target_and_grows_with_error() -> None:
    label = torch.tensor([-1.5, 0.0, 3.0])
    exact = {"text": label.clone(), "audio": label.clone()}
    assert float(intensity_regression_loss(exact, label, 3.0)) == 0.0
    off = {"text": label + 1.0}
    assert float(intensity_regression_loss(off, label, 3.0)) == pytest.approx(1.0)
    # CH-SIMS labels in [-1, 1] are read on the intensity scale (-3, 3)
    assert float(intensity_regression_loss({"text": torch.tensor([3.0])}, torch.tensor([1.0]), 1.0)) == 0.0


def test_mix_loss_squared_or_absolute() -> None:
    mix = Mix(Multimodal({}), torch.tensor([1.0, -1.0]), torch.tensor([3.0, 1.0]), torch.tensor([0.25, 0.5]))
    prediction = torch.tensor([2.0, 0.0])
    assert float(mix_loss(prediction, mix)) == pytest.approx((0.25 * 1 + 0.75 * 1 + 0.5 * 1 + 0.5 * 1) / 2)
    assert float(mix_loss(prediction + 1.0, mix, "l1")) == pytest.approx((0.25 * 2 + 0.75 * 0 + 0.5 * 2 + 0.5 * 0) / 2)


# ---- SASS that selects -------------------------------------------------------------------------------


def test_absolute_threshold_keeps_only_pairs_above_the_raw_similarity() -> None:
    sim = torch.tensor([[1.0, 0.9, 0.1, 0.2], [0.9, 1.0, 0.3, 0.1], [0.1, 0.3, 1.0, 0.85], [0.2, 0.1, 0.85, 1.0]])
    allowed = {(0, 1), (1, 0), (2, 3), (3, 2)}
    for seed in range(20):
        chosen = select_pairs(sim, 3, 0.8, np.random.default_rng(seed), threshold="absolute")
        assert {tuple(p) for p in chosen.pairs.tolist()} <= allowed and not chosen.fell_back
        assert chosen.candidate_share == pytest.approx(4 / 12)
    relative = select_pairs(sim, 3, 0.8, np.random.default_rng(0))
    assert relative.candidate_share == pytest.approx(4 / 12)  # the same pairs pass 0.8 after min-max here
    everything = select_pairs(sim, 3, 0.05, np.random.default_rng(0), threshold="absolute")
    assert everything.candidate_share == 1.0


def test_few_candidates_fall_back_and_say_so() -> None:
    sim = torch.eye(5) + 0.1
    chosen = select_pairs(sim, 5, 0.5, np.random.default_rng(0), threshold="absolute")
    assert chosen.fell_back and chosen.candidate_share == 0.0 and len(chosen.pairs) == 5


def test_label_bandwidth_prefers_pairs_with_close_labels() -> None:
    sim = torch.ones(10, 10)
    label = torch.tensor([-3.0, -2.5, -2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0])
    spread = {}
    for bandwidth in (None, 0.5):
        gaps = []
        for seed in range(30):
            pairs = select_pairs(sim, 10, 0.4, np.random.default_rng(seed), label, label_bandwidth=bandwidth).pairs
            gaps.append(float((label[pairs[:, 0]] - label[pairs[:, 1]]).abs().mean()))
        spread[bandwidth] = np.mean(gaps)
    assert spread[0.5] < 0.5 * spread[None]


# ---- presets -----------------------------------------------------------------------------------------


def test_authors_preset_is_the_specification_defaults() -> None:
    recipe = resolve_recipe(None, assignments=["mix.preset=authors"])
    assert {k: getattr(recipe.mix, k) for k in AUTHORS} == AUTHORS
    assert AUTHORS["sal_scale"] == 1000.0 and AUTHORS["delta"] == 0.4 and AUTHORS["sal_to_encoder"] is True


def test_keys_given_beside_a_preset_win() -> None:
    for name in PRESETS:
        recipe = resolve_recipe(None, assignments=[f"mix.preset={name}", "mix.delta=0.9", "mix.alpha=0.5"])
        assert (recipe.mix.delta, recipe.mix.alpha, recipe.mix.preset) == (0.9, 0.5, name)


@pytest.mark.parametrize("preset", ["fancy", "[1, 2]"])
def test_unknown_preset_is_bad_input(preset: str) -> None:
    with pytest.raises(BadInput, match="preset"):
        resolve_recipe(None, assignments=[f"mix.preset={preset}"])


def test_a_mix_without_a_preset_gets_msmix_recommended_one() -> None:
    mix = apply_preset({"delta": 0.3})
    assert mix == {**PRESETS["msmix"], "delta": 0.3, "preset": "msmix"}
    shipped = resolve_recipe(recipes_dir() / "synth-tfn.yaml").mix
    assert (shipped.preset, shipped.sal_to_encoder, shipped.detach_ratio, shipped.mix_loss) == ("msmix", False, True, "task")


def test_the_msmix_preset_departs_from_the_authors_only_where_docs_say_why() -> None:
    changed = {k for k in AUTHORS if PRESETS["msmix"][k] != AUTHORS[k]}
    docs = (Path(__file__).parents[1] / "docs" / "msmix.md").read_text()
    assert changed and all(f"`{key}`" in docs for key in changed)


# ---- what a run records --------------------------------------------------------------------------


def test_random_pair_columns_are_exact_batch_expectations() -> None:
    log = EpochLog()
    label = torch.tensor([-1.0, 2.0, 3.0])
    log.add_mix({"pairs": torch.tensor([[1, 2], [2, 1], [0, 1]]), "lam_y": torch.tensor([0.5, 0.5, 0.5])}, label)
    row = log.row()
    assert row["random_same_sign"] == pytest.approx(2 / 6)  # (1,2) and (2,1) of 6 ordered pairs
    assert row["random_abs_dy"] == pytest.approx((3 + 4 + 1) * 2 / 6)
    assert row["pairs_same_sign"] == pytest.approx(2 / 3)
    assert row["pairs_abs_dy"] == pytest.approx((1 + 1 + 3) / 3)
    assert row["lam_y_mean"] == pytest.approx(0.5) and row["lam_y_std"] == pytest.approx(0.0, abs=1e-9)


def test_pearson_is_nan_for_a_constant_side() -> None:
    assert np.isnan(pearson(np.ones(5), np.arange(5.0)))
    assert pearson(np.arange(5.0), 2 * np.arange(5.0)) == pytest.approx(1.0)


def tiny_recipe(mix: str, *sets: str):
    return resolve_recipe(None, dataset="synth", backbone="lmf", overrides={"mix": {"name": mix}, "data": {"samples": 60}},
                          assignments=["train.max_epochs=2", "train.batch_size=16", "model.hidden_dims=[8,4,8]", *sets])


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    runs = {}
    # keep_last: the batches test reads the runs' resume points
    for name, mix, sets in (("none", "none", ("train.keep_last=true",)),
                            ("msmix", "msmix", ("train.log_grad_norms=true", "train.keep_last=true")),
                            ("warm", "msmix", ("mix.warmup_epochs=1",))):
        runs[name] = RunDir.create(root / "runs", name)
        fit(tiny_recipe(mix, *sets), runs[name], data_root=root / "data")
    return runs


def test_history_has_each_loss_term_and_validation_metrics(trained) -> None:
    rows = history(trained["msmix"].path)
    for column in ("train_loss", "train_task", "train_mix", "train_sal", "train_aux", "valid_MAE", "valid_Has0_acc_2",
                   "valid_Non0_F1_score", "valid_Corr", "epoch_time_s"):
        assert column in rows[0], column
    total = sum(float(rows[0][f"train_{t}"]) for t in ("task", "mix", "sal", "aux"))
    assert float(rows[0]["train_loss"]) == pytest.approx(total, rel=1e-5)
    assert "train_mix" not in history(trained["none"].path)[0]


def test_msmix_history_has_mixing_statistics_and_gradient_norms(trained) -> None:
    row = history(trained["msmix"].path)[0]
    for column in ("pairs_same_sign", "random_same_sign", "pairs_abs_dy", "random_abs_dy", "sass_candidates",
                   "sass_fallback", "lam_y_mean", "lam_y_std", "lam_text_mean", "saturated_vision", "corr_I_audio",
                   "valid_corr_I_text", "valid_corr_signed_I_text", "valid_corr_abs_prediction", "grad_task_encoder", "grad_sal_encoder", "grad_mix_predictors", "grad_task_head"):
        assert row[column] != "", column
    assert float(row["grad_task_predictors"]) == 0.0  # the task loss never reaches the mixer
    assert float(row["grad_sal_head"]) == 0.0  # SAL reads the latents, not the head


def test_intensity_correlations_read_magnitude_sign_and_the_models_own_yardstick() -> None:
    label = np.array([-3.0, -1.0, 0.5, 2.0, 3.0])
    signed = {"text": [torch.tensor(label[:2]), torch.tensor(label[2:])]}  # gathered in two batches
    flipped = {"text": [torch.tensor(-label)]}
    exact = intensity_correlations(signed, label, predictions=label * 0.5)
    assert exact["corr_I_text"] == pytest.approx(1.0) and exact["corr_signed_I_text"] == pytest.approx(1.0)
    assert exact["corr_abs_prediction"] == pytest.approx(1.0)
    opposite = intensity_correlations(flipped, label, predictions=np.full(5, 0.1) + np.arange(5) * 0.01)
    assert opposite["corr_I_text"] == pytest.approx(1.0) and opposite["corr_signed_I_text"] == pytest.approx(-1.0)
    assert intensity_correlations({}, label, label) == {}


def test_warmup_epochs_train_clean_then_mix(trained) -> None:
    first, second = history(trained["warm"].path)
    assert first["train_mix"] == "" and float(second["train_mix"]) > 0


def test_every_mixer_of_one_seed_sees_the_same_batches(trained) -> None:
    """Shuffling owns the run's generator: mixing and dropout draw from their own streams."""
    states = [RunDir(trained[name].path).last_file for name in ("none", "msmix")]
    run_rng = [torch.load(path, weights_only=True)["rng"]["run"] for path in states]
    assert run_rng[0] == run_rng[1]


def test_min_epochs_holds_early_stopping_off(tmp_path) -> None:
    recipe = tiny_recipe("none", "train.max_epochs=4", "train.early_stop=1", "train.min_epochs=4", "train.lr=1e-9")
    run = RunDir.create(tmp_path / "runs", "r")
    result = fit(recipe, run, data_root=tmp_path / "data")
    assert result["epochs_run"] == 4
