"""`msmix train --log tensorboard|mlflow`, tested with the real libraries where they are installed
(`pip install 'msmix[tensorboard]' 'msmix[mlflow]'`), skipped with the reason otherwise."""

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msmix_cli.cli import app

runner = CliRunner()
TINY = ("--samples", "80", "--max-epochs", "2", "--set", "train.early_stop=100")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_a_tracker_whose_library_is_missing_is_refused_before_the_run(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = invoke("train", *TINY, "--log", "mlflow", "--data-root", tmp_path / "data", "--out", tmp_path / "runs")
    assert result.exit_code == 2 and "pip install 'msmix[mlflow]'" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_tensorboard_gets_every_epoch_the_recipe_and_the_test_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = invoke("train", *TINY, "--log", "tensorboard", "--data-root", tmp_path / "data", "--out", tmp_path / "runs",
                    "--name", "r")
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "runs" / "r" / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    tags = events.Tags()
    for tag in ("train_loss", "train_task", "train_mix", "train_sal", "valid_loss", "valid_MAE", "lr"):
        assert [s.step for s in events.Scalars(tag)] == [1, 2], tag
    assert events.Scalars("test_MAE")[0].value > 0
    assert "recipe/text_summary" in tags["tensors"]


def test_mlflow_gets_params_every_epoch_and_the_test_metrics(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    result = invoke("train", *TINY, "--log", "mlflow", "--mlflow-uri", uri, "--data-root", tmp_path / "data",
                    "--out", tmp_path / "runs", "--name", "r")
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("msmix")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    assert run.data.params["train.max_epochs"] == "2" and run.data.params["model.name"] == "tfn"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_MAE")] == [1, 2]
    assert "test_MAE" in run.data.metrics
    assert any(a.path == "recipe.yaml" for a in client.list_artifacts(run.info.run_id))
