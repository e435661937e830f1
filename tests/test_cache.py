"""The cache: round trip, the fixed layout, validation on write and on open, batching, and dataset loading."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from msmix_cli.data.cache import SPLITS, SplitArrays, cache_path, open_cache, write_cache
from msmix_cli.data.loading import data_root_default, load_dataset
from msmix_cli.errors import BadInput
from msmix_cli.types import MODALITIES

SHAPES = {"text": (6, 8), "audio": (9, 3), "vision": (7, 4)}  # modality -> (L, D), unaligned on purpose
SIZES = {"train": 23, "valid": 7, "test": 9}
TINY_SYNTH = {"samples": 24, "synth_dims": {"text": 8, "audio": 3, "vision": 4}, "synth_seq_len": 6}


def make_split(rng: np.random.Generator, n: int, *, unimodal: bool = False, text_ids: bool = False) -> SplitArrays:
    lengths = {m: rng.integers(0, length + 1, n) for m, (length, _) in SHAPES.items()}
    features = {}
    for m, (length, width) in SHAPES.items():
        x = rng.standard_normal((n, length, width)).astype(np.float32)
        x[np.arange(length)[None, :] >= lengths[m][:, None]] = 0.0
        features[m] = x
    return SplitArrays(
        features=features, lengths=lengths, label=rng.uniform(-3, 3, n).astype(np.float32),
        ids=[f"video{rng.integers(1000)}$_${i}" for i in range(n)],
        extra_labels={k: rng.uniform(-3, 3, n).astype(np.float32) for k in "TAV"} if unimodal else {},
        text_ids=rng.integers(0, 30000, (n, 3, SHAPES["text"][0])) if text_ids else None,
    )


def make_splits(seed: int = 0, **options) -> dict[str, SplitArrays]:
    rng = np.random.default_rng(seed)
    return {name: make_split(rng, n, **options) for name, n in SIZES.items()}


def write(path: Path, splits: dict[str, SplitArrays] | None = None, **attrs) -> Path:
    options = {"dataset": "mosi", "setting": "unaligned", "label_range": 3.0, "provenance": {"source": "test"}}
    return write_cache(path, splits=splits or make_splits(), **{**options, **attrs})


def collect(batches) -> dict[str, torch.Tensor]:
    batches = list(batches)
    out = {m: torch.cat([b.inputs[m] for b in batches]) for m in MODALITIES}
    out |= {f"{m}_lengths": torch.cat([b.inputs.length(m) for b in batches]) for m in MODALITIES}
    out["label"] = torch.cat([b.label for b in batches])
    out["index"] = torch.cat([b.index for b in batches])
    if batches[0].text_ids is not None:
        out["text_ids"] = torch.cat([b.text_ids for b in batches])
    return out


# ---------------------------------------------------------------------------------------------- round trip


def test_round_trip_keeps_every_array_and_attribute(tmp_path):
    splits = make_splits(unimodal=True, text_ids=True)
    path = write(tmp_path / "c.h5", splits, provenance={"source": "mmsa", "files": [{"sha256": "ab"}]})
    with open_cache(path) as cache:
        assert (cache.dataset, cache.setting, cache.label_range) == ("mosi", "unaligned", 3.0)
        assert cache.provenance == {"source": "mmsa", "files": [{"sha256": "ab"}]}
        assert cache.shape.dims == {m: d for m, (_, d) in SHAPES.items()}
        assert cache.shape.seq_lens == {m: length for m, (length, _) in SHAPES.items()}
        assert cache.shape.aligned is False
        for name in SPLITS:
            split, original = cache.split(name), splits[name]
            assert len(split) == SIZES[name] and split.ids == list(original.ids)
            np.testing.assert_array_equal(split.labels, original.label)
            got = collect(split.batches(5, shuffle=False))
            for m in MODALITIES:
                np.testing.assert_array_equal(got[m].numpy(), original.features[m])
                np.testing.assert_array_equal(got[f"{m}_lengths"].numpy(), original.lengths[m])
            np.testing.assert_array_equal(got["text_ids"].numpy(), original.text_ids)
            np.testing.assert_array_equal(got["index"].numpy(), np.arange(SIZES[name]))


def test_file_layout_is_the_documented_one(tmp_path):
    path = write(tmp_path / "c.h5", make_splits(unimodal=True, text_ids=True))
    with h5py.File(path, "r") as handle:
        assert handle.attrs["format"] == "msmix-cache" and handle.attrs["version"] == 1
        assert json.loads(handle.attrs["provenance"]) == {"source": "test"}
        assert sorted(handle) == sorted(SPLITS)
        group = handle["train"]
        expected = {**{m: np.float32 for m in MODALITIES}, **{f"{m}_lengths": np.int32 for m in MODALITIES},
                    "label": np.float32, "label_T": np.float32, "label_A": np.float32, "label_V": np.float32,
                    "text_ids": np.int64}
        assert sorted(group) == sorted([*expected, "id"])
        for key, dtype in expected.items():
            assert group[key].dtype == dtype, key
            assert group[key].chunks is None and group[key].compression is None, key
        assert h5py.check_string_dtype(group["id"].dtype).encoding == "utf-8"
        assert group["text_ids"].shape == (SIZES["train"], 3, SHAPES["text"][0])


def test_aligned_setting_gives_an_aligned_shape(tmp_path):
    with open_cache(write(tmp_path / "c.h5", setting="aligned")) as cache:
        assert cache.shape.aligned is True


def test_cache_path():
    assert cache_path(Path("root"), "mosi", "aligned") == Path("root/cache/mosi-aligned.h5")


# ---------------------------------------------------------------------------------------------- batches


def test_batches_carry_the_types_the_models_expect(tmp_path):
    with open_cache(write(tmp_path / "c.h5", make_splits(text_ids=True))) as cache:
        batch = next(cache.split("train").batches(4, shuffle=False))
    assert batch.size == 4 and batch.label.dtype == torch.float32 and batch.index.dtype == torch.int64
    assert all(batch.inputs[m].dtype == torch.float32 for m in MODALITIES)
    assert all(batch.inputs.length(m).dtype == torch.int64 for m in MODALITIES)
    assert batch.text_ids.dtype == torch.int64 and batch.text_ids.shape == (4, 3, SHAPES["text"][0])


def test_batches_have_no_text_ids_when_the_cache_has_none(tmp_path):
    with open_cache(write(tmp_path / "c.h5")) as cache:
        assert next(cache.split("test").batches(3, shuffle=False)).text_ids is None


def test_shuffle_order_comes_only_from_the_rng(tmp_path):
    with open_cache(write(tmp_path / "c.h5")) as cache:
        split = cache.split("train")
        first, again, other = (collect(split.batches(4, shuffle=True, rng=np.random.default_rng(seed)))["index"]
                               for seed in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first.tolist()) == list(range(SIZES["train"]))  # every row exactly once


def test_shuffle_without_rng_is_refused(tmp_path):
    with open_cache(write(tmp_path / "c.h5")) as cache:
        with pytest.raises(ValueError, match="rng"):
            cache.split("train").batches(4, shuffle=True)


def test_batch_rows_match_their_index(tmp_path):
    splits = make_splits()
    with open_cache(write(tmp_path / "c.h5", splits)) as cache:
        got = collect(cache.split("train").batches(6, shuffle=True, rng=np.random.default_rng(0)))
    rows = got["index"].numpy()
    np.testing.assert_array_equal(got["audio"].numpy(), splits["train"].features["audio"][rows])
    np.testing.assert_array_equal(got["label"].numpy(), splits["train"].label[rows])
    np.testing.assert_array_equal(got["vision_lengths"].numpy(), splits["train"].lengths["vision"][rows])


def test_drop_last_and_batch_sizes(tmp_path):
    with open_cache(write(tmp_path / "c.h5")) as cache:
        split = cache.split("train")  # 23 rows
        assert [b.size for b in split.batches(10, shuffle=False)] == [10, 10, 3]
        assert [b.size for b in split.batches(10, shuffle=False, drop_last=True)] == [10, 10]
        with pytest.raises(ValueError):
            split.batches(0, shuffle=False)


def test_indices_choose_rows_and_order(tmp_path):
    with open_cache(write(tmp_path / "c.h5")) as cache:
        split = cache.split("train")
        shard = np.array([9, 2, 2, 20, 0])
        assert collect(split.batches(2, shuffle=False, indices=shard))["index"].tolist() == shard.tolist()
        shuffled = collect(split.batches(2, shuffle=True, rng=np.random.default_rng(1), indices=shard))["index"]
        assert sorted(shuffled.tolist()) == sorted(shard.tolist())
        with pytest.raises(ValueError, match="indices"):
            split.batches(2, shuffle=False, indices=np.array([0, SIZES["train"]]))


@pytest.mark.parametrize("indices", [None, np.array([5, 1, 1, 22, 3, 0, 5, 17])])
def test_batches_read_from_the_file_equal_in_memory_batches(tmp_path, indices):
    path = write(tmp_path / "c.h5", make_splits(text_ids=True))
    with open_cache(path) as loaded, open_cache(path, in_memory=False) as mapped:
        for name in SPLITS:
            chosen = None if indices is None or name != "train" else indices
            a = list(loaded.split(name).batches(3, shuffle=True, rng=np.random.default_rng(4), indices=chosen))
            b = list(mapped.split(name).batches(3, shuffle=True, rng=np.random.default_rng(4), indices=chosen))
            assert len(a) == len(b)
            for x, y in zip(a, b):
                for key in ("label", "index", "text_ids"):
                    assert torch.equal(getattr(x, key), getattr(y, key))
                for m in MODALITIES:
                    assert torch.equal(x.inputs[m], y.inputs[m])
                    assert torch.equal(x.inputs.length(m), y.inputs.length(m))


def test_split_is_loaded_once_and_unknown_split_is_bad_input(tmp_path):
    with open_cache(write(tmp_path / "c.h5")) as cache:
        assert cache.split("valid") is cache.split("valid")
        with pytest.raises(BadInput, match="dev"):
            cache.split("dev")


# ---------------------------------------------------------------------------------------------- writing


def corrupt_nan(splits):
    splits["valid"].features["audio"][0, 0, 0] = np.nan


def corrupt_length(splits):
    splits["test"].lengths["vision"][0] = SHAPES["vision"][0] + 1


def corrupt_count(splits):
    splits["train"].label = splits["train"].label[:-1]


def corrupt_width(splits):
    splits["test"].features["text"] = np.zeros((SIZES["test"], SHAPES["text"][0], 5), np.float32)


def corrupt_dtype(splits):
    splits["train"].features["vision"] = splits["train"].features["vision"].astype(np.float64)


def corrupt_split(splits):
    del splits["valid"]


def corrupt_label_range(splits):
    splits["train"].label[0] = 3.5


@pytest.mark.parametrize("corrupt, message", [
    (corrupt_nan, "valid/audio holds NaN"), (corrupt_length, "test/vision_lengths"), (corrupt_count, "train/label"),
    (corrupt_width, "test/text"), (corrupt_dtype, "float32"), (corrupt_split, "exactly train, valid, test"),
    (corrupt_label_range, "within ±3"),
])
def test_write_refuses_bad_arrays_and_leaves_no_file(tmp_path, corrupt, message):
    splits = make_splits()
    corrupt(splits)
    with pytest.raises(BadInput, match=message):
        write(tmp_path / "c.h5", splits)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_cache(tmp_path):
    path = write(tmp_path / "c.h5")
    before = path.read_bytes()
    splits = make_splits(seed=1)
    corrupt_nan(splits)
    with pytest.raises(BadInput):
        write(path, splits)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.h5"]


# ---------------------------------------------------------------------------------------------- opening


def rewrite(path: Path, change) -> Path:
    with h5py.File(path, "r+") as handle:
        change(handle)
    return path


def rechunk(handle):
    data = handle["train/audio"][()]
    del handle["train/audio"]
    handle["train"].create_dataset("audio", data=data, chunks=True, compression="gzip")


@pytest.mark.parametrize("change, message", [
    (lambda h: h.attrs.__setitem__("format", "other"), "not an msmix cache"),
    (lambda h: h.attrs.__setitem__("version", 2), "version 2"),
    (lambda h: h.attrs.__delitem__("provenance"), "provenance"),
    (lambda h: h.__delitem__("valid"), "/valid is missing"),
    (lambda h: h["test"].__delitem__("vision_lengths"), "test/vision_lengths is missing"),
    (lambda h: h["test/audio_lengths"].__setitem__(0, 99), "test/audio_lengths must lie in"),
    (lambda h: h["valid/label"].__setitem__(1, np.inf), "valid/label holds NaN or inf"),
    (rechunk, "train/audio is not stored contiguously"),
])
def test_open_refuses_a_malformed_cache(tmp_path, change, message):
    path = rewrite(write(tmp_path / "c.h5"), change)
    with pytest.raises(BadInput, match=message) as error:
        open_cache(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_open_refuses_files_that_are_not_hdf5_or_truncated(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    truncated = write(tmp_path / "c.h5")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for path in (text, truncated):
        with pytest.raises(BadInput, match="not a readable HDF5 file") as error:
            open_cache(path)
        assert str(path) in str(error.value)
    with pytest.raises(BadInput, match="not found"):
        open_cache(tmp_path / "absent.h5")


# ---------------------------------------------------------------------------------------------- loading


def test_synth_cache_is_generated_once_and_named_by_its_parameters(tmp_path):
    with load_dataset("synth", setting=None, data_root=tmp_path, **TINY_SYNTH) as first:
        path, labels = first.path, first.split("train").labels.copy()
        assert first.dataset == "synth" and first.setting == "aligned"
        assert first.shape.dims == TINY_SYNTH["synth_dims"] and first.shape.seq_lens["audio"] == 6
        assert first.provenance["seed"] == 0 and first.provenance["samples"] == 24
    assert path.parent == tmp_path / "cache" and path.name.startswith("synth-")
    stamp = path.stat().st_mtime_ns
    with load_dataset("synth", setting="aligned", data_root=tmp_path, **TINY_SYNTH) as again:
        assert again.path == path and np.array_equal(again.split("train").labels, labels)
    assert path.stat().st_mtime_ns == stamp  # reused, not regenerated
    with load_dataset("synth", setting=None, data_root=tmp_path, data_seed=1, **TINY_SYNTH) as other:
        assert other.path != path


def test_real_dataset_without_cache_names_the_file_and_the_commands(tmp_path):
    with pytest.raises(BadInput) as error:
        load_dataset("mosi", setting=None, data_root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cache" / "mosi-aligned.h5") in message
    assert "msmix download --dataset mosi" in message and "msmix preprocess --dataset mosi" in message


def test_real_dataset_opens_its_cache(tmp_path):
    write(cache_path(tmp_path, "mosi", "unaligned"))
    with load_dataset("mosi", setting="unaligned", data_root=tmp_path) as cache:
        assert (cache.dataset, cache.setting, len(cache.split("train"))) == ("mosi", "unaligned", SIZES["train"])


def test_a_cache_of_another_dataset_is_refused(tmp_path):
    write(cache_path(tmp_path, "mosei", "unaligned"))  # holds mosi
    with pytest.raises(BadInput, match="holds mosi"):
        load_dataset("mosei", setting="unaligned", data_root=tmp_path)


@pytest.mark.parametrize("name, options, message", [
    ("imdb", {}, "unknown dataset 'imdb'"),
    ("sims", {"setting": "aligned"}, "choose one of: unaligned"),
    ("synth", {"setting": "unaligned"}, "choose one of: aligned"),
    ("mosi", {"samples": 100}, "--samples applies to synth only"),
])
def test_bad_dataset_choices_are_bad_input(tmp_path, name, options, message):
    with pytest.raises(BadInput, match=message):
        load_dataset(name, **{"setting": None, **options}, data_root=tmp_path)


def test_data_root_default(monkeypatch, tmp_path):
    monkeypatch.delenv("MSMIX_DATA_ROOT", raising=False)
    assert data_root_default() == Path("data")
    monkeypatch.setenv("MSMIX_DATA_ROOT", str(tmp_path))
    assert data_root_default() == tmp_path
