"""SDK computational sequences: layout checks, word-level alignment, segmentation, folds, padding, normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from formats import frames, intervals, write_csd
from msmix_cli.cli import app
from msmix_cli.data.cache import SplitArrays
from msmix_cli.data.mmsdk import DEFAULT_TOLERANCE, clean_track, overlap_mean, segment_rows, standard_folds
from msmix_cli.data.preprocess import normalize_features, preprocess
from msmix_cli.errors import BadInput

FOLDS = standard_folds("mosi")
TRAIN1, TRAIN2 = FOLDS["train"][:2]
VALID, TEST = FOLDS["valid"][0], FOLDS["test"][0]
AUDIO_COLUMNS = np.array([1, 3, 6, 25, 60])
VISION_COLUMNS = np.array([0, 2, 5, 10, 11, 12, 14, 17, 20, 21, 22, 24, 25, 29, 30, 31, 32, 36, 37, 40])
FILES = {"text": ("language", "CMU_MOSI_TimestampedWordVectors.csd"), "audio": ("acoustic", "CMU_MOSI_COVAREP.csd"),
         "vision": ("visual", "CMU_MOSI_Visual_Facet_41.csd"), "labels": ("labels", "CMU_MOSI_Opinion_Labels.csd")}


def rows(base: list[float] | np.ndarray, width: int) -> np.ndarray:
    """Frame k, column c holds base[k] + c/1000: a column subset and a mean are both easy to compute by hand."""
    return (np.asarray(base, dtype=np.float64)[:, None] + np.arange(width)[None, :] / 1000).astype(np.float32)


def mosi_videos() -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """role -> video -> (features, intervals); see the tests for what each video exercises."""
    audio_t1 = rows([1, 3, 5], 74)
    audio_t1[0, 1] = -np.inf  # COVAREP holds -inf: zeroed before averaging
    long_words = np.zeros((60, 3), np.float32)
    long_words[:, 0] = np.arange(60)
    return {
        "text": {
            TRAIN1: (np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [9, 9, 9], [1, 1, 1]], np.float32),
                     intervals((0, 1), (1, 2), (2, 3), (3, 3), (3, 3.5))),  # (3, 3) lasts 0 s: never counts
            TRAIN2: (long_words, frames(60, 1.0)),
            VALID: (np.ones((1, 3), np.float32), intervals((0, 1))),
            TEST: (np.full((1, 3), 2, np.float32), intervals((0, 1))),
            "notInAnyFold": (np.ones((1, 3), np.float32), intervals((0, 1))),
        },
        "audio": {
            TRAIN1: (audio_t1, intervals((0, 0.5), (0.5, 1.5), (1.5, 2.0))),
            TRAIN2: (rows(np.arange(6000), 74), frames(6000, 100.0)),
            VALID: (rows([2], 74), intervals((0, 1))),
            TEST: (rows([4], 74), intervals((0, 1))),
            "notInAnyFold": (rows([0], 74), intervals((0, 1))),
        },
        "vision": {
            TRAIN1: (rows([7], 47), intervals((0, 4))),
            TRAIN2: (rows(np.arange(1800), 47), frames(1800, 30.0)),
            VALID: (rows([6], 47), intervals((0, 1))),
            TEST: (rows([8], 47), intervals((0, 1))),
            "notInAnyFold": (rows([0], 47), intervals((0, 1))),
        },
        "labels": {
            TRAIN1: (np.array([[1.5], [-2.0]], np.float32), intervals((0, 2), (2, 3.5))),
            TRAIN2: (np.array([[0.4]], np.float32), intervals((0, 60))),
            VALID: (np.array([[3.0]], np.float32), intervals((0, 1))),
            TEST: (np.array([[-0.6], [1.0]], np.float32), intervals((0, 1), (5, 6))),  # (5, 6) holds no word
            "notInAnyFold": (np.array([[0.0]], np.float32), intervals((0, 1))),
        },
    }


def write_mosi(root: Path, videos: dict | None = None) -> Path:
    folder = root / "raw" / "mosi"
    for role, content in (videos or mosi_videos()).items():
        write_csd(folder / FILES[role][1], FILES[role][1].removesuffix(".csd"), content)
    return folder


def load(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(path, "r") as handle:
        return {split: {key: handle[split][key][()] for key in handle[split]} for split in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("aligned")
    write_mosi(root)
    report = preprocess("mosi", data_root=root, source="mmsdk", setting="aligned")
    return report, load(report.cache)


@pytest.fixture(scope="module")
def unaligned(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("unaligned")
    write_mosi(root)
    report = preprocess("mosi", data_root=root, source="mmsdk", setting="unaligned")
    return report, load(report.cache)


def test_folds_split_by_video_in_fold_order(aligned) -> None:
    _, cache = aligned
    ids = {split: [i.decode() for i in cache[split]["id"]] for split in cache}
    assert ids == {"train": [f"{TRAIN1}[0]", f"{TRAIN1}[1]", f"{TRAIN2}[0]"], "valid": [f"{VALID}[0]"],
                   "test": [f"{TEST}[0]"]}
    np.testing.assert_allclose(cache["train"]["label"], [1.5, -2.0, 0.4])
    np.testing.assert_allclose(cache["test"]["label"], [-0.6])


def test_a_word_overlapping_two_frames_gets_their_mean_and_a_word_without_frames_zeros(aligned) -> None:
    _, cache = aligned
    audio = cache["train"]["audio"]
    columns = AUDIO_COLUMNS / 1000
    first = (np.array([1, 3])[:, None] + columns).mean(axis=0)
    first[0] = (0 + 3 + columns[0]) / 2  # column 1 of frame 0 was -inf, hence 0
    np.testing.assert_allclose(audio[0, 0], first, rtol=1e-6)
    np.testing.assert_allclose(audio[0, 1], 4 + columns, rtol=1e-6)  # frames 1 and 2
    np.testing.assert_allclose(audio[1, :2], 0)  # words after 2.0 s: no frame overlaps them
    np.testing.assert_allclose(cache["train"]["vision"][1, :2], np.tile(7 + VISION_COLUMNS / 1000, (2, 1)), rtol=1e-6)


def test_segments_hold_their_words_and_padding_sits_at_the_end(aligned) -> None:
    _, cache = aligned
    text, lengths = cache["train"]["text"], cache["train"]["text_lengths"]
    np.testing.assert_array_equal(lengths[:2], [2, 2])  # the zero-length word counts nowhere
    np.testing.assert_array_equal(text[0, :2], [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(text[1, :2], [[0, 0, 1], [1, 1, 1]])
    assert not text[:2, 2:].any()
    for m in ("audio", "vision"):
        np.testing.assert_array_equal(cache["train"][f"{m}_lengths"], lengths)


def test_a_long_segment_keeps_its_first_steps(aligned) -> None:
    _, cache = aligned
    long = 2
    assert cache["train"]["text_lengths"][long] == 50
    np.testing.assert_array_equal(cache["train"]["text"][long, :, 0], np.arange(50))
    # word i covers audio frames 100 i .. 100 i + 99
    np.testing.assert_allclose(cache["train"]["audio"][long, :, 1], np.arange(50) * 100 + 49.5 + 0.003, rtol=1e-6)


def test_the_report_and_provenance_say_what_changed(aligned) -> None:
    report, _ = aligned
    notes = " | ".join(report.notes)
    assert "1 NaN/inf audio values set to 0" in notes
    assert "1 segments dropped: video in no standard fold" in notes
    assert "1 segments dropped: no overlapping rows in some modality" in notes
    assert "1 text sequences longer than 50 steps" in notes
    assert report.shape == {"text": (50, 3), "audio": (50, 5), "vision": (50, 20)}
    with h5py.File(report.cache, "r") as handle:
        provenance = json.loads(handle.attrs["provenance"])
    assert provenance["source"] == "mmsdk" and provenance["setting"] == "aligned"
    assert {f["name"] for f in provenance["files"]} == {name for _, name in FILES.values()}
    assert all(len(f["sha256"]) == 64 for f in provenance["files"])
    assert "3-d" in provenance["text_features"]


def test_unaligned_segments_keep_each_modalitys_own_frames(unaligned) -> None:
    report, cache = unaligned
    train = cache["train"]
    assert [i.decode() for i in train["id"]] == [f"{TRAIN1}[0]", f"{TRAIN2}[0]"]  # TRAIN1[1] has no audio frame
    np.testing.assert_array_equal(train["audio_lengths"], [3, 375])
    np.testing.assert_array_equal(train["vision_lengths"], [1, 500])
    np.testing.assert_array_equal(train["text_lengths"], [2, 50])
    np.testing.assert_allclose(train["audio"][0, :3, 0], [0, 3.001, 5.001], rtol=1e-6)
    np.testing.assert_allclose(train["audio"][1, :375, 1], np.arange(375) + 0.003, rtol=1e-6)
    assert report.shape["audio"] == (375, 5) and report.shape["vision"] == (500, 20)


def test_normalisation_uses_training_statistics_only(tmp_path: Path) -> None:
    write_mosi(tmp_path)
    raw = load(preprocess("mosi", data_root=tmp_path, source="mmsdk").cache)
    normalised = load(preprocess("mosi", data_root=tmp_path, source="mmsdk", normalize=True).cache)
    train = raw["train"]
    valid_steps = np.arange(50)[None, :] < train["audio_lengths"][:, None]
    values = train["audio"][valid_steps].astype(np.float64)
    mean, std = values.mean(axis=0), values.std(axis=0)
    expected = (raw["valid"]["audio"][0, 0] - mean) / std
    np.testing.assert_allclose(normalised["valid"]["audio"][0, 0], expected, rtol=1e-4)
    np.testing.assert_allclose(normalised["train"]["audio"][valid_steps].mean(axis=0), 0, atol=1e-4)
    assert not normalised["valid"]["audio"][0, 1:].any()  # padding stays zero


def test_normalize_features_leaves_a_constant_feature_centred() -> None:
    x = np.zeros((2, 3, 2), np.float32)
    x[0, :2] = [[1, 5], [3, 5]]
    x[1, :1] = [[2, 5]]
    split = SplitArrays(features={m: x.copy() for m in ("text", "audio", "vision")},
                        lengths={m: np.array([2, 1]) for m in ("text", "audio", "vision")},
                        label=np.zeros(2, np.float32), ids=["a", "b"])
    normalize_features({"train": split})
    std = np.std([1, 3, 2])
    np.testing.assert_allclose(split.features["audio"][0, :2, 0], [(1 - 2) / std, (3 - 2) / std], rtol=1e-6)
    np.testing.assert_allclose(split.features["audio"][:, :, 1], [[0, 0, 0], [0, 0, 0]])


def naive_mean(reference: np.ndarray, times: np.ndarray, features: np.ndarray,
               tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """FORMATS.md's rule word by word: overlap, clip, drop pieces <= tolerance, average; zeros where none."""
    out = np.zeros((len(reference), features.shape[1]))
    for i, (r0, r1) in enumerate(reference):
        hit = (times[:, 0] < r1 + tolerance) & (times[:, 1] > r0 - tolerance)
        clipped = np.minimum(times[:, 1], r1) - np.maximum(times[:, 0], r0)
        keep = hit & (np.abs(clipped) > tolerance)
        if keep.any():
            out[i] = features[keep].mean(axis=0)
    return out


interval_lists = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)), min_size=0, max_size=25)


@settings(max_examples=60, deadline=None)
@given(words=interval_lists, rows_=interval_lists, back_to_back=st.booleans())
def test_vectorised_alignment_matches_the_per_word_rule(words, rows_, back_to_back) -> None:
    reference = np.array([(s / 4, (s + d) / 4) for s, d in words], dtype=np.float64).reshape(-1, 2)
    if back_to_back:  # frames as COVAREP and FACET have them: contiguous, sorted, so the fast path runs
        times = frames(len(rows_), 4.0)
    else:  # arbitrary, possibly nested intervals: the blocked fallback runs
        times = np.array([(s / 4, (s + d) / 4) for s, d in rows_], dtype=np.float64).reshape(-1, 2)
    features = np.arange(len(times) * 2, dtype=np.float32).reshape(-1, 2)
    track, _ = clean_track(times, features)
    np.testing.assert_allclose(overlap_mean(reference, track), naive_mean(reference, times, features), rtol=1e-5)


GITHUB_TOLERANCE = 1e-5  # the SDK's GitHub code since December 2019; the default is the pip release's 1e-3


@pytest.mark.parametrize("tolerance, mean", [(DEFAULT_TOLERANCE, 2.0), (GITHUB_TOLERANCE, 5.0)])
def test_a_half_millisecond_overlap_counts_under_the_github_tolerance_only(tolerance: float, mean: float) -> None:
    times = intervals((-0.5, 1.0005), (1.0005, 2.0))  # the first frame overlaps the word [1, 2] by 0.5 ms
    track, _ = clean_track(times, np.array([[8.0], [2.0]], np.float32), tolerance)
    np.testing.assert_allclose(overlap_mean(intervals((1.0, 2.0)), track, tolerance), [[mean]])
    np.testing.assert_allclose(naive_mean(intervals((1.0, 2.0)), times, np.array([[8.0], [2.0]]), tolerance), [[mean]])


@pytest.mark.parametrize("flag, mean", [([], 2.0), (["--tolerance", "1e-5"], 5.0)])
def test_the_tolerance_option_reaches_the_cache(tmp_path: Path, flag: list[str], mean: float) -> None:
    """A COVAREP frame overlapping the validation word [0, 1] by 0.5 ms: averaged in with 1e-5 only."""
    videos = mosi_videos()
    videos["audio"][VALID] = (rows([8, 2], 74), intervals((-0.5, 0.0005), (0.0005, 1.0)))
    write_mosi(tmp_path, videos)
    result = CliRunner().invoke(app, ["preprocess", "--dataset", "mosi", "--source", "mmsdk", "--data-root",
                                      str(tmp_path), *flag])
    assert result.exit_code == 0, result.output
    cache = load(tmp_path / "cache" / "mosi-aligned.h5")
    np.testing.assert_allclose(cache["valid"]["audio"][0, 0], mean + AUDIO_COLUMNS / 1000, rtol=1e-6)
    with h5py.File(tmp_path / "cache" / "mosi-aligned.h5", "r") as handle:
        tolerance = json.loads(handle.attrs["provenance"])["overlap_tolerance"]
    assert tolerance == (1e-5 if flag else DEFAULT_TOLERANCE)


def test_segment_rows_on_nested_intervals_keeps_time_order() -> None:
    track, _ = clean_track(intervals((1, 2), (0, 3), (0.5, 1)), np.array([[3], [1], [2]], np.float32))
    out, found = segment_rows(intervals((0, 1.5)), track, 4)
    np.testing.assert_array_equal(found, [3])
    np.testing.assert_array_equal(out[0, :, 0], [1, 2, 3, 0])


def test_standard_folds_are_the_published_sizes() -> None:
    assert {s: len(v) for s, v in FOLDS.items()} == {"train": 52, "valid": 10, "test": 31}
    assert {s: len(v) for s, v in standard_folds("mosei").items()} == {"train": 2249, "valid": 300, "test": 678}


def break_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda folder: break_truncate(folder / FILES["audio"][1]), "not a readable HDF5 file"),
    (lambda folder: write_csd(folder / FILES["vision"][1], "Facet", mosi_videos()["vision"], metadata=False),
     "missing group Facet/metadata"),
    (lambda folder: write_csd(folder / FILES["labels"][1], "Labels", {}, data_group=False), "missing group Labels/data"),
    (lambda folder: write_csd(folder / FILES["audio"][1], "COVAREP", {TRAIN1: (rows([1], 40), intervals((0, 1)))}),
     "have 40 columns"),
    (lambda folder: (folder / FILES["text"][1]).unlink(), "not found"),
])
def test_damaged_inputs_are_bad_input_and_write_no_cache(tmp_path: Path, damage, message: str) -> None:
    folder = write_mosi(tmp_path)
    damage(folder)
    with pytest.raises(BadInput, match=message):
        preprocess("mosi", data_root=tmp_path, source="mmsdk")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_wrong_width_without_a_column_subset_is_bad_input(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "mosei"
    names = {"text": "CMU_MOSEI_TimestampedWordVectors.csd", "audio": "CMU_MOSEI_COVAREP.csd",
             "vision": "CMU_MOSEI_VisualFacet42.csd", "labels": "CMU_MOSEI_Labels.csd"}
    video = standard_folds("mosei")["train"][0]
    widths = {"text": 3, "audio": 74, "vision": 36, "labels": 7}  # FACET 4.2 has 35
    for role, name in names.items():
        write_csd(folder / name, role, {video: (np.zeros((1, widths[role]), np.float32), intervals((0, 1)))})
    with pytest.raises(BadInput, match="vision features have 36 columns, expected 35"):
        preprocess("mosei", data_root=tmp_path, source="mmsdk")


def test_labels_outside_the_range_are_bad_input(tmp_path: Path) -> None:
    videos = mosi_videos()
    videos["labels"][VALID] = (np.array([[4.0]], np.float32), intervals((0, 1)))
    write_mosi(tmp_path, videos)
    with pytest.raises(BadInput, match="outside"):
        preprocess("mosi", data_root=tmp_path, source="mmsdk")
