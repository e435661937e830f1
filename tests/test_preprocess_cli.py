"""`msmix preprocess` through the CLI: caches `train` can open, `--inspect`, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import msmix_cli.cli.data  # noqa: F401  (registers download and preprocess)
from formats import frames, intervals, mmsa_split, write_csd, write_pickle
from msmix_cli.cli.app import app
from msmix_cli.data.cache import open_cache
from msmix_cli.data.mmsdk import standard_folds
from msmix_cli.data.specs import DATASETS

runner = CliRunner()
MOSI = DATASETS.get("mosi")
SIZES = {"train": 6, "valid": 3, "test": 4}


def mosi_pickle(root: Path, setting: str = "aligned") -> Path:
    content = {split: mmsa_split(n, MOSI.seq_lens[setting], MOSI.dims, aligned=setting == "aligned", seed=i,
                                 prefix=split) for i, (split, n) in enumerate(SIZES.items())}
    return write_pickle(root / "raw" / "mosi" / f"{setting}_50.pkl", content)


def mosei_csds(root: Path) -> Path:
    """One video per fold, two segments each, 100 Hz audio and 30 Hz vision; -inf in the audio."""
    folder = root / "raw" / "mosei"
    folds = standard_folds("mosei")
    videos = [folds[split][0] for split in ("train", "valid", "test")]
    rng = np.random.default_rng(0)
    audio = {v: (rng.normal(size=(400, 74)).astype(np.float32), frames(400, 100.0)) for v in videos}
    audio[videos[0]][0][5, 3] = -np.inf
    content = {
        "CMU_MOSEI_TimestampedWordVectors.csd": {v: (rng.normal(size=(8, 300)).astype(np.float32), frames(8, 2.0))
                                                 for v in videos},
        "CMU_MOSEI_COVAREP.csd": audio,
        "CMU_MOSEI_VisualFacet42.csd": {v: (rng.normal(size=(120, 35)).astype(np.float32), frames(120, 30.0))
                                        for v in videos},
        "CMU_MOSEI_Labels.csd": {v: (rng.uniform(-3, 3, size=(2, 7)).astype(np.float32), intervals((0, 2), (2, 4)))
                                 for v in videos},
    }
    for name, data in content.items():
        write_csd(folder / name, name.removesuffix(".csd"), data)
    return folder


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_preprocess_from_mmsa_writes_a_cache_train_can_open(tmp_path: Path) -> None:
    mosi_pickle(tmp_path)
    result = invoke("preprocess", "--dataset", "mosi", "--data-root", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "50, 768" in result.stdout
    cache = open_cache(tmp_path / "cache" / "mosi-aligned.h5")
    assert cache.dataset == "mosi" and cache.setting == "aligned"
    assert cache.shape.dims == MOSI.dims and cache.shape.seq_lens == MOSI.seq_lens["aligned"]
    assert {split: len(cache.split(split)) for split in SIZES} == SIZES
    assert cache.provenance["source"] == "mmsa"


def test_preprocess_from_mmsdk_writes_a_cache_train_can_open(tmp_path: Path) -> None:
    mosei_csds(tmp_path)
    result = invoke("preprocess", "--dataset", "mosei", "--source", "mmsdk", "--data-root", str(tmp_path),
                    "--normalize", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == {"train": 2, "valid": 2, "test": 2}
    assert report["shape"] == {"text": [50, 300], "audio": [50, 74], "vision": [50, 35]}
    assert "1 NaN/inf audio values set to 0" in report["notes"]
    cache = open_cache(Path(report["cache"]))
    assert cache.shape.dims == {"text": 300, "audio": 74, "vision": 35}
    assert cache.provenance["normalize"] is True


def test_inspect_a_pickle_as_json(tmp_path: Path) -> None:
    path = mosi_pickle(tmp_path, "unaligned")
    result = invoke("preprocess", "--inspect", str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    entries = {e["key"]: e for e in report["entries"]}
    assert report["kind"] == "mmsa pickle"
    assert entries["train/audio"]["shape"] == [6, 375, 5] and entries["train/audio"]["inf"] == 1
    assert entries["valid/audio"]["nan"] == 0
    lengths = np.asarray(mmsa_split(6, MOSI.seq_lens["unaligned"], MOSI.dims, aligned=False, seed=0)["audio_lengths"])
    assert entries["train/audio_lengths"]["lengths"] == {"min": lengths.min(), "mean": round(lengths.mean(), 3),
                                                       "max": lengths.max()}
    low, high = entries["test/regression_labels"]["value_range"]
    assert -3 <= low <= high <= 3


def test_inspect_a_csd_and_a_cache_as_tables(tmp_path: Path) -> None:
    folder = mosei_csds(tmp_path)
    result = invoke("preprocess", "--inspect", str(folder / "CMU_MOSEI_COVAREP.csd"))
    assert result.exit_code == 0, result.output
    assert "data/*/features" in result.stdout and "1200×74" in result.stdout
    assert "400/400/400" in result.stdout  # rows per video: min/mean/max

    as_json = json.loads(invoke("preprocess", "--inspect", str(folder / "CMU_MOSEI_COVAREP.csd"), "--format",
                                "json").stdout)
    assert as_json["summary"]["videos"] == 3 and as_json["entries"][0]["inf"] == 1

    invoke("preprocess", "--dataset", "mosei", "--source", "mmsdk", "--data-root", str(tmp_path))
    cache = invoke("preprocess", "--inspect", str(tmp_path / "cache" / "mosei-aligned.h5"), "--format", "json")
    report = json.loads(cache.stdout)
    assert report["kind"] == "msmix cache" and report["summary"]["dataset"] == "mosei"
    entries = {e["key"]: e for e in report["entries"]}
    assert entries["train/audio"]["shape"] == [2, 50, 74] and entries["train/audio"]["inf"] == 0
    assert entries["train/text_lengths"]["lengths"] == {"min": 4.0, "mean": 4.0, "max": 4.0}


def one_line_error(result) -> str:
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    return message


def test_a_pickle_that_runs_code_is_refused_with_exit_2(tmp_path: Path) -> None:
    marker = tmp_path / "it-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = mosi_pickle(tmp_path)
    write_pickle(path, {"train": {"x": Payload()}})
    for args in (("--dataset", "mosi", "--data-root", str(tmp_path)), ("--inspect", str(path))):
        result = invoke("preprocess", *args)
        assert result.exit_code == 2
        assert "system" in one_line_error(result)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()


def test_a_truncated_csd_is_exit_2_and_writes_no_cache(tmp_path: Path) -> None:
    folder = mosei_csds(tmp_path)
    covarep = folder / "CMU_MOSEI_COVAREP.csd"
    covarep.write_bytes(covarep.read_bytes()[:3000])
    result = invoke("preprocess", "--dataset", "mosei", "--source", "mmsdk", "--data-root", str(tmp_path))
    assert result.exit_code == 2
    assert "CMU_MOSEI_COVAREP.csd" in one_line_error(result)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, message", [
    ((), "give --dataset"),
    (("--dataset", "imdb"), "unknown dataset 'imdb'"),
    (("--dataset", "sims", "--setting", "aligned"), "no setting 'aligned'"),
    (("--dataset", "sims", "--source", "mmsdk"), "no source 'mmsdk'"),
    (("--dataset", "synth"), "generated by msmix"),
])
def test_bad_options_are_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = invoke("preprocess", "--data-root", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in one_line_error(result)


def test_inspecting_something_else_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not data")
    result = invoke("preprocess", "--inspect", str(path))
    assert result.exit_code == 2
    assert "notes.txt" in one_line_error(result)


def test_names_inside_data_files_never_become_paths(tmp_path: Path) -> None:
    """Ids and metadata are the file's text: an id like "../../x" is a key in the cache, not a place to write."""
    root = tmp_path / "data"
    content = {split: mmsa_split(n, MOSI.seq_lens["aligned"], MOSI.dims, aligned=True, seed=i,
                                 prefix=f"../../../escape-{split}/") for i, (split, n) in enumerate(SIZES.items())}
    write_pickle(root / "raw" / "mosi" / "aligned_50.pkl", content)
    before = {p for p in tmp_path.rglob("*")}
    result = invoke("preprocess", "--dataset", "mosi", "--data-root", str(root))
    assert result.exit_code == 0, result.output
    assert {p for p in tmp_path.rglob("*")} - before == {root / "cache", root / "cache" / "mosi-aligned.h5"}
    assert open_cache(root / "cache" / "mosi-aligned.h5").split("train").ids[0].startswith("../../../escape-")


def test_every_published_file_name_is_a_plain_file_name() -> None:
    """Download targets are the registry's names joined to the dataset's folder: none may hold a folder part."""
    for name in DATASETS.names():
        spec = DATASETS.get(name)
        for source in spec.sources:
            for remote in spec.source_files(source):
                assert Path(remote.name).name == remote.name and remote.name not in ("", ".", ".."), remote.name
