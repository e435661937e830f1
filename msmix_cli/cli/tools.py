"""`msmix ls`, `msmix recipe show|cp|validate`, `msmix env`, `msmix clean`: what is there, what a recipe
resolves to, what a bug report needs, and disk space back. Parse, call, render."""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from msmix_cli import __version__
from msmix_cli.cli.app import OneLineUsageErrors, app, err, out, print_table, reports_errors
from msmix_cli.cli.data import OutputFormat
from msmix_cli.data.specs import DATASETS, data_root_default
from msmix_cli.errors import BadInput
from msmix_cli.inventory import CacheEntry, RunEntry, clean_synth_caches, find_runs, human_size, list_caches
from msmix_cli.report import to_json

DATA_ROOT_HELP = "Data folder (default $MSMIX_DATA_ROOT or ./data)."
recipe_app = typer.Typer(help="Show, copy or check a recipe.", no_args_is_help=True, cls=OneLineUsageErrors)
app.add_typer(recipe_app, name="recipe")


@app.command("ls")
@reports_errors
def list_command(
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Folder of the runs to list (ablation folders included)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json."),
) -> None:
    """List backbones, mixers, datasets with their caches, recipes, and runs with status, test MAE and size.

    Runs are the run directories under --out, those inside ablation folders included.

    Example: msmix ls --out runs --format json
    """
    from msmix_cli.mixing import MIXERS
    from msmix_cli.models import BACKBONES
    from msmix_cli.recipes import recipes_dir

    root = data_root or data_root_default()
    caches = list_caches(root)
    recipes = sorted(str(p.relative_to(recipes_dir())) for p in recipes_dir().glob("*.yaml"))
    listing = {"backbones": BACKBONES.names(), "mixers": MIXERS.names(), "datasets": dataset_rows(caches),
               "recipes": recipes, "caches": [asdict(c) for c in caches], "runs": [asdict(r) for r in find_runs(out_dir)]}
    if output is OutputFormat.json:
        print(to_json(listing))
        return
    out.print(f"[bold]backbones[/] {', '.join(listing['backbones'])}", highlight=False)
    out.print(f"[bold]mixers[/]    {', '.join(listing['mixers'])}", highlight=False)
    out.print(f"[bold]recipes[/]   {len(recipes)} in {escape(str(recipes_dir()))} (msmix recipe show DATASET BACKBONE)",
              highlight=False)
    out.print(f"[bold]datasets[/]  caches in {escape(str(root / 'cache'))}", highlight=False)
    print_table(datasets_table(listing["datasets"]))
    runs = [RunEntry(**r) for r in listing["runs"]]
    out.print(f"[bold]runs[/]      {len(runs)} in {escape(str(out_dir))}, {human_size(sum(r.size_bytes for r in runs))}",
              highlight=False)
    if runs:
        print_table(runs_table(runs))


def dataset_rows(caches: list[CacheEntry]) -> list[dict[str, Any]]:
    """One row per dataset: published ones, then those imported or generated under the data root."""
    names = list(dict.fromkeys([*DATASETS.names(), *(c.dataset for c in caches)]))
    rows = []
    for name in names:
        own = [c for c in caches if c.dataset == name]
        rows.append({"name": name, "imported": name not in DATASETS, "caches": [c.file for c in own],
                     "size_bytes": sum(c.size_bytes for c in own)})
    return rows


def datasets_table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    for column, justify in (("dataset", "left"), ("caches", "left"), ("size", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows:
        name = row["name"] + (" (imported)" if row["imported"] else "")
        caches = ", ".join(row["caches"]) or "[dim]none[/]"
        table.add_row(escape(name), caches if not row["caches"] else escape(caches), human_size(row["size_bytes"]) if row["caches"] else "")
    return table


def runs_table(runs: list[RunEntry]) -> Table:
    table = Table()
    for column in ("run", "status", "dataset", "backbone", "mix", "seed", "test MAE", "size"):
        table.add_column(column, justify="right" if column in ("seed", "test MAE", "size") else "left", overflow="fold")
    for run in runs:
        table.add_row(escape(run.name), run.status, run.dataset or "", run.backbone or "", run.mix or "",
                      "" if run.seed is None else str(run.seed), "" if run.test_mae is None else f"{run.test_mae:.4f}",
                      human_size(run.size_bytes))
    return table


@app.command("clean")
@reports_errors
def clean_command(
    synth: bool = typer.Option(False, "--synth", help="Remove every cache of the synthetic benchmark (one per "
                               "--samples value); a run regenerates the one it needs, identical."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing."),
) -> None:
    """Give disk space back: remove the synthetic benchmark's caches.

    Real datasets' caches and runs are never touched.

    Example: msmix clean --synth --dry-run
    """
    if not synth:
        raise BadInput("say what to clean: --synth (the synthetic benchmark's caches)")
    root = data_root or data_root_default()
    removed = clean_synth_caches(root, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(removed)} synth cache(s), {human_size(sum(c.size_bytes for c in removed))}, "
              f"from {escape(str(root / 'cache'))}", highlight=False)


@recipe_app.command("show")
@reports_errors
def recipe_show(
    dataset: str = typer.Argument(..., metavar="DATASET", help="synth, mosi, mosei, sims, simsv2 or an import."),
    backbone: str = typer.Argument(..., metavar="BACKBONE", help="tfn, lmf, mult, misa, almt or glomo."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", show_default=False,
                                   help="Override a recipe key, e.g. --set train.lr=1e-3 (repeatable)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
) -> None:
    """Print the resolved recipe of DATASET × BACKBONE, each value with where it comes from.

    A value comes from a recipe file (or the file it names as its base), the mix preset, --set, or the code's default.

    Example: msmix recipe show synth mult --set train.lr=1e-3
    """
    from msmix_cli.recipe_tools import show_recipe

    DATASETS.use_data_root(data_root or data_root_default())
    _, text = show_recipe(dataset, backbone, None, set_)
    print(text, end="")


@recipe_app.command("cp")
@reports_errors
def recipe_cp(
    dataset: str = typer.Argument(..., metavar="DATASET", help="synth, mosi, mosei, sims, simsv2 or an import."),
    backbone: str = typer.Argument(..., metavar="BACKBONE", help="tfn, lmf, mult, misa, almt or glomo."),
    target: Path = typer.Argument(..., metavar="PATH", help="The file to write; an existing one is never overwritten."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", show_default=False,
                                   help="Override a recipe key in the copy (repeatable)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
) -> None:
    """Write the resolved recipe of DATASET × BACKBONE to PATH, to edit and train with --recipe PATH.

    Example: msmix recipe cp synth mult my-mult.yaml, then msmix train --recipe my-mult.yaml
    """
    from msmix_cli.recipe_tools import copy_recipe

    DATASETS.use_data_root(data_root or data_root_default())
    copy_recipe(dataset, backbone, target, set_)
    err.print(escape(f"wrote {target}; train it with: msmix train --recipe {target}"), highlight=False)


@recipe_app.command("validate")
@reports_errors
def recipe_validate(
    file: Path = typer.Argument(..., metavar="FILE", help="A recipe file."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
) -> None:
    """Check a recipe file: print "valid", or the one-line error and exit 2.

    Its keys, types and ranges are checked, and its model is built at its dataset's published shape.

    Example: msmix recipe validate my-mult.yaml
    """
    from msmix_cli.recipes import resolve_recipe
    from msmix_cli.training.loop import build_networks, published_shape

    DATASETS.use_data_root(data_root or data_root_default())
    recipe = resolve_recipe(file)
    build_networks(recipe, published_shape(recipe))
    out.print("valid", highlight=False)


@app.command("env")
@reports_errors
def env_command(
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json."),
) -> None:
    """Print what a bug report needs: versions, git commit, device and CPU threads.

    The versions of msmix, Python, torch (and the CUDA it was built with), NumPy, h5py and the other libraries.

    Example: msmix env --format json
    """
    facts = environment()
    if output is OutputFormat.json:
        print(to_json(facts))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in facts.items():
        table.add_row(key, "none" if value is None else escape(str(value)))
    print_table(table)


def environment() -> dict[str, Any]:
    import h5py
    import numpy
    import sklearn
    import torch

    from msmix_cli.training.device import available_cores, resolve_device
    from msmix_cli.training.rundir import git_commit

    cuda = torch.cuda.is_available()
    return {
        "msmix": __version__, "git commit": git_commit(), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "CUDA (torch built with)": torch.version.cuda,
        "CUDA available": cuda, "GPUs": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "device (auto)": str(resolve_device("auto")), "CPU threads (torch)": torch.get_num_threads(),
        "CPU cores available": available_cores(), "numpy": numpy.__version__, "h5py": h5py.__version__,
        "scikit-learn": sklearn.__version__, "typer": typer.__version__, "rich": optional_version("rich"),
        "matplotlib": optional_version("matplotlib"),
    }


def optional_version(name: str) -> str | None:
    """An installed distribution's version, or None when it is not installed (matplotlib is an optional extra)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@app.command("plot")
@reports_errors
def plot_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN", show_default=False, help="One or more run directories."),
    output: Path = typer.Option(Path("curves.png"), "--output", "-o", help="The PNG to write."),
) -> None:
    """Overlay the training curves of several runs: loss and validation MAE per epoch, each best epoch marked.

    Every run also has its own curves.png, written when it completes (with matplotlib installed).

    Example: msmix plot runs/first runs/second -o compare.png
    """
    from msmix_cli.curves import plot_curves, read_history

    curves = [read_history(run) for run in run_dirs]
    plot_curves(curves, output, title=f"{len(curves)} run(s)")
    err.print(escape(f"wrote {output}"), highlight=False)
