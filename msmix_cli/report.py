"""Turning metric dicts into Rich tables, JSON and CSV. Formatting only: `metrics.py` computes the values.

Files keep raw values (accuracies in [0, 1]); tables show accuracies and F1 as percentages, as papers do.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from rich.table import Table

DISPLAY_NAMES: dict[str, str] = {
    "Has0_acc_2": "Acc-2 (has-0)",
    "Has0_F1_score": "F1 (has-0)",
    "Non0_acc_2": "Acc-2 (non-0)",
    "Non0_F1_score": "F1 (non-0)",
    "Mult_acc_2": "Acc-2",
    "Mult_acc_3": "Acc-3",
    "Mult_acc_5": "Acc-5",
    "Mult_acc_7": "Acc-7",
    "F1_score": "F1",
    "MAE": "MAE",
    "Corr": "Corr",
}

# What a reader looks at first, in this order: a figure's panels, and the columns a narrow terminal keeps.
READING_ORDER = ("MAE", "Corr", "Non0_acc_2", "Mult_acc_2", "Mult_acc_7", "Mult_acc_3", "Non0_F1_score", "F1_score")

# MAE and Corr are not fractions of samples, so they stay raw; every other known metric is one.
_RAW_METRICS = frozenset({"MAE", "Corr"})
_PERCENT_METRICS = frozenset(DISPLAY_NAMES) - _RAW_METRICS

MetricCell = float | tuple[float, float] | None


def display_name(name: str) -> str:
    return DISPLAY_NAMES.get(name, name)


def is_percentage(name: str) -> bool:
    return name in _PERCENT_METRICS


def column_header(name: str) -> str:
    return f"{display_name(name)} %" if is_percentage(name) else display_name(name)


def format_metric(name: str, value: float | None) -> str:
    """'77.99' for an accuracy or F1 of 0.7799, '0.7312' for MAE or Corr, 'n/a' for a missing or NaN value."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value * 100:.2f}" if is_percentage(name) else f"{value:.4f}"


def format_mean_std(name: str, mean: float | None, std: float | None) -> str:
    """'77.99 ± 1.20'; the mean alone when the spread is unknown (a single run has no std)."""
    if std is None or math.isnan(std):
        return format_metric(name, mean)
    return f"{format_metric(name, mean)} ± {format_metric(name, std)}"


def format_cell(name: str, value: MetricCell) -> str:
    if isinstance(value, tuple):
        return format_mean_std(name, *value)
    return format_metric(name, value)


def metrics_table(metrics: Mapping[str, float], title: str, caption: str | None = None) -> Table:
    """One row of metrics, one column each, in the dict's order."""
    table = Table(title=title, caption=caption)
    for name in metrics:
        table.add_column(column_header(name), justify="right", overflow="fold")
    table.add_row(*(format_metric(name, value) for name, value in metrics.items()))
    return table


def comparison_table(
    rows: Sequence[Mapping[str, Any]],
    metric_names: Sequence[str],
    title: str,
    label_columns: Sequence[str],
    caption: str | None = None,
) -> Table:
    """One row per run or variant: its label columns, then each metric, then any other keys as text.

    A metric is a float or a (mean, std) pair, already aggregated by the caller; a missing one shows 'n/a'.
    """
    extra_columns = [key for key in _keys_in_order(rows) if key not in label_columns and key not in metric_names]
    # Folded, never cut: on a narrow terminal a cell wraps, so no number or run name loses its last digits to "…"
    table = Table(title=title, caption=caption)
    for column in label_columns:
        table.add_column(column, overflow="fold")
    for name in metric_names:
        table.add_column(column_header(name), justify="right", overflow="fold")
    for column in extra_columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            *(_text(row.get(column)) for column in label_columns),
            *(format_cell(name, row.get(name)) for name in metric_names),
            *(_text(row.get(column)) for column in extra_columns),
        )
    return table


def drop_to_fit(table: Table, metric_names: Sequence[str], fits: Callable[[Table], bool]) -> list[str]:
    """Leave out metric columns of `table`, the least read first (READING_ORDER), until `fits(table)`; the most
    read one always stays. Returns the display names left out."""
    unread = len(READING_ORDER)
    order = sorted(metric_names, key=lambda n: READING_ORDER.index(n) if n in READING_ORDER else unread, reverse=True)
    dropped: list[str] = []
    for name in order[:-1]:
        if fits(table):
            break
        index = next(i for i, column in enumerate(table.columns) if column.header == column_header(name))
        table.columns.pop(index)
        dropped.append(display_name(name))
    return dropped


def to_json(obj: Any) -> str:
    """Strict JSON (indent 2): NaN and ±inf become null, numpy scalars and arrays become plain values."""
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False)


def to_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """CSV with every key of every row as a column (first-seen order); NaN and None are empty cells.

    Floats are written with repr, so reading a cell back with float() gives the same value.
    """
    if not rows:
        return ""
    header = _keys_in_order(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(row.get(key)) for key in header])
    return buffer.getvalue()


def _keys_in_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if is_numpy(value):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def is_numpy(value: object) -> bool:
    """A NumPy array or scalar. Without NumPy loaded nothing can be one, so the help and the tables never import it."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic))


def _csv_cell(value: object) -> str:
    if is_numpy(value):
        value = value.tolist()  # type: ignore[attr-defined]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)
