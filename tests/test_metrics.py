"""msmix's metrics against MMSA's own outputs (golden cases) and against small cases worked by hand."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msmix_cli.errors import BadInput
from msmix_cli.metrics import HIGHER_IS_BETTER, KEY_METRIC, METRIC_NAMES, regression_metrics

# MMSA's own outputs on 24 cases (a copy of the project's shared/golden/metrics.json, so that CI always runs them).
GOLDEN = Path(__file__).resolve().parent / "golden" / "mmsa_metrics.json"
METRIC_SET_OF_DATASET = {"mosi": "mosi", "mosei": "mosi", "sims": "sims"}


def _golden_params() -> list:
    if not GOLDEN.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{GOLDEN} not found"), id="golden-missing")]
    cases = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]
    return [pytest.param(case, id=f"{i:02d}-{case['dataset']}") for i, case in enumerate(cases)]


GOLDEN_PARAMS = _golden_params()


@pytest.mark.skipif(not GOLDEN.is_file(), reason=f"{GOLDEN} not found")
def test_golden_file_holds_all_24_cases() -> None:
    assert len(GOLDEN_PARAMS) == 24


@pytest.mark.parametrize("case", GOLDEN_PARAMS)
def test_matches_mmsa_on_golden_case(case: dict) -> None:
    metric_set = METRIC_SET_OF_DATASET[case["dataset"]]
    result = regression_metrics(np.array(case["pred"]), np.array(case["label"]), metric_set)
    assert list(result) == list(case["expected"])
    for name, expected in case["expected"].items():
        assert result[name] == pytest.approx(expected, abs=1e-4), name


def test_keys_follow_metric_names_and_values_are_raw_floats() -> None:
    for metric_set, names in METRIC_NAMES.items():
        result = regression_metrics([0.3, -0.6, 0.9, -0.2], [0.5, -0.4, 0.8, 0.1], metric_set)
        assert tuple(result) == names
        assert all(type(value) is float for value in result.values())
        assert all(0.0 <= result[name] <= 1.0 for name in names if name != "Corr")


def test_metric_name_order_is_mmsa_order() -> None:
    assert METRIC_NAMES["mosi"] == (
        "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
    )
    assert METRIC_NAMES["sims"] == ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")


def test_only_mae_is_lower_is_better_and_it_is_the_key_metric() -> None:
    every_name = {name for names in METRIC_NAMES.values() for name in names}
    assert set(HIGHER_IS_BETTER) == every_name
    assert [name for name, higher in HIGHER_IS_BETTER.items() if not higher] == ["MAE"]
    assert KEY_METRIC == {"mosi": "MAE", "sims": "MAE"}


def test_half_ties_round_to_even() -> None:
    # 2.5 -> 2 and -0.5 -> -0 (== 0) match their labels; 0.5 -> 0 misses label 1. Half-away-from-zero gives 0.25.
    result = regression_metrics([2.5, -0.5, 1.5, 0.5], [2.0, 0.0, 2.0, 1.0], "mosi")
    assert result["Mult_acc_7"] == 0.75
    assert result["Mult_acc_5"] == 0.75


def test_zero_labels_count_as_non_negative_for_has0_and_are_dropped_for_non0() -> None:
    result = regression_metrics([-0.2, 0.3, 0.5, 0.4], [0.0, -0.0, 1.0, -1.0], "mosi")
    # Has0: truth >=0 [T, T, T, F], preds >=0 [F, T, T, T]
    assert result["Has0_acc_2"] == 0.5
    assert result["Has0_F1_score"] == pytest.approx(0.75 * 2 / 3)  # class T: P = R = 2/3; class F: 0
    # Non0 keeps samples 2 and 3 only (both zeros, -0.0 included, are gone): truth [T, F], preds [T, T]
    assert result["Non0_acc_2"] == 0.5
    assert result["Non0_F1_score"] == pytest.approx(0.5 * 2 / 3)


def test_zero_predictions_are_positive_for_has0_and_negative_for_non0() -> None:
    result = regression_metrics([0.0, -0.0], [1.0, 1.0], "mosi")
    assert result["Has0_acc_2"] == 1.0
    assert result["Non0_acc_2"] == 0.0


def test_non0_metrics_are_nan_when_every_label_is_zero() -> None:
    result = regression_metrics([0.4, -0.3], [0.0, -0.0], "mosi")
    assert math.isnan(result["Non0_acc_2"]) and math.isnan(result["Non0_F1_score"])
    assert result["Has0_acc_2"] == 0.5


def test_mosi_clips_classes_but_not_mae() -> None:
    result = regression_metrics([4.0, -7.0, 2.4], [3.0, -3.0, 3.0], "mosi")
    assert result["Mult_acc_7"] == pytest.approx(2 / 3)  # 4 -> 3 and -7 -> -3 match; 2.4 -> 2 misses 3
    assert result["Mult_acc_5"] == 1.0  # everything clips to ±2
    assert result["MAE"] == pytest.approx((1.0 + 4.0 + 0.6) / 3, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sims_bins_are_lower_exclusive_upper_inclusive(dtype: type) -> None:
    pred = np.array([-0.1, 0.1, 0.7, -0.7, 0.0], dtype=dtype)
    label = np.array([-0.5, 0.0, 0.5, -0.9, -0.05], dtype=dtype)
    result = regression_metrics(pred, label, "sims")
    # Each edge value shares its bin with the label just below it, except 0.1 vs 0.0 across the 2-class edge 0.
    assert result["Mult_acc_3"] == 1.0
    assert result["Mult_acc_5"] == 1.0
    assert result["Mult_acc_2"] == 0.8


def test_sims_edge_stored_as_float32_then_widened_stays_on_the_edge() -> None:
    # A float32 label of 0.1 read back as float64 is 0.10000000149...; MMSA (in float32) bins it as 0.1.
    widened = float(np.float32(0.1))
    result = regression_metrics([widened, -widened], [0.0, -0.5], "sims")
    assert result["Mult_acc_3"] == 1.0


def test_sims_clips_to_unit_range_before_every_metric() -> None:
    result = regression_metrics([1.8, -3.0, 0.5], [1.0, -1.0, 0.5], "sims")
    assert result["MAE"] == 0.0
    assert result["Corr"] == pytest.approx(1.0)
    assert result["Mult_acc_5"] == 1.0


@pytest.mark.parametrize("metric_set", sorted(METRIC_NAMES))
def test_constant_predictions_give_nan_corr_without_warning(metric_set: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = regression_metrics([0.2, 0.2, 0.2], [0.5, -0.5, 0.1], metric_set)
    assert math.isnan(result["Corr"])


def test_column_vector_predictions_are_accepted() -> None:
    flat = regression_metrics([0.3, -0.6, 0.9], [0.5, -0.4, 0.8], "mosi")
    column = regression_metrics(np.array([[0.3], [-0.6], [0.9]]), [0.5, -0.4, 0.8], "mosi")
    assert column == flat


@pytest.mark.parametrize(
    ("pred", "label", "metric_set", "message"),
    [
        ([0.1, 0.2], [0.1, 0.2], "mosei", "unknown metric set"),
        ([0.1, 0.2, 0.3], [0.1, 0.2], "mosi", "differ in length"),
        ([], [], "sims", "empty"),
        ([[0.1, 0.2], [0.3, 0.4]], [0.1, 0.2, 0.3, 0.4], "mosi", "shape"),
        ([0.1, float("nan")], [0.1, 0.2], "mosi", "NaN"),
    ],
)
def test_bad_input_raises_a_one_line_error(pred: list, label: list, metric_set: str, message: str) -> None:
    with pytest.raises(BadInput, match=message) as caught:
        regression_metrics(pred, label, metric_set)
    assert "\n" not in str(caught.value)


_labels = st.lists(st.floats(-3.5, 3.5, allow_nan=False, width=32), min_size=2, max_size=40)


@settings(max_examples=40, deadline=None)
@given(values=_labels, metric_set=st.sampled_from(sorted(METRIC_NAMES)))
def test_perfect_predictions_score_perfectly(values: list[float], metric_set: str) -> None:
    result = regression_metrics(values, values, metric_set)
    assert result["MAE"] == 0.0
    for name, value in result.items():
        if name not in ("MAE", "Corr") and not math.isnan(value):
            assert value == 1.0, name


@settings(max_examples=40, deadline=None)
@given(pred=_labels, data=st.data(), metric_set=st.sampled_from(sorted(METRIC_NAMES)))
def test_sample_order_does_not_matter(pred: list[float], data: st.DataObject, metric_set: str) -> None:
    label = data.draw(st.lists(st.floats(-3.5, 3.5, allow_nan=False, width=32), min_size=len(pred), max_size=len(pred)))
    order = data.draw(st.permutations(range(len(pred))))
    original = regression_metrics(pred, label, metric_set)
    shuffled = regression_metrics([pred[i] for i in order], [label[i] for i in order], metric_set)
    assert shuffled.keys() == original.keys()
    for name in original:
        assert shuffled[name] == pytest.approx(original[name], abs=1e-6, nan_ok=True), name
