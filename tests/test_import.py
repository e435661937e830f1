"""Researchers' own features: MMSA-layout pickles of any width and length, and their own `.csd` files, imported
as named datasets that `train`, `--dry-run` and recipe resolution find by name."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from formats import frames, intervals, mmsa_split, write_csd, write_pickle
from msmix_cli.cli import app
from msmix_cli.data.mmsdk import standard_folds
from msmix_cli.data.specs import DATASETS
from msmix_cli.recipes import resolve_recipe

runner = CliRunner()
SIZES = {"train": 16, "valid": 6, "test": 6}
ODD_DIMS = {"text": 300, "audio": 1, "vision": 7}
# Tiny networks: the point is that every backbone builds and trains on these shapes, not how well
TINY = {
    "tfn": ["model.hidden_dims=[4,2,3]", "model.text_out=4", "model.post_fusion_dim=4"],
    "lmf": ["model.hidden_dims=[4,2,3]", "model.text_out=4", "model.rank=2"],
    "mult": ["model.d_model=4", "model.heads=2", "model.layers=1", "model.conv_kernels=[1,1,1]"],
    "misa": ["model.hidden=8", "model.fusion_ffn=16"],
    "almt": ["model.tokens=2", "model.dim=8", "model.heads=2", "model.dim_head=4", "model.mlp_dim=8",
             "model.hyper_depth=2", "model.hyper_heads=2", "model.hyper_dim_head=4", "model.fusion_depth=1"],
    "glomo": ["model.width=8", "model.heads=2", "model.layers=1"],
}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def own_pickle(path: Path, seq_lens: dict[str, int], dims: dict[str, int] = ODD_DIMS, *, aligned: bool = True,
               label_range: float = 3.0, prefix: str = "", **split_options) -> Path:
    content = {split: mmsa_split(n, seq_lens, dims, aligned=aligned, seed=i, prefix=f"{prefix}{split}",
                                 label_range=label_range, **split_options)
               for i, (split, n) in enumerate(SIZES.items())}
    return write_pickle(path, content)


def import_pickle(root: Path, path: Path, name: str = "mine", *extra: object):
    return invoke("preprocess", "--from", path, "--name", name, "--data-root", root, *extra)


def cache_of(root: Path, name: str, setting: str) -> h5py.File:
    return h5py.File(root / "cache" / f"{name}-{setting}.h5", "r")


def train_one_epoch(root: Path, name: str, backbone: str, *sets: str, out: Path):
    settings = [a for s in (*TINY[backbone], *sets, "train.batch_size=8", "train.threads=1") for a in ("--set", s)]
    return invoke("train", "--dataset", name, "--backbone", backbone, "--max-epochs", 1, "--data-root", root,
                  "--out", out, "--format", "json", *settings)


def test_an_odd_pickle_becomes_a_dataset_with_the_files_widths_and_lengths(tmp_path: Path) -> None:
    result = import_pickle(tmp_path, own_pickle(tmp_path / "feats.pkl", {"text": 1, "audio": 1, "vision": 1}))
    assert result.exit_code == 0, result.output
    with cache_of(tmp_path, "mine", "aligned") as cache:
        shapes = {m: cache["train"][m].shape[1:] for m in ODD_DIMS}
        assert shapes == {"text": (1, 300), "audio": (1, 1), "vision": (1, 7)}
        assert cache.attrs["like"] == "mosi" and cache["valid"]["id"].shape == (6,)
    spec = DATASETS.get("mine", tmp_path)
    assert (spec.dims, spec.seq_lens, spec.label_range, spec.metric_set) == (
        ODD_DIMS, {"aligned": {"text": 1, "audio": 1, "vision": 1}}, 3.0, "mosi")
    assert "trains with mosi's recipes" in result.stderr


@pytest.mark.parametrize("length", [1, 3])
@pytest.mark.parametrize("backbone", sorted(TINY))
def test_every_backbone_trains_one_epoch_on_odd_widths_and_lengths(tmp_path: Path, backbone: str, length: int) -> None:
    seq_lens = {"text": length, "audio": length, "vision": length}
    assert import_pickle(tmp_path, own_pickle(tmp_path / "feats.pkl", seq_lens)).exit_code == 0
    result = train_one_epoch(tmp_path, "mine", backbone, out=tmp_path / "runs")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert "Non0_acc_2" in metrics and np.isfinite(metrics["MAE"])


def test_mult_says_in_one_line_that_its_convolutions_need_longer_sequences(tmp_path: Path) -> None:
    """The MOSI recipe's kernels are 5 wide; on 3 steps MulT cannot run and says how to shorten them."""
    assert import_pickle(tmp_path, own_pickle(tmp_path / "f.pkl", {"text": 3, "audio": 3, "vision": 3})).exit_code == 0
    for command in (["train", "--max-epochs", 1, "--out", tmp_path / "runs"], ["train", "--dry-run"]):
        result = invoke(*command, "--dataset", "mine", "--backbone", "mult", "--data-root", tmp_path)
        line = one_line_error(result)
        assert "kernels 5, 5, 5" in line and "text 3, audio 3, vision 3" in line and "model.conv_kernels" in line


def test_an_unaligned_pickle_keeps_its_lengths_and_trains(tmp_path: Path) -> None:
    path = own_pickle(tmp_path / "f.pkl", {"text": 3, "audio": 1, "vision": 3}, aligned=False)
    result = import_pickle(tmp_path, path)
    assert result.exit_code == 0, result.output
    content = np.load(path, allow_pickle=True)
    with cache_of(tmp_path, "mine", "unaligned") as cache:
        assert cache["test"]["vision"].shape == (6, 3, 7)
        np.testing.assert_array_equal(cache["test"]["vision_lengths"][()], content["test"]["vision_lengths"])
    assert train_one_epoch(tmp_path, "mine", "tfn", out=tmp_path / "runs").exit_code == 0
    [run] = (tmp_path / "runs").iterdir()
    result = invoke("evaluate", run, "--data-root", tmp_path, "--format", "json")
    assert result.exit_code == 0 and "Non0_acc_2" in json.loads(result.stdout)["metrics"], result.output


def test_a_split_whose_widths_differ_from_the_training_split_is_refused(tmp_path: Path) -> None:
    path = own_pickle(tmp_path / "f.pkl", {"text": 1, "audio": 1, "vision": 1})
    content = np.load(path, allow_pickle=True)
    content["valid"]["vision"] = np.zeros((6, 1, 8))
    write_pickle(path, content)
    line = one_line_error(import_pickle(tmp_path, path))
    assert "valid/vision" in line and "(6, 1, 8)" in line and "(6, 1, 7)" in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_aligned_features_must_share_one_length(tmp_path: Path) -> None:
    path = own_pickle(tmp_path / "f.pkl", {"text": 3, "audio": 1, "vision": 3}, aligned=False)
    line = one_line_error(import_pickle(tmp_path, path, "mine", "--setting", "aligned"))
    assert "share one padded length" in line and "audio 1" in line


@pytest.mark.parametrize("largest, given, bound, like", [(1.0, None, 1.0, "sims"), (2.5, None, 3.0, "mosi"),
                                                         (4.0, "5", 5.0, "mosi")])
def test_the_label_range_comes_from_the_data_or_the_option(tmp_path: Path, largest, given, bound, like) -> None:
    path = own_pickle(tmp_path / "f.pkl", {"text": 1, "audio": 1, "vision": 1}, label_range=largest)
    result = import_pickle(tmp_path, path, "mine", *(["--label-range", given] if given else []))
    assert result.exit_code == 0, result.output
    spec = DATASETS.get("mine", tmp_path)
    assert (spec.label_range, spec.like) == (bound, like)
    assert spec.metric_set == DATASETS.get(like).metric_set


def test_labels_beyond_mosis_range_need_the_option(tmp_path: Path) -> None:
    path = own_pickle(tmp_path / "f.pkl", {"text": 1, "audio": 1, "vision": 1}, label_range=4.0)
    assert "--label-range" in one_line_error(import_pickle(tmp_path, path))
    line = one_line_error(import_pickle(tmp_path, path, "mine", "--label-range", "5", "--like", "sims"))
    assert "--like sims" in line
    assert "positive number" in one_line_error(import_pickle(tmp_path, path, "mine", "--label-range", "0"))


def test_bert_ids_are_kept_and_an_all_zero_text_bert_is_left_out(tmp_path: Path) -> None:
    path = own_pickle(tmp_path / "f.pkl", {"text": 3, "audio": 3, "vision": 3})
    assert import_pickle(tmp_path, path, "withids").exit_code == 0
    with cache_of(tmp_path, "withids", "aligned") as cache:
        assert cache["train"]["text_ids"].shape == (16, 3, 3)
    content = np.load(path, allow_pickle=True)
    for split in content.values():
        split["text_bert"][:] = 0  # as in released files that carry text features only
    write_pickle(path, content)
    result = import_pickle(tmp_path, path, "noids")
    assert result.exit_code == 0 and "text_bert holds no token ids" in result.stderr
    with cache_of(tmp_path, "noids", "aligned") as cache:
        assert "text_ids" not in cache["train"]
        assert cache["train"]["text_lengths"][()].max() == 3  # from the features, not from an all-zero mask


def test_a_modality_from_another_pickle_is_matched_by_id(tmp_path: Path) -> None:
    main = own_pickle(tmp_path / "main.pkl", {"text": 3, "audio": 3, "vision": 2}, aligned=False)
    other = own_pickle(tmp_path / "audio.pkl", {"text": 3, "audio": 5, "vision": 2},
                       {"text": 2, "audio": 4, "vision": 2}, aligned=False)
    replacement = np.load(other, allow_pickle=True)
    for split in replacement.values():  # the same ids, in the opposite order
        for key, value in list(split.items()):
            split[key] = value[::-1]
    write_pickle(other, replacement)
    result = import_pickle(tmp_path, main, "mine", "--audio", other)
    assert result.exit_code == 0, result.output
    assert "audio taken from audio.pkl" in result.stderr
    content = np.load(main, allow_pickle=True)
    with cache_of(tmp_path, "mine", "unaligned") as cache:
        expected = np.nan_to_num(replacement["test"]["audio"][::-1], neginf=0.0).astype(np.float32)
        np.testing.assert_array_equal(cache["test"]["audio"][()], expected)
        np.testing.assert_array_equal(cache["test"]["audio_lengths"][()], replacement["test"]["audio_lengths"][::-1])
        np.testing.assert_array_equal(cache["test"]["vision"][()], content["test"]["vision"].astype(np.float32))


def test_a_replacement_with_other_ids_is_refused(tmp_path: Path) -> None:
    main = own_pickle(tmp_path / "main.pkl", {"text": 1, "audio": 1, "vision": 1})
    other = own_pickle(tmp_path / "vision.pkl", {"text": 1, "audio": 1, "vision": 1}, prefix="other")
    line = one_line_error(import_pickle(tmp_path, main, "mine", "--vision", other))
    assert "vision.pkl" in line and "same samples" in line


def test_recipes_and_dry_run_come_from_the_like_dataset(tmp_path: Path) -> None:
    assert import_pickle(tmp_path, own_pickle(tmp_path / "m.pkl", {"text": 2, "audio": 2, "vision": 2})).exit_code == 0
    path = own_pickle(tmp_path / "s.pkl", {"text": 2, "audio": 4, "vision": 3}, aligned=False, label_range=1.0)
    assert import_pickle(tmp_path, path, "simslike").exit_code == 0
    DATASETS.use_data_root(tmp_path)
    try:
        mosi_like = resolve_recipe(None, dataset="mine", backbone="tfn")
        sims_like = resolve_recipe(None, dataset="simslike", backbone="lmf")
    finally:
        DATASETS.data_root = None
    assert (mosi_like.data.dataset, mosi_like.data.setting, mosi_like.train.lr) == ("mine", None, 1e-3)
    assert mosi_like.backbone_config().text_out == 32  # MOSI's TFN
    assert (sims_like.data.dataset, sims_like.train.lr, sims_like.backbone_config().rank) == ("simslike", 2e-3, 4)
    result = invoke("train", "--dataset", "simslike", "--backbone", "almt", "--dry-run", "--data-root", tmp_path)
    assert result.exit_code == 0 and "almt on simslike" in result.stdout, result.output


@pytest.mark.parametrize("name, fragment", [("mosi", "published dataset"), ("../up", "--name must be"),
                                            (".hidden", "--name must be"), ("a" * 65, "--name must be")])
def test_names_that_clash_or_are_not_plain_file_names_are_refused(tmp_path: Path, name: str, fragment: str) -> None:
    path = own_pickle(tmp_path / "f.pkl", {"text": 1, "audio": 1, "vision": 1})
    assert fragment in one_line_error(import_pickle(tmp_path, path, name))


def test_the_two_settings_of_one_name_must_describe_the_same_features(tmp_path: Path) -> None:
    assert import_pickle(tmp_path, own_pickle(tmp_path / "a.pkl", {"text": 2, "audio": 2, "vision": 2})).exit_code == 0
    other = own_pickle(tmp_path / "u.pkl", {"text": 2, "audio": 3, "vision": 2}, {"text": 300, "audio": 2, "vision": 7},
                       aligned=False)
    line = one_line_error(import_pickle(tmp_path, other))
    assert "already has an aligned cache" in line
    assert not (tmp_path / "cache" / "mine-unaligned.h5").exists()


def test_an_unknown_dataset_says_how_to_import_one(tmp_path: Path) -> None:
    line = one_line_error(invoke("train", "--dataset", "notyet", "--data-root", tmp_path, "--dry-run"))
    assert "unknown dataset 'notyet'" in line and "--from FILE.pkl --name notyet" in line


@pytest.mark.parametrize("args, fragment", [
    (["--from", "x.pkl"], "--name"),
    (["--from", "x.pkl", "--csd", ".", "--name", "n"], "not both"),
    (["--dataset", "mosi", "--from", "x.pkl", "--name", "n"], "own --name"),
    (["--dataset", "mosi", "--audio", "a.pkl"], "--audio does not apply"),
    (["--dataset", "mosi", "--name", "n"], "--name does not apply"),
    (["--csd", ".", "--name", "n", "--text", "t.pkl"], "--text does not apply"),
    (["--from", "x.pkl", "--name", "n", "--features", "audio=a.csd"], "--features does not apply"),
    (["--from", "x.pkl", "--name", "n", "--tolerance", "1e-5"], "--tolerance does not apply"),
    (["--dataset", "mosi", "--tolerance", "1e-5"], "--source mmsdk"),
    (["--csd", ".", "--name", "n", "--features", "audio"], "ROLE=FILE"),
])
def test_options_of_one_route_only_are_refused_elsewhere(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert fragment in one_line_error(invoke("preprocess", *args, "--data-root", tmp_path))


# --------------------------------------------------------------------------------------------- .csd files

FOLDS = standard_folds("mosi")
VIDEOS = {split: FOLDS[split][:2] for split in ("train", "valid", "test")}


def own_csds(folder: Path) -> Path:
    """MOSI's word vectors, COVAREP and labels under their published names, and the user's own 9-d vision
    features (30 Hz) under a name of their own. Two videos per fold, two segments of two words each."""
    rng = np.random.default_rng(0)
    videos = [v for split in VIDEOS.values() for v in split]
    files = {
        "CMU_MOSI_TimestampedWordVectors.csd": {v: (rng.normal(size=(4, 300)).astype(np.float32), frames(4, 1.0))
                                                for v in videos},
        "CMU_MOSI_COVAREP.csd": {v: (rng.normal(size=(400, 74)).astype(np.float32), frames(400, 100.0)) for v in videos},
        "my_openface.csd": {v: (rng.normal(size=(120, 9)).astype(np.float32), frames(120, 30.0)) for v in videos},
        "CMU_MOSI_Opinion_Labels.csd": {v: (rng.uniform(-3, 3, size=(2, 1)).astype(np.float32),
                                            intervals((0, 2), (2, 4))) for v in videos},
    }
    for name, content in files.items():
        write_csd(folder / name, name.removesuffix(".csd"), content)
    return folder


def test_csd_files_of_ones_own_become_a_dataset(tmp_path: Path) -> None:
    folder = own_csds(tmp_path / "csd")
    result = invoke("preprocess", "--csd", folder, "--name", "openface", "--features", "vision=my_openface.csd",
                    "--data-root", tmp_path)
    assert result.exit_code == 0, result.output
    with cache_of(tmp_path, "openface", "aligned") as cache:
        assert cache["train"]["vision"].shape == (4, 50, 9)  # the user's file: every column
        assert cache["train"]["audio"].shape == (4, 50, 5)  # MOSI's COVAREP: the 5 columns the field uses
        assert list(cache["valid"]["id"].asstr()[()]) == [f"{v}[{i}]" for v in VIDEOS["valid"] for i in (0, 1)]
        assert json.loads(cache.attrs["provenance"])["overlap_tolerance"] == 1e-3
    assert train_one_epoch(tmp_path, "openface", "lmf", out=tmp_path / "runs").exit_code == 0


def test_a_missing_csd_names_the_file_and_the_option(tmp_path: Path) -> None:
    folder = own_csds(tmp_path / "csd")
    line = one_line_error(invoke("preprocess", "--csd", folder, "--name", "x", "--data-root", tmp_path))
    assert "CMU_MOSI_Visual_Facet_41.csd" in line and "--features vision=FILE" in line
    line = one_line_error(invoke("preprocess", "--csd", folder, "--name", "x", "--features", "face=my_openface.csd",
                                 "--data-root", tmp_path))
    assert "unknown role 'face'" in line and "text, audio, vision, labels" in line


def test_other_features_under_a_published_name_point_to_the_import(tmp_path: Path) -> None:
    """What a new user hit first (issue 13): real MOSI features of other widths, offered as MOSI's files."""
    path = own_pickle(tmp_path / "real_mosi.pkl", {"text": 1, "audio": 1, "vision": 1})
    line = one_line_error(invoke("download", "--dataset", "mosi", "--source", "mmsa", "--from", path,
                                 "--data-root", tmp_path))
    assert "msmix preprocess --from FILE --name NAME" in line
    write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", np.load(path, allow_pickle=True))
    line = one_line_error(invoke("preprocess", "--dataset", "mosi", "--data-root", tmp_path))
    assert "expected (16, 50, 768)" in line and "msmix preprocess --from FILE.pkl --name NAME" in line
