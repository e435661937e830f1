"""MMSA feature pickles: the restricted unpickler, key and shape validation, lengths, labels, the cache written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from formats import mmsa_split, write_label_csv, write_pickle
from msmix_cli.data.mmsa import load_pickle
from msmix_cli.data.preprocess import preprocess
from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput

MOSI = DATASETS.get("mosi")
SIMS = DATASETS.get("sims")
SIZES = {"train": 5, "valid": 3, "test": 4}


def mmsa_content(spec=MOSI, setting: str = "aligned", *, unimodal: bool = False) -> dict:
    return {split: mmsa_split(n, spec.seq_lens[setting], spec.dims, aligned=setting == "aligned", seed=i,
                              unimodal=unimodal, label_range=spec.label_range, prefix=split)
            for i, (split, n) in enumerate(SIZES.items())}


def load(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(path, "r") as handle:
        return {split: {key: handle[split][key][()] for key in handle[split]} for split in ("train", "valid", "test")}


class RunsACommand:
    """Unpickling this would run a shell command, which must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_aligned_pickle_becomes_a_float32_cache_with_derived_lengths(tmp_path: Path) -> None:
    content = mmsa_content()
    write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", content)
    report = preprocess("mosi", data_root=tmp_path, source="mmsa", setting="aligned")
    cache = load(report.cache)
    for split, n in SIZES.items():
        original, written = content[split], cache[split]
        text_lengths = original["text_bert"][:, 1].sum(axis=1).astype(int)  # BERT's input mask
        for m in ("text", "audio", "vision"):
            assert written[m].dtype == np.float32 and written[m].shape == (n, 50, MOSI.dims[m])
            np.testing.assert_array_equal(written[f"{m}_lengths"], text_lengths)  # aligned: the text's steps
        expected_audio = np.where(np.isfinite(original["audio"]), original["audio"], 0).astype(np.float32)
        np.testing.assert_array_equal(written["audio"], expected_audio)
        np.testing.assert_array_equal(written["text_ids"], original["text_bert"].astype(np.int64))
        np.testing.assert_allclose(written["label"], original["regression_labels"], rtol=1e-6)
        assert [i.decode() for i in written["id"]] == list(original["id"])
    assert report.samples == SIZES
    assert "3 NaN/inf audio values set to 0" in report.notes  # one -inf per split


def test_the_cache_records_its_provenance(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", mmsa_content())
    report = preprocess("mosi", data_root=tmp_path)
    with h5py.File(report.cache, "r") as handle:
        provenance = json.loads(handle.attrs["provenance"])
    [file] = provenance["files"]
    assert file["name"] == "aligned_50.pkl" and file["bytes"] == path.stat().st_size
    assert file["published_sha256"] == MOSI.file_for("mmsa", "aligned").sha256
    assert file["matches_published"] is False  # a test-made pickle, not the released one
    assert provenance["replaced_nonfinite"]["audio"] == 3


def test_unaligned_lengths_come_from_the_file_and_are_clipped_to_the_padded_size(tmp_path: Path) -> None:
    content = mmsa_content(setting="unaligned")
    content["train"]["audio_lengths"][0] = 400  # beyond the 375 padded steps
    write_pickle(tmp_path / "raw" / "mosi" / "unaligned_50.pkl", content)
    report = preprocess("mosi", data_root=tmp_path, setting="unaligned")
    train = load(report.cache)["train"]
    expected = np.minimum(content["train"]["audio_lengths"], 375)
    np.testing.assert_array_equal(train["audio_lengths"], expected)
    np.testing.assert_array_equal(train["vision_lengths"], content["train"]["vision_lengths"])
    assert train["audio"].shape == (5, 375, 5) and train["vision"].shape == (5, 500, 20)
    assert any("1 lengths beyond the padded size" in note for note in report.notes)


def test_without_bert_ids_the_text_length_is_the_last_nonzero_step(tmp_path: Path) -> None:
    content = mmsa_content()
    for split in content.values():
        del split["text_bert"]
    content["train"]["text"][0, :] = 0
    content["train"]["text"][0, 3] = 1.0  # steps 0-2 are zero but the sequence runs to step 3
    write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", content)
    train = load(preprocess("mosi", data_root=tmp_path).cache)["train"]
    assert train["text_lengths"][0] == 4
    assert "text_ids" not in train


def test_sims_keeps_its_unimodal_labels(tmp_path: Path) -> None:
    content = mmsa_content(SIMS, "unaligned", unimodal=True)
    write_pickle(tmp_path / "raw" / "sims" / "unaligned_39.pkl", content)
    cache = load(preprocess("sims", data_root=tmp_path).cache)
    for m in ("T", "A", "V"):
        np.testing.assert_allclose(cache["test"][f"label_{m}"], content["test"][f"regression_labels_{m}"], rtol=1e-6)
    assert cache["train"]["vision"].shape == (5, 55, 709)


def test_sims_takes_missing_unimodal_labels_from_label_csv(tmp_path: Path) -> None:
    content = mmsa_content(SIMS, "unaligned")
    rows = []
    for split, arrays in content.items():
        for number, sample in enumerate(arrays["id"]):
            video, clip = sample.split("$_$")
            rows.append({"video_id": video, "clip_id": clip, "text": "你好", "label": arrays["regression_labels"][number],
                         "label_T": 0.2, "label_A": -0.4, "label_V": 0.6 if split == "valid" else 0.8,
                         "annotation": "Positive", "mode": split})
    write_pickle(tmp_path / "raw" / "sims" / "unaligned_39.pkl", content)
    write_label_csv(tmp_path / "raw" / "sims" / "label.csv", rows)
    report = preprocess("sims", data_root=tmp_path)
    cache = load(report.cache)
    np.testing.assert_allclose(cache["valid"]["label_V"], 0.6, rtol=1e-6)
    np.testing.assert_allclose(cache["train"]["label_A"], -0.4, rtol=1e-6)
    with h5py.File(report.cache, "r") as handle:
        assert {f["name"] for f in json.loads(handle.attrs["provenance"])["files"]} == {"unaligned_39.pkl", "label.csv"}


def test_sims_without_unimodal_labels_anywhere_is_bad_input(tmp_path: Path) -> None:
    write_pickle(tmp_path / "raw" / "sims" / "unaligned_39.pkl", mmsa_content(SIMS, "unaligned"))
    with pytest.raises(BadInput, match="label.csv"):
        preprocess("sims", data_root=tmp_path)


def test_a_pickle_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "it-ran"
    content = mmsa_content()
    content["train"]["payload"] = RunsACommand(marker)
    path = write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", content)
    with pytest.raises(BadInput, match=r"refused to load: the pickle asks for (posix|nt|os)\.system"):
        load_pickle(path)
    with pytest.raises(BadInput, match="refused"):
        preprocess("mosi", data_root=tmp_path)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_numpy_arrays_load_whatever_the_protocol(tmp_path: Path, protocol: int) -> None:
    content = {"a": np.arange(6.0).reshape(2, 3), "b": [np.float32(1.5), "text", (1, 2)],
               "c": np.array(["x$_$1", "y$_$2"], dtype=object), "d": np.array(["u", "v"])}
    loaded = load_pickle(write_pickle(tmp_path / "p.pkl", content, protocol=protocol))
    np.testing.assert_array_equal(loaded["a"], content["a"])
    assert loaded["b"] == content["b"] and list(loaded["c"]) == ["x$_$1", "y$_$2"] and list(loaded["d"]) == ["u", "v"]


def test_a_global_outside_numpy_is_named_in_the_refusal(tmp_path: Path) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"f": print}))
    with pytest.raises(BadInput, match=r"builtins\.print"):
        load_pickle(path)


def test_a_truncated_pickle_is_bad_input(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", mmsa_content())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(BadInput, match="not a readable pickle"):
        preprocess("mosi", data_root=tmp_path)
    assert not (tmp_path / "cache").exists()


def drop_key(content: dict) -> None:
    del content["valid"]["vision"]


def wrong_width(content: dict) -> None:
    content["train"]["audio"] = np.zeros((5, 50, 6))


def wrong_count(content: dict) -> None:
    content["test"]["id"] = content["test"]["id"][:2]


def no_split(content: dict) -> None:
    del content["test"]


def labels_out_of_range(content: dict) -> None:
    content["train"]["regression_labels"][1] = 3.5


@pytest.mark.parametrize("damage, message", [
    (drop_key, "split 'valid' has no 'vision'"),
    (wrong_width, r"train/audio has shape \(5, 50, 6\), expected \(5, 50, 5\)"),
    (wrong_count, r"test/id has shape \(2,\), expected \(4,\)"),
    (no_split, "expected a dict with splits"),
    (labels_out_of_range, r"outside \[-3, 3\]"),
])
def test_a_malformed_pickle_is_bad_input(tmp_path: Path, damage, message: str) -> None:
    content = mmsa_content()
    damage(content)
    write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", content)
    with pytest.raises(BadInput, match=message):
        preprocess("mosi", data_root=tmp_path)
    assert not (tmp_path / "cache").exists()


def test_an_unaligned_pickle_without_lengths_is_bad_input(tmp_path: Path) -> None:
    content = mmsa_content(setting="unaligned")
    del content["train"]["vision_lengths"]
    write_pickle(tmp_path / "raw" / "mosi" / "unaligned_50.pkl", content)
    with pytest.raises(BadInput, match="no 'vision_lengths'"):
        preprocess("mosi", data_root=tmp_path, setting="unaligned")


def test_a_missing_pickle_says_how_to_import_it(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"aligned_50.pkl not found; import .* --from PATH"):
        preprocess("mosi", data_root=tmp_path)


# ------------------------------------------------------------------------ pickles that build arrays over raw bytes

class Reduces:
    """Pickles as `function(*args)`, plus `state` for BUILD when given: how a crafted file builds numpy objects."""

    def __init__(self, function, args: tuple, state=None) -> None:
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


RAW = b"AAAAAAAA" * 4  # read as four object pointers, 0x4141414141414141 each
# numpy's own pickling functions, whichever module (numpy.core or numpy._core) holds them
RECONSTRUCT = np.zeros(1).__reduce__()[0]
FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
SCALAR = np.float64(1).__reduce__()[0]


def object_array_from_bytes() -> Reduces:
    return Reduces(np.ndarray, ((4,), np.dtype("O"), RAW))


def dtype_that_hides_its_objects() -> Reduces:
    """A structured dtype with an object field, its pickled flags saying it holds none."""
    lying = Reduces(np.dtype, ("V8", False, True), (3, "|", None, ("x",), {"x": (np.dtype("O"), 0)}, 8, 1, 0))
    return Reduces(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (4,), lying, False, RAW))


def object_array_from_frombuffer() -> Reduces:
    return Reduces(FROMBUFFER, (RAW, np.dtype("O"), (4,), "C"))


def object_scalar_from_bytes() -> Reduces:
    return Reduces(SCALAR, (np.dtype("O"), RAW[:8]))


@pytest.mark.parametrize("crafted", [object_array_from_bytes, dtype_that_hides_its_objects, object_array_from_frombuffer,
                                     object_scalar_from_bytes])
def test_an_array_built_over_raw_bytes_is_refused_not_a_crash(tmp_path: Path, crafted) -> None:
    """In a child process: before the fix, the first two crashed the interpreter (exit 139, nothing said)."""
    content = mmsa_content()
    content["train"]["id"] = crafted()
    write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", content)
    done = subprocess.run([sys.executable, "-m", "msmix_cli", "preprocess", "--dataset", "mosi", "--data-root", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "refused to load" in done.stderr and "aligned_50.pkl" in done.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("element", [{"x": 1}, np.zeros(2), 1.5, None])
def test_an_id_that_is_not_text_is_refused_not_printed(tmp_path: Path, element) -> None:
    content = mmsa_content()
    content["valid"]["id"] = np.array([element, "b", "c"], dtype=object)
    write_pickle(tmp_path / "raw" / "mosi" / "aligned_50.pkl", content)
    with pytest.raises(BadInput, match=r"valid/id holds a \w+, expected text ids"):
        preprocess("mosi", data_root=tmp_path)


@pytest.mark.parametrize("value", [
    np.zeros(3, dtype=np.dtype([("a", "i1"), ("b", "f8")], align=True)),
    np.array([(1, "x"), (2, "y")], dtype=[("a", "i4"), ("b", "O")]),
    np.zeros(2, dtype=[("a", "f4", (2, 2))]),
    np.zeros(1, dtype={"names": ["a"], "formats": ["f4"], "titles": ["T"]}),
    np.array(["2020-01-01"], dtype="datetime64[s]"),
    np.zeros(1, dtype=[("a", "f4"), ("b", "i2")])[0],
], ids=["aligned struct", "struct with objects", "subarray field", "titles", "datetime", "void scalar"])
@pytest.mark.parametrize("protocol", [4, 5])
def test_honest_dtypes_of_every_kind_still_load(tmp_path: Path, value, protocol: int) -> None:
    loaded = load_pickle(write_pickle(tmp_path / "p.pkl", {"v": value}, protocol=protocol))["v"]
    assert loaded.dtype == value.dtype and np.all(loaded == value)
