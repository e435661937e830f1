"""Formatting of metrics: table cells, Rich tables, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from msmix_cli.metrics import METRIC_NAMES
from msmix_cli.report import (
    DISPLAY_NAMES,
    comparison_table,
    format_mean_std,
    format_metric,
    metrics_table,
    to_csv,
    to_json,
)


def rendered(table: Table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def row_of(text: str, first_cell: str) -> list[str]:
    """The cells of the rendered row whose first cell is `first_cell`."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row starting with {first_cell!r} in:\n{text}")


def test_every_metric_has_a_display_name() -> None:
    every_name = {name for names in METRIC_NAMES.values() for name in names}
    assert every_name <= set(DISPLAY_NAMES)
    assert DISPLAY_NAMES["Non0_acc_2"] == "Acc-2 (non-0)"
    assert DISPLAY_NAMES["Has0_F1_score"] == "F1 (has-0)"
    assert DISPLAY_NAMES["Mult_acc_7"] == "Acc-7"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Has0_acc_2", 0.7799, "77.99"),
        ("Non0_F1_score", 0.5, "50.00"),
        ("Mult_acc_7", 1.0, "100.00"),
        ("F1_score", 0.123456, "12.35"),
        ("MAE", 0.71234, "0.7123"),
        ("Corr", -0.5, "-0.5000"),
        ("MAE", float("nan"), "n/a"),
        ("Corr", float("nan"), "n/a"),
        ("Mult_acc_2", None, "n/a"),
        ("Non0_acc_2", np.float32(0.25), "25.00"),
    ],
)
def test_format_metric(name: str, value: float | None, expected: str) -> None:
    assert format_metric(name, value) == expected


def test_mean_std_uses_the_metric_units_and_drops_an_unknown_spread() -> None:
    assert format_mean_std("Mult_acc_5", 0.5, 0.0125) == "50.00 ± 1.25"
    assert format_mean_std("MAE", 0.7, 0.01) == "0.7000 ± 0.0100"
    assert format_mean_std("MAE", 0.7, float("nan")) == "0.7000"


def test_metrics_table_shows_one_row_with_percent_headers() -> None:
    metrics = {"Has0_acc_2": 0.7799, "Non0_acc_2": 0.8, "MAE": 0.71234, "Corr": float("nan")}
    table = metrics_table(metrics, title="test metrics", caption="best valid epoch 3")
    text = rendered(table)
    assert "test metrics" in text and "best valid epoch 3" in text
    assert [column.header for column in table.columns] == ["Acc-2 (has-0) %", "Acc-2 (non-0) %", "MAE", "Corr"]
    assert table.row_count == 1
    assert row_of(text, "77.99") == ["77.99", "80.00", "0.7123", "n/a"]


def test_comparison_table_shows_labels_metrics_and_extra_columns() -> None:
    rows = [
        {"mixer": "none", "backbone": "tfn", "Mult_acc_7": (0.4, 0.01), "MAE": (0.9, 0.02), "seeds": 3},
        {"mixer": "msmix", "backbone": "tfn", "Mult_acc_7": 0.45, "MAE": (0.85, float("nan")), "note": "best"},
        {"mixer": "mixup", "backbone": "tfn"},
    ]
    table = comparison_table(rows, ["Mult_acc_7", "MAE"], title="ablation", label_columns=["mixer", "backbone"])
    text = rendered(table)
    assert "ablation" in text
    assert [column.header for column in table.columns] == ["mixer", "backbone", "Acc-7 %", "MAE", "seeds", "note"]
    assert row_of(text, "none") == ["none", "tfn", "40.00 ± 1.00", "0.9000 ± 0.0200", "3", ""]
    assert row_of(text, "msmix") == ["msmix", "tfn", "45.00", "0.8500", "", "best"]
    assert row_of(text, "mixup") == ["mixup", "tfn", "n/a", "n/a", "", ""]


def test_to_json_writes_strict_json_with_nulls_for_non_finite_values() -> None:
    obj = {
        "metrics": {"MAE": np.float32(0.5), "Corr": float("nan"), "Acc": np.float64(0.75)},
        "epoch": np.int64(3),
        "flags": np.array([True, False]),
        "history": np.array([[1.5, np.inf], [-np.inf, 2.0]]),
        "seeds": (1, 2),
        "run_dir": Path("runs") / "a",
    }
    text = to_json(obj)
    assert text.startswith('{\n  "metrics": {\n    "MAE": 0.5')
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "metrics": {"MAE": 0.5, "Corr": None, "Acc": 0.75},
        "epoch": 3,
        "flags": [True, False],
        "history": [[1.5, None], [None, 2.0]],
        "seeds": [1, 2],
        "run_dir": str(Path("runs") / "a"),
    }


def test_to_csv_unions_keys_in_first_seen_order_and_empties_nan() -> None:
    rows = [
        {"split": "test", "MAE": 0.1, "Corr": float("nan")},
        {"split": "valid", "Acc": np.float64(0.5), "MAE": None},
    ]
    assert to_csv(rows) == "split,MAE,Corr,Acc\ntest,0.1,,\nvalid,,,0.5\n"


def test_to_csv_floats_round_trip_exactly() -> None:
    values = [1 / 3, 0.1 + 0.2, 1e-17, 123456789.123456789, float(np.float32(0.1)), -2.5e300]
    text = to_csv([{f"v{i}": value for i, value in enumerate(values)}, {"v0": np.float32(0.7)}])
    records = list(csv.DictReader(io.StringIO(text)))
    assert [float(records[0][f"v{i}"]) for i in range(len(values))] == values
    assert float(records[1]["v0"]) == float(np.float32(0.7))


def test_to_csv_quotes_cells_that_hold_commas() -> None:
    text = to_csv([{"recipe": "a,b", "seed": 1}])
    assert list(csv.reader(io.StringIO(text))) == [["recipe", "seed"], ["a,b", "1"]]


def test_to_csv_of_no_rows_is_empty() -> None:
    assert to_csv([]) == ""
