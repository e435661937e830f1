"""`msmix tune`: parse, call `tuning.tune`, `tuning.report` or `tuning.final`, render."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from msmix_cli.cli.ablate import AblationProgress, format_p, signed_delta
from msmix_cli.cli.app import app, err, out, reports_errors
from msmix_cli.cli.train import training_overrides
from msmix_cli.data.specs import data_root_default
from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput, RunFailed
from msmix_cli.report import comparison_table, display_name, format_metric

if TYPE_CHECKING:
    from msmix_cli import tuning
    from msmix_cli.ablation import AblationResult

# Optuna, torch and the training modules load inside the functions: `--help` must answer at once.


class Sampler(str, Enum):
    tpe = "tpe"
    random = "random"


class Pruner(str, Enum):
    median = "median"
    halving = "halving"
    none = "none"


@app.command()
@reports_errors
def tune(
    dataset: Optional[str] = typer.Option(None, help="synth, mosi, ... or an import's --name (a new study)."),
    backbone: Optional[str] = typer.Option(None, help="tfn, lmf, mult, misa, almt or glomo (a new study)."),
    mix: Optional[str] = typer.Option(None, help="none, mixup, manifold or msmix (a new study)."),
    recipe: Optional[Path] = typer.Option(None, help="A YAML recipe; default recipes/<dataset>-<backbone>.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Fix a recipe key in every trial, e.g. --set train.max_epochs=20."),
    space: Optional[Path] = typer.Option(None, help="Search space YAML; default recipes/spaces/<mix>.yaml."),
    objective: Optional[str] = typer.Option(None, help="Validation metric to optimise: valid_MAE (default), "
                                            "valid_Has0_acc_2, ... Never a test metric."),
    trials: int = typer.Option(20, help="Finished trials the study should hold; a rerun continues up to this number."),
    workers: int = typer.Option(1, help="Worker processes on this machine, each with its share of the cores."),
    study: Optional[Path] = typer.Option(None, help="Study folder (trial runs; study.db by default); "
                                         "default runs/tune/<dataset>-<backbone>-<mix>."),
    storage: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the study database, e.g. "
                                          "postgresql://user@host/db for many machines; default sqlite in --study."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Name of the study in --storage; default the folder's name."),
    sampler: Sampler = typer.Option(Sampler.tpe, help="tpe or random (Optuna's samplers)."),
    pruner: Pruner = typer.Option(Pruner.median, help="median, halving or none: stops trials on their per-epoch validation loss."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Hard limit on epochs of every trial (a new study)."),
    samples: Optional[int] = typer.Option(None, help="Size of the synthetic set (synth only; a new study)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N, for this machine's trials."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder (default $MSMIX_DATA_ROOT or ./data)."),
    show_report: bool = typer.Option(False, "--report", help="Show the top trials and parameter importances; write history.png."),
    top: int = typer.Option(10, help="Trials in the --report table."),
    final: bool = typer.Option(False, "--final", help="Retrain the best setting and the recipe's defaults on fresh seeds; "
                                                      "compare them on test (the first time test is read)."),
    seeds: int = typer.Option(5, help="Fresh seeds for --final."),
) -> None:
    """Search a recipe's hyperparameters with Optuna on a validation metric, one run directory per trial.

    Trials never read the test split; --final does, once, for the best setting against the recipe's defaults.
    Rerunning the command continues the study; several workers or machines share it through its database.

    Example: msmix tune --dataset mosi --backbone lmf --mix msmix --trials 50 --space recipes/spaces/msmix.yaml

    Example: msmix tune --study runs/tune/mosi-lmf-msmix --report
    """
    from msmix_cli import tuning

    root = data_root or data_root_default()
    DATASETS.use_data_root(root)  # where imported datasets are looked up
    if show_report and final:
        raise BadInput("--report and --final are separate steps; give one of them")
    creating = {"--dataset": dataset, "--backbone": backbone, "--mix": mix, "--recipe": recipe, "--set": set_,
                "--space": space, "--objective": objective, "--max-epochs": max_epochs, "--samples": samples}
    given = [flag for flag, value in creating.items() if value]
    if (show_report or final) and given:
        raise BadInput(f"--report and --final read the study as it was started; drop {given[0]}")
    place = tuning.study_place(study, storage, study_name, default_folder=f"{dataset or 'synth'}-{backbone or 'tfn'}-{mix or 'msmix'}")
    command = "msmix " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if show_report:
        if top < 1:
            raise BadInput(f"--top must be >= 1, got {top}")
        render_report(tuning.report(place, top))
        return
    if final:
        with AblationProgress(err) as progress:
            result, best = tuning.final(place, seeds, data_root=root, jobs=workers, device=device, command=command,
                                        on_event=progress)
        render_final(result, best)
        return
    wanted = None
    if given or study is None and storage is None and study_name is None:
        wanted = new_spec(dataset, backbone, mix, recipe, set_, space, objective, max_epochs, samples)
    job = tuning.TuneJob(place, trials, workers, root, sampler.value, pruner.value, device, command)
    spec = tuning.resolve_study(place, wanted)
    err.print(escape(f"study {place.name!r} in {place.folder}: {trials} trials, {workers} worker(s), "
                     f"objective {spec.objective} ({spec.direction})"), highlight=False)
    outcome = tuning.tune(job, spec, print_trial)
    err.print(f"{outcome.finished} of {trials} trials finished", highlight=False)
    if outcome.finished < trials:
        raise RunFailed(f"{outcome.dead_workers} worker(s) stopped early and {outcome.finished} of {trials} trials are "
                        f"finished; rerun the same command to continue the study")
    if outcome.dead_workers:  # the others failed its trial in flight by its heartbeat and ran it again
        err.print(f"[yellow]note:[/] {outcome.dead_workers} worker(s) stopped early; the other workers finished the study",
                  highlight=False)
    err.print(escape(f"next: msmix tune --study {place.folder} --report"), highlight=False)


def new_spec(dataset: str | None, backbone: str | None, mix: str | None, recipe: Path | None, sets: list[str],
             space: Path | None, objective: str | None, max_epochs: int | None, samples: int | None) -> tuning.StudySpec:
    from msmix_cli import tuning
    from msmix_cli.recipes import resolve_recipe

    resolved = resolve_recipe(recipe, dataset=dataset, backbone=backbone, assignments=sets,
                              overrides=training_overrides(mix, None, None, max_epochs, samples, {}))
    space_path = space or tuning.default_space_path(resolved.mix.name)
    return tuning.make_spec(resolved, tuning.read_space(space_path), str(space_path), objective or "valid_MAE")


def print_trial(done: tuning.TrialDone) -> None:
    """One line per finished trial; runs in whichever worker process finished it."""
    if done.number < 0:
        err.print(f"[red]worker stopped:[/] {escape(done.note)}", highlight=False)
        return
    value = "" if done.value is None else f"  value {done.value:.4f}"
    colour = {"complete": "green", "pruned": "yellow"}.get(done.state, "red")
    note = f"  ({escape(done.note)})" if done.note else ""
    err.print(f"[{colour}]{done.state}[/] trial {done.number}{value}  {done.epochs} epochs  {done.seconds:.1f} s{note}",
              highlight=False)


def render_report(report: tuning.Report) -> None:
    objective = report.spec.objective
    metric = report.spec.metric
    rows = [{**row, objective: format_metric(metric, row[objective])} for row in report.rows]
    table = Table(title=f"top {len(rows)} trials by {objective} ({'higher' if report.spec.direction == 'maximize' else 'lower'} "
                        f"is better; validation, best-validation epoch)", caption="run directories: <study>/trials/trial-NNNN")
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["trial", objective]
    short = [column.partition(".")[2] or column for column in columns]
    headers = short if len(set(short)) == len(short) else columns  # section.name only where two names clash
    for column, header in zip(columns, headers):
        table.add_column(header, justify="left" if column == "trial" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(escape(str(row.get(column, ""))) for column in columns))
    out.print(table)
    out.print(", ".join(f"{count} {state}" for state, count in sorted(report.states.items())) or "no trials yet",
              highlight=False)
    if report.importances:
        importance = Table(title="parameter importances", caption="Optuna's fANOVA")
        importance.add_column("parameter")
        importance.add_column("importance", justify="right")
        for name, value in report.importances.items():
            importance.add_row(escape(name), f"{value:.3f}")
        out.print(importance)
    for note in (report.importance_note, report.plot_note):
        if note:
            err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if report.plot:
        err.print(escape(f"wrote {report.plot}"), highlight=False)


def render_final(result: AblationResult, best: dict[str, Any]) -> None:
    from msmix_cli import tuning

    setting = ", ".join(f"{k}={tuning.format_param(v)}" for k, v in best["params"].items())
    err.print(escape(f"best trial {best['trial']} (validation {best['value']:.4f}): {setting}"), highlight=False)
    for dataset, backbone in result.groups():
        out.print(final_table(result, dataset, backbone))
    err.print(escape(f"wrote {', '.join(p.name for p in result.files)} to {result.files[0].parent}"), highlight=False)
    if result.plot_note:
        err.print(f"[yellow]note:[/] {escape(result.plot_note)}", highlight=False)
    if result.failures:
        raise RunFailed(f"{len(result.failures)} final run(s) failed (first: {result.failures[0].name}: "
                        f"{result.failures[0].error}); rerun the same command to retry them")


def final_table(result: AblationResult, dataset: str, backbone: str) -> Table:
    from msmix_cli import tuning
    from msmix_cli.metrics import KEY_METRIC, METRIC_NAMES

    metric_set = DATASETS.get(dataset).metric_set
    key = KEY_METRIC[metric_set]
    delta_column = f"Δ {display_name(key)}"
    rows = []
    for entry in result.comparison(dataset, backbone):
        reference = entry["variant"] == tuning.DEFAULT
        rows.append({"setting": entry["variant"], "seeds": str(entry["n"]),
                     **{m: entry.get(m) for m in METRIC_NAMES[metric_set]},
                     delta_column: "—" if reference else signed_delta(key, entry["delta"]),
                     "p": "—" if reference else format_p(entry["p"])})
    caption = (f"test metrics, mean ± std over fresh seeds (ddof=1); {delta_column} = tuned − default; "
               f"p: two-sided paired t-test on {display_name(key)} across seeds")
    return comparison_table(rows, METRIC_NAMES[metric_set], title=f"{dataset} · {backbone}: tuned setting vs the recipe's defaults",
                            label_columns=["setting", "seeds"], caption=caption)
