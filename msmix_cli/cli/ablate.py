"""`msmix ablate`: parse, call `run_ablation`, render one comparison table per dataset × backbone."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from msmix_cli.cli.app import app, err, print_table, reports_errors
from msmix_cli.cli.progress import live_bars
from msmix_cli.cli.train import COLUMNS_HELP, Columns, OutputFormat, training_overrides
from msmix_cli.data.specs import DATASETS, data_root_default
from msmix_cli.errors import RunFailed
from msmix_cli.report import comparison_table, display_name, format_metric, to_csv, to_json
from msmix_cli.training.events import EpochDone, RunStarted

if TYPE_CHECKING:
    from msmix_cli.ablation import AblationPlanned, AblationResult, Event, RunFinished

# The ablation machinery (torch, scikit-learn) is imported when the command runs, so that `--help` answers at once.


@app.command()
@reports_errors
def ablate(
    dataset: Optional[str] = typer.Option(None, help="One or more datasets, comma-separated: synth,mosi."),
    backbone: Optional[str] = typer.Option(None, help="One or more backbones, comma-separated: tfn,mult."),
    drop: Optional[str] = typer.Option(None, help="MS-Mix parts to ablate, one variant each: sass,sig,sal; "
                                                  "sig+sal drops both in one variant; all = --grid."),
    grid: bool = typer.Option(False, "--grid", help="Full MS-Mix, -SASS, -SIG, -SAL and every other mixer as a baseline."),
    baselines: bool = typer.Option(False, "--baselines", help="Full MS-Mix against every other mixer (none, mixup, "
                                                               "manifold); add --drop for ablated variants too."),
    seeds: str = typer.Option("1111,1112,1113", help="Training seeds, comma-separated; every variant runs on each."),
    jobs: int = typer.Option(1, help="Trainings in parallel processes (CPU: cores are shared out; GPU: see --share-gpu)."),
    share_gpu: bool = typer.Option(False, "--share-gpu", help="Let --jobs runs share one GPU (default: one at a time there)."),
    recipe: Optional[Path] = typer.Option(None, help="A YAML recipe; default recipes/<dataset>-<backbone>.yaml."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", show_default=False,
                                   help="Override a recipe key in every run, e.g. --set train.lr=1e-3."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Hard limit on epochs of every run."),
    samples: Optional[int] = typer.Option(None, help="Size of the synthetic set (synth only)."),
    out_dir: Path = typer.Option(Path("runs/ablation"), "--out", help="Folder of the run directories and the results."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder (default $MSMIX_DATA_ROOT or ./data)."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, json or csv (the summary, on stdout)."),
    columns: Columns = typer.Option(Columns.fit, "--columns", help=COLUMNS_HELP),
) -> None:
    """Train the full MS-Mix and its ablated variants on the same seeds; compare them, mean ± std over seeds.

    Runs already complete in --out with the same recipe are reused; interrupted ones are trained again, so
    rerunning the command after Ctrl-C finishes the job. Writes ablation.csv, summary.csv, summary.json and
    ablation.png to --out.

    Example: msmix ablate --dataset synth --backbone mult --drop all --jobs 2 --out runs/abl-mult

    Example: msmix ablate --dataset synth --backbone tfn,lmf --baselines --max-epochs 5
    """
    from msmix_cli.ablation import AblationSpec, parse_names, parse_seeds, parse_variants, run_ablation

    DATASETS.use_data_root(data_root or data_root_default())  # where imported datasets are looked up
    spec = AblationSpec(
        variants=tuple(parse_variants(drop, grid, baselines)), seeds=parse_seeds(seeds), out=out_dir,
        data_root=data_root or data_root_default(), datasets=parse_names(dataset), backbones=parse_names(backbone),
        recipe_path=recipe, flags=training_overrides(None, None, device, max_epochs, samples, {}),
        assignments=tuple(set_), jobs=jobs, share_gpu=share_gpu)
    command = "msmix " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with AblationProgress(err) as progress:
        result = run_ablation(spec, command=command, on_event=progress)
    render(result, output, all_columns=columns is Columns.all)
    if result.failures:
        first = result.failures[0]
        raise RunFailed(f"{len(result.failures)} of {len(result.outcomes)} runs failed and are left out of the tables "
                        f"(first: {first.name}: {first.error}); rerun the command to retry them")


def render(result: AblationResult, output: OutputFormat, all_columns: bool = False) -> None:
    """The summary on stdout (tables, JSON or CSV); what was trained and written on stderr."""
    from msmix_cli.metrics import METRIC_NAMES

    if output is OutputFormat.json:
        print(to_json({"summary": result.summary, "runs": result.runs}))
    elif output is OutputFormat.csv:
        print(to_csv(result.summary), end="")
    else:
        for dataset, backbone in result.groups():
            names = METRIC_NAMES[DATASETS.get(dataset).metric_set]
            print_table(group_table(result, dataset, backbone), names, all_columns)
    trained = sum(o.status == "trained" for o in result.outcomes)
    err.print(f"{trained} run(s) trained, {len(result.outcomes) - trained - len(result.failures)} reused, "
              f"{len(result.failures)} failed, in {result.wall_s:.1f} s", highlight=False)
    err.print(escape(f"wrote {', '.join(p.name for p in result.files)} to {result.files[0].parent}"), highlight=False)
    if result.plot_note:
        err.print(f"[yellow]note:[/] {result.plot_note}", highlight=False)


def group_table(result: AblationResult, dataset: str, backbone: str) -> Table:
    from msmix_cli.ablation import REFERENCE, variant_label
    from msmix_cli.metrics import HIGHER_IS_BETTER, KEY_METRIC, METRIC_NAMES

    key = KEY_METRIC[DATASETS.get(dataset).metric_set]
    delta_column, p_column = f"Δ {display_name(key)}", "p"
    rows = []
    for entry in result.comparison(dataset, backbone):
        reference = entry["variant"] == REFERENCE
        rows.append({"variant": variant_label(entry["variant"]), "seeds": str(entry["n"]),
                     **{m: entry.get(m) for m in METRIC_NAMES[DATASETS.get(dataset).metric_set]},
                     delta_column: "—" if reference else signed_delta(key, entry["delta"]),
                     p_column: "—" if reference else format_p(entry["p"])})
    direction = "higher" if HIGHER_IS_BETTER[key] else "lower"
    caption = (f"mean ± std over seeds (std with ddof=1); {delta_column} = variant − MS-Mix ({direction} is better; "
               f"green: better than MS-Mix); p: two-sided paired t-test on {display_name(key)} across seeds")
    table = comparison_table(rows, METRIC_NAMES[DATASETS.get(dataset).metric_set],
                             title=f"{dataset} · {backbone}: test metrics of each run's best-validation checkpoint",
                             label_columns=["variant", "seeds"], caption=caption)
    table.columns[0].no_wrap = True  # on a narrow terminal the metrics wrap, the variant's name stays readable
    return table


def signed_delta(metric: str, delta: float) -> str:
    from msmix_cli.metrics import HIGHER_IS_BETTER

    if math.isnan(delta):
        return "n/a"
    better = delta > 0 if HIGHER_IS_BETTER[metric] else delta < 0
    text = ("+" if delta >= 0 else "") + format_metric(metric, delta)
    return f"[green]{text}[/]" if better else text


def format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


class AblationProgress:
    """One bar over runs; with runs trained in this process, a second bar over the current run's epochs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = live_bars(console, TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[note]}"), TimeElapsedColumn())
        self.runs: Any = None
        self.epochs: Any = None

    def __enter__(self) -> AblationProgress:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        from msmix_cli.ablation import AblationPlanned, RunFinished

        if isinstance(event, AblationPlanned):
            self.planned(event)
        elif isinstance(event, RunFinished):
            self.finished(event)
        elif isinstance(event, RunStarted):
            self.epochs = self.epochs if self.epochs is not None else self.progress.add_task("epochs", total=1, note="")
            self.progress.update(self.epochs, completed=0, total=event.max_epochs, note=event.run_dir.name)
        elif isinstance(event, EpochDone) and self.epochs is not None:
            self.progress.update(self.epochs, completed=event.epoch, note=f"valid MAE {event.valid_mae:.4f}")

    def planned(self, event: AblationPlanned) -> None:
        parts = [f"{event.runs} runs: {event.reused} complete and reused, {event.to_train} to train"]
        if event.redone:
            parts.append(f"{event.redone} of them interrupted before, resumed or redone")
        if event.to_train:
            parts.append(f"{event.jobs} at a time")
        self.console.print(", ".join(parts), highlight=False)
        if event.note:
            self.console.print(f"[yellow]note:[/] {event.note}", highlight=False)
        self.runs = self.progress.add_task("runs", total=event.runs, note="")

    def finished(self, event: RunFinished) -> None:
        self.progress.advance(self.runs)
        if event.status == "trained":
            value = "n/a" if event.value is None else f"{event.value:.4f}"
            self.console.print(f"[green]done[/] {event.name}  {event.seconds:.1f} s  test {event.key_metric} {value}", highlight=False)
        elif event.status == "failed":
            self.console.print(f"[red]failed[/] {event.name}: {escape(event.error)}", highlight=False)
