"""The CLI end to end through Typer's CliRunner: exit codes, one-line errors, train -> evaluate round trip."""

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from msmix_cli.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One small real run shared by the evaluate tests."""
    root = tmp_path_factory.mktemp("cli")
    data, runs = root / "data", root / "runs"
    result = invoke("train", "--samples", 80, "--max-epochs", 2, "--data-root", data, "--out", runs, "--name", "tiny", "--seed", 3)
    assert result.exit_code == 0, result.output + str(result.exception)
    return runs / "tiny", data


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "evaluate"):
        assert command in result.output


def test_train_writes_a_complete_run(trained):
    run, _ = trained
    for name in ("recipe.yaml", "run.json", "checkpoint.pt", "history.csv", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "last.pt").exists()  # a complete run is never resumed: no resume point kept (--keep-last keeps it)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["seed"] == 3 and "torch" in info["versions"]
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}
    assert (run / "recipe.yaml").read_text().startswith("# msmix ")


def test_evaluate_json_matches_metrics_file(trained):
    run, data = trained
    result = invoke("evaluate", run, "--format", "json", "--data-root", data)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    saved = json.loads((run / "metrics.json").read_text())
    assert printed["metrics"] == saved["metrics"]


def test_evaluate_csv_is_one_row(trained):
    run, data = trained
    result = invoke("evaluate", run, "--format", "csv", "--data-root", data)
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1 and float(rows[0]["MAE"]) >= 0


def test_evaluate_table_shows_metric_names(trained):
    run, data = trained
    result = invoke("evaluate", run, "--data-root", data)
    assert result.exit_code == 0
    for name in ("Acc-2", "F1", "Acc-5", "Acc-7", "MAE", "Corr"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--dataset", "nosuch"], "nosuch"),
        (["train", "--backbone", "nosuch"], "nosuch"),
        (["train", "--mix", "nosuch"], "nosuch"),
        (["train", "--drop", "nosuch"], "nosuch"),
        (["train", "--set", "train.nosuch=1"], "train.nosuch"),
        (["train", "--set", "train.lr"], "section.key=value"),
        (["train", "--recipe", "does/not/exist.yaml"], "recipe not found"),
        (["train", "--device", "tpu"], "tpu"),
        (["evaluate", "no/such/run"], "no run directory"),
        (["evaluate", ".", "--split", "dev"], "dev"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_malformed_recipe_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1,\n")
    result = invoke("train", "--recipe", bad)
    assert result.exit_code == 2 and "malformed YAML" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_without_gpu_is_bad_input(tmp_path):
    result = invoke("train", "--device", "cuda", "--samples", 40, "--data-root", tmp_path)
    assert result.exit_code == 2 and "CUDA" in result.stderr


def test_dry_run_prints_parameter_count(tmp_path):
    result = invoke("train", "--dry-run", "--samples", 40, "--data-root", tmp_path, "--backbone", "tfn")
    assert result.exit_code == 0 and "trainable parameters" in result.stdout


def test_incomplete_run_is_refused(trained, tmp_path):
    run, data = trained
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("recipe.yaml", "checkpoint.pt"):
        (partial / name).write_bytes((run / name).read_bytes())
    (partial / "run.json").write_text(json.dumps({"status": "running"}))
    result = invoke("evaluate", partial, "--data-root", data)
    assert result.exit_code == 2 and "not complete" in result.stderr


def test_an_internal_error_is_one_line_and_exit_1(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("something inside broke")

    monkeypatch.setattr("msmix_cli.training.loop.fit", broken)
    monkeypatch.delenv("MSMIX_DEBUG", raising=False)
    result = invoke("train", "--samples", 40, "--data-root", tmp_path / "data", "--out", tmp_path / "runs")
    assert result.exit_code == 1
    assert "internal error: ValueError: something inside broke" in result.output
    assert "Traceback" not in result.output


def test_a_training_set_that_leaves_one_sample_over_trains(tmp_path):
    # 233 training segments in batches of 8 leave one over: BatchNorm cannot train on a batch of one
    result = invoke("train", "--samples", 400, "--max-epochs", 1, "--set", "train.batch_size=8", "--format", "json",
                    "--data-root", tmp_path / "data", "--out", tmp_path / "runs", "--name", "odd")
    assert result.exit_code == 0, result.output


def test_dry_run_needs_no_data_and_prints_the_reference_count(tmp_path):
    result = invoke("train", "--dry-run", "--dataset", "mosi", "--backbone", "mult", "--data-root", tmp_path / "empty")
    assert result.exit_code == 0, result.output
    assert "2,571,551 trainable parameters" in result.output  # MMSA's MulT at MOSI's settings
    assert not (tmp_path / "empty").exists()
