"""CH-SIMS v2 (`simsv2`): the authors' `ch-simsv2s.pkl` layout and `label.csv`, imported, cached and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from typer.testing import CliRunner

from formats import mmsa_split, write_label_csv, write_pickle
from msmix_cli.cli import app
from msmix_cli.data.specs import DATASETS
from msmix_cli.metrics import METRIC_NAMES

runner = CliRunner()
SIMSV2 = DATASETS.get("simsv2")
SIZES = {"train": 6, "valid": 3, "test": 4}
GRID = np.round(np.arange(-1.0, 1.01, 0.2), 1)  # CH-SIMS v2 labels lie on a 0.2 grid in [-1, 1]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def simsv2_content(*, unimodal: bool = True) -> dict:
    """Splits in the released layout: unaligned 50/925/232 steps of 768/25/177 features, lengths, T/A/V labels."""
    content = {}
    for i, (split, n) in enumerate(SIZES.items()):
        arrays = mmsa_split(n, SIMSV2.seq_lens["unaligned"], SIMSV2.dims, aligned=False, seed=i, unimodal=unimodal,
                            label_range=1.0, prefix=f"video_{split}")
        rng = np.random.default_rng(i)
        for key in ("regression_labels", *([f"regression_labels_{m}" for m in "TAV"] if unimodal else [])):
            arrays[key] = rng.choice(GRID, size=n)
        content[split] = arrays
    return content


def test_the_published_spec_is_the_authors_layout() -> None:
    assert SIMSV2.dims == {"text": 768, "audio": 25, "vision": 177}
    assert SIMSV2.seq_lens == {"unaligned": {"text": 50, "audio": 925, "vision": 232}}
    assert SIMSV2.splits == {"train": 2722, "valid": 647, "test": 1034}
    assert (SIMSV2.label_range, SIMSV2.metric_set, SIMSV2.unimodal_labels) == (1.0, "sims", True)
    assert [f.name for f in SIMSV2.sources["mmsa"]] == ["ch-simsv2s.pkl", "label.csv"]


def test_download_preprocess_and_train_from_the_released_pickle(tmp_path: Path) -> None:
    content = simsv2_content()
    write_pickle(tmp_path / "drive" / "ch-simsv2s.pkl", content)
    result = invoke("download", "--dataset", "simsv2", "--from", tmp_path / "drive", "--data-root", tmp_path)
    assert result.exit_code == 0, result.output
    result = invoke("preprocess", "--dataset", "simsv2", "--data-root", tmp_path)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "cache" / "simsv2-unaligned.h5", "r") as cache:
        assert cache["train"]["audio"].shape == (6, 925, 25) and cache["train"]["vision"].shape == (6, 232, 177)
        assert cache.attrs["label_range"] == 1.0
        np.testing.assert_allclose(cache["test"]["label_A"][()], content["test"]["regression_labels_A"], rtol=1e-6)
        np.testing.assert_array_equal(cache["valid"]["vision_lengths"][()], content["valid"]["vision_lengths"])
    result = invoke("train", "--dataset", "simsv2", "--backbone", "tfn", "--max-epochs", 1, "--data-root", tmp_path,
                    "--out", tmp_path / "runs", "--format", "json", "--set", "model.hidden_dims=[4,2,3]",
                    "--set", "model.text_out=4", "--set", "model.post_fusion_dim=4", "--set", "train.threads=1")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["metrics"]) == list(METRIC_NAMES["sims"])


def test_unimodal_labels_come_from_label_csv_when_the_pickle_lacks_them(tmp_path: Path) -> None:
    content = simsv2_content(unimodal=False)
    rows = [{"video_id": sample.split("$_$")[0], "clip_id": sample.split("$_$")[1], "text": "文本",
             "label": arrays["regression_labels"][number], "label_T": 0.2, "label_A": -0.6, "label_V": 0.8,
             "annotation": "Neutral", "mode": split}
            for split, arrays in content.items() for number, sample in enumerate(arrays["id"])]
    write_pickle(tmp_path / "raw" / "simsv2" / "ch-simsv2s.pkl", content)
    write_label_csv(tmp_path / "raw" / "simsv2" / "label.csv", rows)
    result = invoke("preprocess", "--dataset", "simsv2", "--data-root", tmp_path)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "cache" / "simsv2-unaligned.h5", "r") as cache:
        np.testing.assert_allclose(cache["valid"]["label_A"][()], -0.6, rtol=1e-6)


def test_a_missing_pickle_points_to_the_authors_folder(tmp_path: Path) -> None:
    result = invoke("download", "--dataset", "simsv2", "--data-root", tmp_path)
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "ch-simsv2s.pkl" in message and "1wFvGS0ebKRvT3q6Xolot-sDtCNfz7HRA" in message
