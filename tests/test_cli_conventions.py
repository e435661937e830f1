"""What a newcomer tripped on (issue 14): help labels, whole numbers and names in tables, `evaluate runs/*`
beside non-runs, no directory left by a refused run, rows that say what they are, dry-run, resume, stderr."""

import csv
import importlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from msmix_cli import __version__
from msmix_cli.cli import app
from msmix_cli.report import comparison_table, format_cell

app_module = importlib.import_module("msmix_cli.cli.app")  # the module: `msmix_cli.cli.app` as an attribute is the Typer app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
TINY = ("--samples", "80", "--max-epochs", "2", "--seed", "3")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two small complete runs with long names, in one runs folder."""
    root = tmp_path_factory.mktemp("conventions")
    runs = root / "runs"
    for name, mix in (("synth-tfn-msmix-seed3-a-rather-long-run-name-to-read", "msmix"),
                      ("synth-tfn-none-seed3-a-rather-long-run-name-to-read", "none")):
        result = invoke("train", *TINY, "--mix", mix, "--data-root", root / "data", "--out", runs, "--name", name)
        assert result.exit_code == 0, result.output
    return runs, root / "data"


# ------------------------------------------------------------------------------------------------ help text

def test_flags_and_lists_are_labelled_as_they_are_typed():
    text = invoke("train", "--help").output
    assert "<bool>" not in text and "<list[str]>" not in text
    assert "KEY=VALUE" in text
    assert "(synth)" in text and "(tfn)" in text and "1111" in text  # the defaults the recipe gives
    evaluate = invoke("evaluate", "--help").output
    assert "{run_dirs}" not in evaluate and "<list[Path]>" not in evaluate and "RUN" in evaluate


def test_short_help_and_version():
    assert invoke("train", "-h").exit_code == 0 and "--dry-run" in invoke("train", "-h").output
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"msmix {__version__}"


@pytest.mark.parametrize("command", ["download", "preprocess"])
def test_data_commands_show_examples(command):
    text = invoke(command, "--help").output
    assert text.count("Example: msmix " + command) >= 2


# ------------------------------------------------------------------------------------------------ tables

def test_a_table_into_a_file_keeps_every_name_and_number(two_runs):
    runs, data = two_runs
    result = invoke("evaluate", *sorted(runs.iterdir()), "--data-root", data)
    assert result.exit_code == 0, result.output
    for run in runs.iterdir():
        assert run.name in result.stdout
        metrics = json.loads((run / "metrics.json").read_text())["metrics"]
        for name, value in metrics.items():
            assert format_cell(name, value) in result.stdout, name
    assert "…" not in result.stdout


def test_a_narrow_terminal_leaves_out_columns_but_cuts_no_number(monkeypatch):
    names = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]
    rows = [{"variant": label, "seeds": "3", **{n: (0.751234, 0.01234) for n in names}}
            for label in ("MS-Mix", "−SASS", "none (no mixing)")]
    screen, notes = io.StringIO(), io.StringIO()
    monkeypatch.setattr(app_module, "out", Console(file=screen, width=80, force_terminal=True, color_system=None))
    monkeypatch.setattr(app_module, "err", Console(file=notes, width=80, color_system=None))
    app_module.print_table(comparison_table(rows, names, title="t", label_columns=["variant", "seeds"]), names)
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert "0.7512" in text and "MS-Mix" in text  # the most read metric stays, whole
    assert "left out to fit 80 columns" in notes.getvalue() and "--columns all" in notes.getvalue()

    screen.truncate(0)
    app_module.print_table(comparison_table(rows, names, title="t", label_columns=["variant", "seeds"]), names, all_columns=True)
    assert "Acc-7" in screen.getvalue() and "…" not in screen.getvalue()


def test_a_long_path_on_stderr_is_not_broken_across_lines(two_runs, tmp_path):
    _, data = two_runs
    out = tmp_path / ("a-folder-with-a-long-name-" * 4) / "runs"
    result = invoke("train", *TINY, "--max-epochs", "1", "--data-root", data, "--out", out, "--name", "r")
    assert result.exit_code == 0, result.output
    assert f"saved to {out / 'r'}" in result.stderr.splitlines()[-1]


# ------------------------------------------------------------------------------------------------ evaluate runs/*

def test_evaluate_many_skips_what_is_not_a_run(two_runs, tmp_path):
    runs, data = two_runs
    folder = tmp_path / "runs"
    shutil.copytree(runs, folder)
    (folder / "empty").mkdir()
    (folder / "abl-mult").mkdir()
    (folder / "abl-mult" / "ablation.csv").write_text("variant\n")
    (folder / "summary.csv").write_text("x\n")
    result = invoke("evaluate", *sorted(folder.iterdir()), "--format", "csv", "--data-root", data)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(row["run"] for row in rows) == sorted(p.name for p in runs.iterdir())
    for skipped in ("empty", "abl-mult", "summary.csv"):
        assert skipped in result.stderr


def test_evaluate_many_with_no_run_is_bad_input(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    result = invoke("evaluate", tmp_path / "a", tmp_path / "b")
    assert result.exit_code == 2 and "none of the 2 paths is a complete msmix run" in result.stderr


# ------------------------------------------------------------------------------------------------ refused runs

def test_a_dataset_without_cache_leaves_no_run_directory(tmp_path):
    result = invoke("train", "--dataset", "mosi", "--data-root", tmp_path / "data", "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_leaves_no_run_directory(tmp_path):
    result = invoke("train", "--device", "cuda", "--samples", 40, "--data-root", tmp_path / "data", "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ rows say what they are

def test_metrics_and_evaluate_rows_name_dataset_backbone_mix_seed(two_runs):
    runs, data = two_runs
    identity = {"dataset": "synth", "backbone": "tfn", "seed": 3}
    for run in runs.iterdir():
        saved = json.loads((run / "metrics.json").read_text())
        # the msmix preset draws partners at random: its label says SASS was off
        assert {k: saved[k] for k in identity} == identity and saved["mix"] in ("msmix-nosass", "none")
    result = invoke("evaluate", *sorted(runs.iterdir()), "--format", "csv", "--data-root", data)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(row["mix"] for row in rows) == ["msmix-nosass", "none"]
    assert all(row["dataset"] == "synth" and row["backbone"] == "tfn" and row["seed"] == "3" for row in rows)
    single = json.loads(invoke("evaluate", sorted(runs.iterdir())[0], "--format", "json", "--data-root", data).stdout)
    assert single["dataset"] == "synth" and single["seed"] == 3


# ------------------------------------------------------------------------------------------------ dry run

def test_dry_run_prints_the_resolved_recipe():
    result = invoke("train", "--dry-run", "--backbone", "lmf", "--set", "train.lr=0.0042", "--seed", "7")
    assert result.exit_code == 0, result.output
    recipe_text, _, count = result.stdout.rpartition("lmf on synth:")
    recipe = yaml.safe_load(recipe_text)
    assert recipe["train"]["lr"] == 0.0042 and recipe["train"]["seed"] == 7 and recipe["model"]["name"] == "lmf"
    assert "trainable parameters" in count


def test_dry_run_counts_no_predictor_that_shapes_nothing():
    with_sig = invoke("train", "--dry-run", "--backbone", "lmf").stdout
    # msmix's preset keeps SAL off the encoder: without SIG the predictors' outputs reach nothing
    without_sig = invoke("train", "--dry-run", "--backbone", "lmf", "--no-sig").stdout
    # the authors' SAL trains the encoder through the predictors: they count even without SIG
    authors = invoke("train", "--dry-run", "--backbone", "lmf", "--no-sig", "--set", "mix.preset=authors").stdout
    assert "(+0 in the msmix-nosass-nosig mixer)" in without_sig
    assert "(+0 in" not in with_sig and "(+0 in" not in authors


# ------------------------------------------------------------------------------------------------ stderr, resume, disk

def test_json_output_keeps_the_epoch_lines_on_stderr(tmp_path):
    result = invoke("train", *TINY, "--format", "json", "--data-root", tmp_path / "data", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]
    assert "epoch   1  train loss" in result.stderr and "epoch   2  train loss" in result.stderr


def test_an_explicit_resume_says_from_which_epoch(tmp_path):
    common = ("--data-root", tmp_path / "data", "--out", tmp_path / "runs")
    result = invoke("train", "--samples", "80", "--max-epochs", "1", "--set", "train.early_stop=100", "--keep-last",
                    *common, "--name", "r")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "r"
    assert (run / "last.pt").is_file()  # --keep-last
    # The run as if it had stopped after epoch 1 of 2: its recipe asks for two, its status is interrupted.
    recipe = (run / "recipe.yaml").read_text().replace("max_epochs: 1\n", "max_epochs: 2\n")
    (run / "recipe.yaml").write_text(recipe)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    resumed = invoke("train", "--resume", run, "--data-root", tmp_path / "data")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from epoch 2 (1 of 2 epochs were complete)" in resumed.stderr


def test_make_demo_installs_no_test_extra(tmp_path):
    plan = subprocess.run(["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert plan.returncode == 0, plan.stderr
    installs = [line for line in plan.stdout.splitlines() if "pip install" in line]
    assert installs and not any("[test" in line for line in installs)
