"""`msmix download` and `msmix preprocess`: parse, call one library function, render."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, ProgressColumn, TaskID,
                           TextColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table

from msmix_cli.cli.app import app, err, out, print_table, reports_errors
from msmix_cli.cli.progress import live_bars
from msmix_cli.data.specs import DATASETS, DEFAULT_TOLERANCE, data_root_default
from msmix_cli.errors import BadInput
from msmix_cli.report import to_json

if TYPE_CHECKING:
    from msmix_cli.data.download import DownloadReport
    from msmix_cli.data.inspect import Entry, Inspection
    from msmix_cli.data.preprocess import PreprocessReport

# The readers (h5py, NumPy) are imported when a command runs, so that `--help` answers at once.

PUBLISHED = ", ".join(name for name in DATASETS if DATASETS.get(name).sources)
DATA_ROOT_HELP = "Data folder (default $MSMIX_DATA_ROOT or ./data)."
TOLERANCE_HELP = (f"Seconds an overlap of two .csd intervals must exceed to count. Default {DEFAULT_TOLERANCE:g}: the "
                  "value of the CMU SDK release pip installs (0.0.6), so msmix aligns as that SDK does; 1e-5 is "
                  "the SDK's GitHub code since 2019-12.")


def parse_features(assignments: list[str]) -> dict[str, Path]:
    """`["audio=covarep.csd"]` -> {"audio": Path("covarep.csd")}; a role given twice is an error."""
    features: dict[str, Path] = {}
    for assignment in assignments:
        role, sep, file = assignment.partition("=")
        role = role.strip()
        if not sep or not role or not file:
            raise BadInput(f"--features expects ROLE=FILE (e.g. audio=my_covarep.csd), got {assignment!r}")
        if role in features:
            raise BadInput(f"--features names {role} twice")
        features[role] = Path(file)
    return features


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class NamedBars:
    """One Rich bar per name (a file, a stage), created on its first report. Use as a context manager."""

    def __init__(self, console: Console, *columns: ProgressColumn, transient: bool = False) -> None:
        self.progress = live_bars(console, TextColumn("[bold]{task.description}"), BarColumn(), *columns,
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
    features: list[str] = typer.Option(
        [], "--features", metavar="ROLE=FILE",
        help="With --from: import FILE (relative to the --from folder) as the file of ROLE when it has another "
             "name, e.g. audio=covarep.csd. Roles: text, audio, vision, labels (.csd); aligned, unaligned "
             "(pickles); label_csv. Repeatable; the table names the file each role expects."),
    mirror: Optional[str] = typer.Option(None, help="A base URL serving the same paths as the SDK's host."),
    retries: int = typer.Option(4, min=0, help="Attempts after the first, with a doubling pause between them."),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds a connection or a read may stall."),
    deadline: Optional[float] = typer.Option(None, min=0.1, help="Seconds one file's whole download may take, "
                                             "retries included (a server that trickles a byte a second never stalls)."),
) -> None:
    """Fetch a dataset's published files into <data-root>/raw/<dataset>/, resuming and verifying them.

    Example: msmix download --dataset mosi --from ~/Downloads/MOSI   (MMSA's pickles, fetched by hand)

    Example: msmix download --dataset mosi --source mmsdk   (the CMU SDK's .csd files, over HTTP)

    Example: msmix download --dataset mosi --source mmsdk --from ~/csd --features audio=covarep.csd
    """
    from msmix_cli.data.download import HttpSettings, download

    http = HttpSettings(timeout=timeout, deadline=deadline, retries=retries, mirror=mirror)
    named = parse_features(features)
    with NamedBars(err, DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()) as progress:
        report = download(dataset, source, data_root=data_root or data_root_default(), from_path=from_path,
                          link=link, http=http, progress=progress, features=named)
    print_table(download_table(report))


@app.command("preprocess")
@reports_errors
def preprocess_command(
    dataset: Optional[str] = typer.Option(None, help=f"Dataset: {PUBLISHED}."),
    source: Optional[str] = typer.Option(None, help="mmsa (feature pickles, default) or mmsdk (.csd files)."),
    setting: Optional[str] = typer.Option(
        None, help="aligned or unaligned (default: the dataset's first; for --from: aligned when the three "
                   "modalities share one padded length)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    normalize: bool = typer.Option(False, "--normalize", help="Standardise features with training-split statistics."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", metavar="SECONDS", help=TOLERANCE_HELP),
    from_pickle: Optional[Path] = typer.Option(
        None, "--from", metavar="FILE.pkl",
        help="Import your own MMSA-layout pickle (any widths and lengths) as dataset --name."),
    csd: Optional[Path] = typer.Option(
        None, "--csd", metavar="DIR", help="Import .csd files from DIR as dataset --name (see --features, --like)."),
    name: Optional[str] = typer.Option(None, help="The name an import gets: train it with --dataset NAME."),
    features: list[str] = typer.Option(
        [], "--features", metavar="ROLE=FILE",
        help="With --csd: FILE (in DIR) is the sequence of ROLE (text, audio, vision or labels), read with all its "
             "columns; a role not given is the --like dataset's published file. Repeatable."),
    text: Optional[Path] = typer.Option(None, "--text", metavar="FILE.pkl", help="With --from: take text (and "
                                        "text_bert) from this pickle, matched by id (MMSA's feature_T)."),
    audio: Optional[Path] = typer.Option(None, "--audio", metavar="FILE.pkl", help="With --from: take audio and "
                                         "audio_lengths from this pickle (MMSA's feature_A)."),
    vision: Optional[Path] = typer.Option(None, "--vision", metavar="FILE.pkl", help="With --from: take vision and "
                                          "vision_lengths from this pickle (MMSA's feature_V)."),
    label_range: Optional[float] = typer.Option(
        None, "--label-range", metavar="R", help="An import's labels lie in [-R, R] (default: 1 when every label "
                                                 "does, else 3, for --from; the --like dataset's for --csd)."),
    like: Optional[str] = typer.Option(
        None, help="The published dataset whose recipes and metrics an import uses (default: sims for labels "
                   "in [-1, 1], else mosi); with --csd also its folds and lengths (mosi or mosei)."),
    inspect: Optional[Path] = typer.Option(None, "--inspect", metavar="FILE",
                                           help="Describe a pickle, .csd or cache file instead of preprocessing."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="How to print the result."),
) -> None:
    """Turn a dataset's raw files into the cache `train` reads (<data-root>/cache/<dataset>-<setting>.h5).

    Example: msmix preprocess --dataset mosi   (after msmix download --dataset mosi ...)

    Example: msmix preprocess --from my_features.pkl --name myfeats, then msmix train --dataset myfeats
    """
    if inspect is not None:
        from msmix_cli.data.inspect import inspect_file

        inspection = inspect_file(inspect)
        if output is OutputFormat.json:
            print(to_json(asdict(inspection)))
        else:
            render_inspection(inspection)
        return
    root = data_root or data_root_default()
    replace = {m: path for m, path in (("text", text), ("audio", audio), ("vision", vision)) if path is not None}
    given = {"--name": name is not None, "--like": like is not None, "--label-range": label_range is not None,
             "--text": text is not None, "--audio": audio is not None, "--vision": vision is not None,
             "--features": bool(features), "--tolerance": tolerance is not None}
    check_import_options(dataset, source, from_pickle, csd, name, given)
    overlap = DEFAULT_TOLERANCE if tolerance is None else tolerance
    from msmix_cli.data.imported import import_csd, import_pickle
    from msmix_cli.data.preprocess import preprocess

    with NamedBars(err, MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as progress:
        if from_pickle is not None:
            report = import_pickle(name, from_pickle, data_root=root, setting=setting, label_range=label_range,
                                   like=like, replace=replace, normalize=normalize, progress=progress)
        elif csd is not None:
            report = import_csd(name, csd, data_root=root, features=parse_features(features), setting=setting,
                                like=like or "mosi", label_range=label_range, tolerance=overlap,
                                normalize=normalize, progress=progress)
        else:
            report = preprocess(dataset, data_root=root, source=source, setting=setting, normalize=normalize,
                                tolerance=overlap, progress=progress)
    if output is OutputFormat.json:
        print(to_json(asdict(report)))
    else:
        render_preprocess(report)


def check_import_options(dataset: str | None, source: str | None, from_pickle: Path | None, csd: Path | None,
                         name: str | None, given: dict[str, bool]) -> None:
    """Which options go together: --dataset for a published dataset, or --from/--csd with --name for an import.

    `given` says which of the options that belong to one route only were given (--text, --features, ...).
    """
    if from_pickle is not None and csd is not None:
        raise BadInput("give --from FILE.pkl or --csd DIR, not both")
    importing = from_pickle is not None or csd is not None
    if importing and dataset is not None:
        raise BadInput("--dataset preprocesses a published dataset; an import gets its own --name instead")
    if importing and name is None:
        raise BadInput("give the imported dataset a --name (then: msmix train --dataset NAME)")
    if not importing and dataset is None:
        raise BadInput("give --dataset, or --from FILE.pkl / --csd DIR with --name (or --inspect FILE)")
    routes = {"--name": importing, "--like": importing, "--label-range": importing, "--text": from_pickle is not None,
              "--audio": from_pickle is not None, "--vision": from_pickle is not None, "--features": csd is not None,
              "--tolerance": csd is not None or source == "mmsdk"}
    for flag, allowed in routes.items():
        if given[flag] and not allowed:
            raise BadInput(f"{flag} does not apply here: {IMPORT_FLAGS_HELP[flag]}")


IMPORT_FLAGS_HELP = {
    "--name": "it names an import (--from FILE.pkl or --csd DIR)", "--like": "it applies to an import",
    "--label-range": "it applies to an import; a published dataset's range is fixed",
    "--text": "it replaces a modality of the pickle given with --from", "--audio": "it replaces a modality of "
    "the pickle given with --from", "--vision": "it replaces a modality of the pickle given with --from",
    "--features": "it names the .csd files of --csd DIR", "--tolerance": "it applies to .csd alignment "
    "(--csd DIR or --source mmsdk)",
}


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
    print_table(table)
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
    print_table(table)


def _entry_cells(entry: Entry) -> tuple[str, ...]:
    value_range = f"{entry.value_range[0]:.4g} .. {entry.value_range[1]:.4g}" if entry.value_range else ""
    lengths = "/".join(f"{entry.lengths[k]:g}" for k in ("min", "mean", "max")) if entry.lengths else ""
    return (escape(entry.key), "×".join(map(str, entry.shape)) or "()", entry.dtype,
            "" if entry.nan is None else str(entry.nan), "" if entry.inf is None else str(entry.inf), value_range, lengths)
