"""Regression metrics for multimodal sentiment analysis, computed exactly as MMSA's `MetricsTop` does.

Pure functions of numpy arrays returning raw floats (not ×100, not rounded); `report.py` formats them.
Inputs are taken at float32, the precision MMSA evaluates at: a label stored as float32 0.1 must fall in
the same CH-SIMS bin here as in MMSA, which holds only when the bin edges are float32 too.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import f1_score

from msmix_cli.errors import BadInput

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    # MOSI and MOSEI share this set (labels in [-3, 3]).
    "mosi": ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"),
    # CH-SIMS (labels in [-1, 1]).
    "sims": ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"),
}

# MAE is what MMSA-style training selects checkpoints on, and it is defined for every metric set.
KEY_METRIC: dict[str, str] = {metric_set: "MAE" for metric_set in METRIC_NAMES}

HIGHER_IS_BETTER: dict[str, bool] = {
    name: name != "MAE" for names in METRIC_NAMES.values() for name in names
}

# CH-SIMS bins are lower-exclusive, upper-inclusive; -1.01 and 1.01 bound the clipped range [-1, 1].
_SIMS_EDGES: dict[int, np.ndarray] = {
    2: np.array([-1.01, 0.0, 1.01], dtype=np.float32),
    3: np.array([-1.01, -0.1, 0.1, 1.01], dtype=np.float32),
    5: np.array([-1.01, -0.7, -0.1, 0.1, 0.7, 1.01], dtype=np.float32),
}


def regression_metrics(pred: ArrayLike, label: ArrayLike, metric_set: str) -> dict[str, float]:
    """MMSA's metrics of `pred` against `label`, keyed and ordered as `METRIC_NAMES[metric_set]`."""
    if metric_set not in METRIC_NAMES:
        raise BadInput(f"unknown metric set {metric_set!r}; choose one of: {', '.join(METRIC_NAMES)}")
    p, t = _checked_pair(pred, label)
    metrics = _mosi_metrics(p, t) if metric_set == "mosi" else _sims_metrics(p, t)
    return {name: metrics[name] for name in METRIC_NAMES[metric_set]}


def _checked_pair(pred: ArrayLike, label: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_vector(pred, "predictions"), _as_vector(label, "labels")
    if p.shape != t.shape:
        raise BadInput(f"predictions and labels differ in length: {p.shape[0]} vs {t.shape[0]}")
    if p.size == 0:
        raise BadInput("cannot compute metrics on an empty set of predictions")
    return p, t


def _as_vector(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == 1:  # a regression head's [N, 1] output
        array = array[:, 0]
    if array.ndim != 1:
        raise BadInput(f"{what} must be a vector of shape [N] or [N, 1], got shape {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise BadInput(f"{what} contain NaN or infinite values")
    return array


def _mosi_metrics(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    non_zero = t != 0  # -0.0 == 0, so negative zeros are dropped as well
    has0_true, has0_pred = t >= 0, p >= 0
    non0_true, non0_pred = t[non_zero] > 0, p[non_zero] > 0
    return {
        "Has0_acc_2": _accuracy(has0_pred, has0_true),
        "Has0_F1_score": _weighted_f1(has0_true, has0_pred),
        # MMSA fails outright when every label is 0; there is no class to score, so say so with NaN.
        "Non0_acc_2": _accuracy(non0_pred, non0_true) if non_zero.any() else float("nan"),
        "Non0_F1_score": _weighted_f1(non0_true, non0_pred) if non_zero.any() else float("nan"),
        "Mult_acc_5": _rounded_class_accuracy(p, t, bound=2.0),
        "Mult_acc_7": _rounded_class_accuracy(p, t, bound=3.0),
        "MAE": _mean_absolute_error(p, t),
        "Corr": _pearson(p, t),
    }


def _sims_metrics(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    p, t = np.clip(p, np.float32(-1), np.float32(1)), np.clip(t, np.float32(-1), np.float32(1))
    two_pred, two_true = _sims_bins(p, 2), _sims_bins(t, 2)
    return {
        "Mult_acc_2": _accuracy(two_pred, two_true),
        "Mult_acc_3": _accuracy(_sims_bins(p, 3), _sims_bins(t, 3)),
        "Mult_acc_5": _accuracy(_sims_bins(p, 5), _sims_bins(t, 5)),
        "F1_score": _weighted_f1(two_true, two_pred),
        "MAE": _mean_absolute_error(p, t),
        "Corr": _pearson(p, t),
    }


def _sims_bins(values: np.ndarray, classes: int) -> np.ndarray:
    # side="left" puts a value equal to an edge in the bin below it: (lower, upper].
    return np.searchsorted(_SIMS_EDGES[classes], values, side="left") - 1


def _rounded_class_accuracy(p: np.ndarray, t: np.ndarray, bound: float) -> float:
    # np.round rounds half to even (2.5 -> 2, -0.5 -> -0), as MMSA's np.round does.
    low, high = np.float32(-bound), np.float32(bound)
    return _accuracy(np.round(np.clip(p, low, high)), np.round(np.clip(t, low, high)))


def _accuracy(pred_classes: np.ndarray, true_classes: np.ndarray) -> float:
    return float(np.mean(pred_classes == true_classes))


def _weighted_f1(true_classes: np.ndarray, pred_classes: np.ndarray) -> float:
    # Some scikit-learn releases warn when a class is never predicted; its F1 is 0 either way.
    return float(f1_score(true_classes, pred_classes, average="weighted", zero_division=0))


def _mean_absolute_error(p: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean(np.abs(p.astype(np.float64) - t.astype(np.float64))))


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    # A constant vector has no correlation: NaN, as np.corrcoef gives, without its divide-by-zero warning.
    if np.all(p == p[0]) or np.all(t == t[0]):
        return float("nan")
    return float(np.corrcoef(p.astype(np.float64), t.astype(np.float64))[0, 1])
