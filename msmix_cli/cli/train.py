"""`msmix train` and `msmix evaluate`: parse, call one library function, render."""

from __future__ import annotations

import functools
import os
import shlex
import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

import typer
from rich.markup import escape

from msmix_cli.cli.app import app, err, out, print_table, reports_errors
from msmix_cli.data.specs import DATASETS, data_root_default
from msmix_cli.errors import BadInput
from msmix_cli.naming import MIX_PARTS, mix_label
from msmix_cli.report import comparison_table, metrics_table, to_csv, to_json

if TYPE_CHECKING:
    from msmix_cli.recipes import Recipe
    from msmix_cli.tracking import Tracking
    from msmix_cli.training.rundir import RunDir

# torch and the training modules are imported inside the commands: `--help` and a mistyped option must answer at
# once, not after the seconds torch takes to load.

F = TypeVar("F", bound=Callable)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Tracker(str, Enum):
    tensorboard = "tensorboard"
    mlflow = "mlflow"


class Columns(str, Enum):
    fit = "fit"
    all = "all"


COLUMNS_HELP = ("fit: a terminal too narrow for every metric leaves out the least read ones (named on stderr); "
                "all: every metric, wrapped. A file or a pipe always gets every metric.")


def drop_overrides(drop: str | None, no_sass: bool, no_sig: bool, no_sal: bool) -> dict[str, bool]:
    """`--drop sig,sal` / `--no-sig` -> {"sig": False, "sal": False} for the recipe's mix section."""
    parts = {p.strip() for p in (drop or "").split(",") if p.strip()}
    unknown = parts - set(MIX_PARTS)
    if unknown:
        raise BadInput(f"unknown MS-Mix part {sorted(unknown)[0]!r} in --drop; choose from: {', '.join(MIX_PARTS)}")
    parts |= {name for name, flag in zip(MIX_PARTS, (no_sass, no_sig, no_sal)) if flag}
    return {part: False for part in sorted(parts)}


def training_overrides(mix: str | None, seed: int | None, device: str | None, max_epochs: int | None,
                       samples: int | None, drops: dict[str, bool], log_grad_norms: bool = False,
                       keep_last: bool = False) -> dict[str, dict[str, Any]]:
    """The named CLI flags as recipe sections; only the flags the user gave."""
    sections: dict[str, dict[str, Any]] = {"data": {}, "mix": dict(drops), "train": {}}
    for section, key, value in (("mix", "name", mix), ("train", "seed", seed), ("train", "device", device),
                                ("train", "max_epochs", max_epochs), ("data", "samples", samples),
                                ("train", "log_grad_norms", log_grad_norms or None), ("train", "keep_last", keep_last or None)):
        if value is not None:
            sections[section][key] = value
    return {k: v for k, v in sections.items() if v}


def default_run_name(recipe: Recipe) -> str:
    return f"{recipe.data.dataset}-{recipe.backbone}-{mix_label(recipe.mix)}-seed{recipe.train.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def joins_process_group(command: F) -> F:
    """`distributed.joins_process_group` in a process torchrun started (it sets WORLD_SIZE); any other process runs
    the command as it is, so that its command line is checked before torch loads."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "WORLD_SIZE" not in os.environ:
            return command(*args, **kwargs)
        from msmix_cli.training import distributed

        return distributed.joins_process_group(command)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@app.command()
@reports_errors
@joins_process_group
def train(
    dataset: Optional[str] = typer.Option(None, show_default="synth", help="synth (built-in), mosi, mosei, sims, "
                                          "simsv2, or the --name of an import (msmix preprocess --from FILE.pkl --name NAME)."),
    backbone: Optional[str] = typer.Option(None, show_default="tfn", help="tfn, lmf, mult, misa, almt or glomo."),
    mix: Optional[str] = typer.Option(None, show_default="the recipe's: msmix", help="none, mixup, manifold or msmix."),
    recipe: Optional[Path] = typer.Option(None, help="A YAML recipe; default recipes/<dataset>-<backbone>.yaml."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", show_default=False,
                                   help="Override a recipe key, e.g. --set train.lr=1e-3 (repeatable)."),
    seed: Optional[int] = typer.Option(None, show_default="the recipe's: 1111", help="Training seed."),
    device: Optional[str] = typer.Option(None, show_default="the recipe's: auto", help="auto, cpu, cuda or cuda:N."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", show_default="the recipe's", help="Hard limit on epochs."),
    samples: Optional[int] = typer.Option(None, show_default="2199, MOSI's size", help="Size of the synthetic set (synth only)."),
    drop: Optional[str] = typer.Option(None, help="MS-Mix parts to switch off: sass,sig,sal."),
    no_sass: bool = typer.Option(False, "--no-sass", help="Pairs drawn at random instead of by similarity (the msmix preset already does; --set mix.sass=true turns SASS on)."),
    no_sig: bool = typer.Option(False, "--no-sig", help="One Beta ratio for every modality."),
    no_sal: bool = typer.Option(False, "--no-sal", help="No sentiment alignment loss."),
    log_grad_norms: bool = typer.Option(False, "--log-grad-norms", help="history.csv gets each loss term's gradient "
                                        "norm at the encoder, the head and the predictors (slower: extra backward passes)."),
    keep_last: bool = typer.Option(False, "--keep-last", help="Keep last.pt (the resume point) once the run is complete; "
                                   "by default only checkpoint.pt, the best epoch, stays (train.keep_last)."),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Folder that receives the run directory."),
    name: Optional[str] = typer.Option(None, help="Run directory name (default: dataset-backbone-mix-seed-time)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder (default $MSMIX_DATA_ROOT or ./data)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the recipe, build the model, print it; train nothing."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run directory from its last complete epoch."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="How to print the test metrics."),
    log: list[Tracker] = typer.Option([], "--log", show_default=False, help="Also log to TensorBoard (event files in "
                                      "the run directory) or MLflow (--mlflow-uri); repeatable; optional extras."),
    mlflow_uri: str = typer.Option("./mlruns", "--mlflow-uri", help="MLflow tracking URI for --log mlflow."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes to train with DistributedDataParallel (one per GPU "
                              "with --device cuda); launches torchrun. train.batch_size is per process."),
) -> None:
    """Train a backbone with a mixer and report the test metrics of the best-validation checkpoint.

    Example: msmix train --dataset synth --backbone mult --mix msmix --seed 1111 --max-epochs 5
    """
    if resume is not None:
        given = [flag for flag, value in (("--recipe", recipe), ("--set", set_), ("--dataset", dataset), ("--backbone", backbone),
                                          ("--mix", mix), ("--seed", seed), ("--device", device), ("--max-epochs", max_epochs),
                                          ("--samples", samples), ("--drop", drop or no_sass or no_sig or no_sal), ("--name", name),
                                          ("--log-grad-norms", log_grad_norms), ("--keep-last", keep_last)) if value]
        if given:
            raise BadInput(f"--resume continues a run with its saved recipe; drop {given[0]}")
    drops = drop_overrides(drop, no_sass, no_sig, no_sal)
    from msmix_cli.tracking import Tracking, check_trackers

    trackers = [t.value for t in dict.fromkeys(log)]
    check_trackers(trackers)
    tracking = Tracking(trackers, mlflow_uri) if trackers else None
    from msmix_cli.models import count_parameters
    from msmix_cli.recipes import dump_recipe, resolve_recipe
    from msmix_cli.training import distributed
    from msmix_cli.training.loop import build_networks, published_shape

    if nproc > 1 and not distributed.launched_by_torchrun():
        raise typer.Exit(distributed.launch(nproc, sys.argv[1:]))
    if name is not None:
        from msmix_cli.training.rundir import folder_name

        folder_name(name)
    root = data_root or data_root_default()
    DATASETS.use_data_root(root)  # where imported datasets are looked up
    if resume is not None:
        run = resumable_run(resume)
        try:
            run_training(run.recipe(), run, root, output, resume=True, tracking=tracking)
        finally:
            run.release()
        return
    resolved = resolve_recipe(recipe, dataset=dataset, backbone=backbone, assignments=set_,
                              overrides=training_overrides(mix, seed, device, max_epochs, samples, drops, log_grad_norms, keep_last))
    if dry_run:
        model, mixer = build_networks(resolved, published_shape(resolved))  # no data needed, so none is read
        print(dump_recipe(resolved, command_line()), end="")
        out.print(f"{resolved.backbone} on {resolved.data.dataset}: {count_parameters(model):,} trainable parameters "
                  f"(+{mixer.used_parameters():,} in the {mix_label(resolved.mix)} mixer); recipe is valid.", highlight=False)
        return
    run, resuming = distributed.on_main(lambda: choose_run(resolved, out_dir, name))
    try:
        run_training(resolved, run, root, output, resume=resuming, tracking=tracking)
    finally:
        run.release()


def command_line() -> str:
    """The command as the user typed it, which recipe.yaml opens with."""
    return "msmix " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def choose_run(recipe: Recipe, out_dir: Path, name: str | None) -> tuple[RunDir, bool]:
    """The run directory to train into, locked, and whether it continues an interrupted run of the same recipe."""
    from msmix_cli.recipes import same_experiment
    from msmix_cli.training.rundir import RunDir

    if name is None:
        return RunDir.claim(out_dir, default_run_name(recipe), numbered=True), False
    run = RunDir.claim(out_dir, name)
    try:
        if run.resumable:
            if not same_experiment(run.recipe(), recipe):
                raise BadInput(f"{run.path} holds an interrupted run with another recipe; resume it with --resume or pick another --name")
            err.print(f"resuming the interrupted run in {escape(str(run.path))}", highlight=False)
            return run, True
        if run.holds_anything():
            raise BadInput(f"run directory {run.path} already exists; choose another --name or remove it")
    except BaseException:
        run.release()
        raise
    return run, False


def resumable_run(path: Path) -> RunDir:
    """The run folder `path`, locked, if a run there can go on."""
    from msmix_cli.training.rundir import RunDir

    run = RunDir(path)
    if not run.path.is_dir():
        raise BadInput(f"no run directory at {run.path}")
    run.take()
    try:
        if run.info().get("status") == "complete":
            raise BadInput(f"run {run.path} is already complete; nothing to resume (msmix evaluate {run.path})")
        if not run.started:
            raise BadInput(f"{run.path} holds no recipe.yaml: the run was stopped before it started; run the msmix "
                           "train command that made it again, which starts it in place")
        if not run.resumable:
            raise BadInput(f"{run.path} is not a resumable msmix run (no recipe.yaml or status marker)")
    except BaseException:
        run.release()
        raise
    return run


def run_training(recipe: Recipe, run: RunDir, root: Path, output: OutputFormat, resume: bool,
                 tracking: Tracking | None = None) -> None:
    from msmix_cli.cli.progress import TrainingProgress
    from msmix_cli.errors import Interrupted
    from msmix_cli.tracking import both
    from msmix_cli.training import distributed
    from msmix_cli.training.loop import fit

    command = command_line()
    if not distributed.ranks().is_main:
        fit(recipe, run, data_root=root, command=command, resume=resume)  # rank 0 reports for every rank
        return
    with TrainingProgress(err) as progress:
        listener = progress if tracking is None else both(progress, tracking)
        try:
            result = fit(recipe, run, data_root=root, command=command, on_event=listener, resume=resume)
        except BaseException as error:
            if tracking is not None:
                tracking.finish("interrupted" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "failed")
            raise
    if tracking is not None:
        tracking.finish("complete", result["metrics"])
    render_metrics(result, output, title=f"{escape(run.path.name)}: test metrics (best valid epoch {result['best_epoch']})")
    if output is OutputFormat.table:
        err.print(escape(f"saved to {run.path}  (msmix evaluate {run.path})"), highlight=False)


@app.command()
@reports_errors
def evaluate(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN", show_default=False,
                                          help="One or more run directories written by msmix train (e.g. runs/*)."),
    split: str = typer.Option("test", help="train, valid or test."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, json or csv (stdout only)."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder (default $MSMIX_DATA_ROOT or ./data)."),
    drop_modality: Optional[str] = typer.Option(None, "--drop-modality", help="Zero these modalities at test time: text, audio, vision (comma-separated)."),
    noise: Optional[float] = typer.Option(None, help="Add Gaussian noise of this standard deviation (in feature units) to the inputs."),
    noise_on: Optional[str] = typer.Option(None, "--noise-on", help="Modalities that get the noise (default: all not dropped)."),
    noise_seed: int = typer.Option(0, "--noise-seed", help="Seed of the noise and of --missing-rate's draws; every "
                                   "run sees the same."),
    missing_rate: Optional[str] = typer.Option(
        None, "--missing-rate", metavar="RATES", help="Missing-modality curve: at each rate (e.g. 0,0.1,0.5,0.9) every "
        "modality of every sample is zeroed with that probability; metrics vs rate, and a PNG (--plot)."),
    missing_draws: int = typer.Option(3, "--missing-draws", help="Seeded draws averaged at each --missing-rate."),
    plot: Path = typer.Option(Path("missing-rate.png"), "--plot", help="Where --missing-rate draws its curve."),
    columns: Columns = typer.Option(Columns.fit, "--columns", help=COLUMNS_HELP),
) -> None:
    """Reload runs' best checkpoints with their saved recipes and report their metrics, optionally perturbed.

    Given several paths, those that are not complete runs (an ablation's CSV files, an empty or interrupted
    run) are skipped and named on stderr.

    Example: msmix evaluate runs/* --drop-modality audio --format csv

    Example: msmix evaluate runs/first --missing-rate 0,0.1,0.3,0.5,0.7,0.9 --plot missing.png
    """
    if split not in ("train", "valid", "test"):
        raise BadInput(f"unknown split {split!r}; choose one of: train, valid, test")
    root = data_root or data_root_default()
    DATASETS.use_data_root(root)
    if missing_rate is not None:
        if drop_modality or noise is not None:
            raise BadInput("--missing-rate is a study of its own; drop --drop-modality and --noise")
        from msmix_cli.cli.missing import evaluate_missing_rates

        evaluate_missing_rates(run_dirs, rates=missing_rate, draws=missing_draws, seed=noise_seed, split=split,
                               device=device, data_root=root, output=output.value, plot=plot,
                               all_columns=columns is Columns.all)
        return
    from msmix_cli.training.loop import evaluate_run
    from msmix_cli.training.perturb import PerturbSpec

    perturbation = PerturbSpec.from_options(drop_modality, noise, noise_on, noise_seed)
    runs, skipped = complete_runs(run_dirs)
    rows = [{"run": run.path.name, **evaluate_run(run, data_root=root, split=split, device=device, perturb=perturbation.build()),
             "perturbation": perturbation.describe()} for run in runs]  # build() per run: every run sees the same noise
    for reason in skipped:  # said once the runs are evaluated, so that an error stays the only line
        err.print(f"[dim]skipped:[/] {escape(reason)}", highlight=False)
    render_evaluations(rows, output, split, all_columns=columns is Columns.all)


def complete_runs(paths: list[Path]) -> tuple[list[RunDir], list[str]]:
    """The complete runs among `paths`, and why each other path is not one. A single path that is not a run is
    an error; among several, at least one must be a run."""
    from msmix_cli.training.rundir import RunDir

    if len(paths) == 1:
        return [RunDir.open(paths[0])], []
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(RunDir.open(path))
        except BadInput as error:
            skipped.append(str(error))
    if not runs:
        raise BadInput(f"none of the {len(paths)} paths is a complete msmix run (first: {skipped[0]})")
    return runs, skipped


def render_evaluations(rows: list[dict[str, Any]], output: OutputFormat, split: str, all_columns: bool = False) -> None:
    """One run as `train` shows it; several as one table, JSON list or CSV with a row per run (CSV always so)."""
    condition = f", {rows[0]['perturbation']}" if rows[0]["perturbation"] else ""
    if len(rows) == 1 and output is not OutputFormat.csv:
        render_metrics(rows[0], output, title=f"{escape(rows[0]['run'])}: {split} metrics{condition} (best valid epoch {rows[0]['best_epoch']})",
                       all_columns=all_columns)
    elif output is OutputFormat.json:
        print(to_json(rows))
    elif output is OutputFormat.csv:
        print(to_csv([{k: v for k, v in row.items() if k != "metrics"} | row["metrics"] for row in rows]), end="")
    else:
        names = list(dict.fromkeys(name for row in rows for name in row["metrics"]))
        table_rows = [{"run": escape(row["run"]), **row["metrics"], "best epoch": str(row["best_epoch"])} for row in rows]
        print_table(comparison_table(table_rows, names, title=f"{split} metrics of {len(rows)} runs{condition}", label_columns=["run"]),
                    names, all_columns)


def render_metrics(result: dict[str, Any], output: OutputFormat, title: str, all_columns: bool = False) -> None:
    if output is OutputFormat.json:
        print(to_json(result))
    elif output is OutputFormat.csv:
        print(to_csv([{k: v for k, v in result.items() if k != "metrics"} | result["metrics"]]), end="")
    else:
        print_table(metrics_table(result["metrics"], title=title), list(result["metrics"]), all_columns)
