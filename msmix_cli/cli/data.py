"""`msmix download` and `msmix preprocess`: parse, call one library function, render."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID,
                           TextColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table

from msmix_cli.cli.app import app, err, out, reports_errors
from msmix_cli.data.download import DownloadReport, HttpSettings, download
from msmix_cli.data.inspect import Entry, Inspection, inspect_file
from msmix_cli.data.loading import data_root_default
from msmix_cli.data.preprocess import PreprocessReport, preprocess
from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput
from msmix_cli.report import to_json

PUBLISHED = ", ".join(name for name in DATASETS if DATASETS.get(name).sources)
DATA_ROOT_HELP = "Data folder (default $MSMIX_DATA_ROOT or ./data)."


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class NamedBars:
    """One Rich bar per name (a file, a stage), created on its first report. Use as a context manager."""

    def __init__(self, console: Console, *columns: ProgressColumn, transient: bool = False) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), *columns, console=console,
                                 transient=transient)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> NamedBars:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)


@app.command("download")
@reports_errors
def download_command(
    dataset: str = typer.Option(..., help=f"Dataset: {PUBLISHED}."),
    source: Optional[str] = typer.Option(
        None, help="mmsa (MMSA's feature pickles, imported with --from) or mmsdk (the CMU SDK's .csd files, "
                   "downloaded). Default: mmsa; with --from, every source's files are looked for."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    from_path: Optional[Path] = typer.Option(
        None, "--from", help="A file or folder you fetched by hand (e.g. MMSA's Google Drive folder): the listed "
                             "files found there are copied into place and checked."),
    link: bool = typer.Option(False, "--link", help="With --from: hard-link instead of copying (same disk only)."),
    mirror: Optional[str] = typer.Option(None, help="A base URL serving the same paths as the SDK's host."),
    retries: int = typer.Option(4, min=0, help="Attempts after the first, with a doubling pause between them."),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds a connection or a read may stall."),
) -> None:
    """Fetch a dataset's published files into <data-root>/raw/<dataset>/, resuming and verifying them."""
    http = HttpSettings(timeout=timeout, retries=retries, mirror=mirror)
    with NamedBars(err, DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()) as progress:
        report = download(dataset, source, data_root=data_root or data_root_default(), from_path=from_path,
                          link=link, http=http, progress=progress)
    out.print(download_table(report))


@app.command("preprocess")
@reports_errors
def preprocess_command(
    dataset: Optional[str] = typer.Option(None, help=f"Dataset: {PUBLISHED}."),
    source: Optional[str] = typer.Option(None, help="mmsa (feature pickles, default) or mmsdk (.csd files)."),
    setting: Optional[str] = typer.Option(None, help="aligned or unaligned (default: the dataset's first)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    normalize: bool = typer.Option(False, "--normalize", help="Standardise features with training-split statistics."),
    inspect: Optional[Path] = typer.Option(None, "--inspect", metavar="FILE",
                                           help="Describe a pickle, .csd or cache file instead of preprocessing."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="How to print the result."),
) -> None:
    """Turn a dataset's raw files into the cache `train` reads (<data-root>/cache/<dataset>-<setting>.h5)."""
    if inspect is not None:
        inspection = inspect_file(inspect)
        if output is OutputFormat.json:
            print(to_json(asdict(inspection)))
        else:
            render_inspection(inspection)
        return
    if dataset is None:
        raise BadInput("give --dataset (or --inspect FILE)")
    with NamedBars(err, MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as progress:
        report = preprocess(dataset, data_root=data_root or data_root_default(), source=source, setting=setting,
                            normalize=normalize, progress=progress)
    if output is OutputFormat.json:
        print(to_json(asdict(report)))
    else:
        render_preprocess(report)


def download_table(report: DownloadReport) -> Table:
    table = Table(title=f"{report.dataset}: {escape(str(report.folder))}", title_justify="left")
    for column in ("file", "status", "SHA-256", "detail"):
        table.add_column(column)
    for file in report.files:
        checked = "[green]verified[/]" if file.verified else "[dim]none published[/]"
        table.add_row(file.name, file.status, checked, escape(file.detail))
    return table


def render_preprocess(report: PreprocessReport) -> None:
    table = Table(title=f"{report.dataset} {report.setting} from {report.source}: {escape(str(report.cache))}", title_justify="left")
    for column in ("split", "samples", *(f"{m} (L, D)" for m in report.shape)):
        table.add_column(column, justify="right")
    for split, count in report.samples.items():
        table.add_row(split, str(count), *(f"{length}, {dim}" for length, dim in report.shape.values()))
    out.print(table)
    for note in report.notes:
        err.print(f"[dim]note:[/] {escape(note)}", highlight=False)


def render_inspection(inspection: Inspection) -> None:
    out.print(f"[bold]{escape(str(inspection.path))}[/] ({inspection.kind})", highlight=False)  # a file's names and keys are its own text, not markup
    for key, value in inspection.summary.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out.print(f"  [dim]{escape(key)}:[/] {escape(text[:200])}", highlight=False, soft_wrap=True)
    table = Table()
    for column in ("key", "shape", "dtype", "NaN", "inf", "range", "len min/mean/max"):
        table.add_column(column, justify="left" if column in ("key", "dtype") else "right",
                         no_wrap=column in ("key", "shape"))
    for entry in inspection.entries:
        table.add_row(*_entry_cells(entry))
    out.print(table)


def _entry_cells(entry: Entry) -> tuple[str, ...]:
    value_range = f"{entry.value_range[0]:.4g} .. {entry.value_range[1]:.4g}" if entry.value_range else ""
    lengths = "/".join(f"{entry.lengths[k]:g}" for k in ("min", "mean", "max")) if entry.lengths else ""
    return (escape(entry.key), "×".join(map(str, entry.shape)) or "()", entry.dtype,
            "" if entry.nan is None else str(entry.nan), "" if entry.inf is None else str(entry.inf), value_range, lengths)
