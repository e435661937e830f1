"""`msmix evaluate RUN --missing-rate ...`: the missing-modality curve, as a table, JSON or CSV, and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from msmix_cli.cli.app import err, print_table
from msmix_cli.errors import BadInput
from msmix_cli.report import READING_ORDER, comparison_table, to_csv, to_json

CURVE_METRICS = 3  # the most read metrics a table shows by default and the figure draws


def evaluate_missing_rates(paths: list[Path], *, rates: str, draws: int, seed: int, split: str, device: str,
                           data_root: Path, output: str, plot: Path, all_columns: bool) -> None:
    from msmix_cli.cli.train import complete_runs
    from msmix_cli.plots import PlotUnavailable
    from msmix_cli.training.missing import missing_rate_curve, parse_rates

    chosen = parse_rates(rates)
    if seed < 0:
        raise BadInput(f"--noise-seed must be >= 0, got {seed}")
    runs, skipped = complete_runs(paths)
    rows = [row for run in runs for row in missing_rate_curve(run, data_root=data_root, rates=chosen, draws=draws,
                                                               seed=seed, split=split, device=device)]
    for reason in skipped:
        err.print(f"[dim]skipped:[/] {escape(reason)}", highlight=False)
    names = [name for name in rows[0] if f"{name}_std" in rows[0]]
    if output == "json":
        print(to_json(rows))
    elif output == "csv":
        print(to_csv(rows), end="")
    else:
        render_table(rows, names, split, all_columns)
    from msmix_cli.curves import plot_missing_rates

    shown = [m for m in READING_ORDER if m in names][:CURVE_METRICS]
    try:
        plot_missing_rates(rows, shown, plot)
        err.print(escape(f"wrote {plot}"), highlight=False)
    except PlotUnavailable as error:
        err.print(f"[yellow]note:[/] {escape(str(error))}", highlight=False)


def render_table(rows: list[dict[str, Any]], names: list[str], split: str, all_columns: bool) -> None:
    for run in dict.fromkeys(row["run"] for row in rows):
        own = [row for row in rows if row["run"] == run]
        table_rows = [{"missing rate": f"{row['missing_rate']:g}", "draws": str(row["draws"]),
                       **{name: (row[name], row[f"{name}_std"]) for name in names}} for row in own]
        title = f"{escape(run)}: {split} metrics with each modality missing at the given rate (mean ± std over draws)"
        print_table(comparison_table(table_rows, names, title=title, label_columns=["missing rate", "draws"]), names, all_columns)
