"""`msmix tune`: search spaces are checked before training, trials never read test, two workers share one
SQLite study without running a trial twice, and a worker killed with SIGKILL loses only its trial in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna")

from msmix_cli import tuning  # noqa: E402
from msmix_cli.cli import app  # noqa: E402
from msmix_cli.recipes import resolve_recipe  # noqa: E402
from msmix_cli.training import loop  # noqa: E402
from msmix_cli.training.rundir import RunDir  # noqa: E402

runner = CliRunner()
TINY_SPACE = {"mix.alpha": {"float": [0.5, 3.0], "log": True}, "mix.w_mix": {"float": [0.1, 1.0]},
              "train.lr": {"choices": [0.001, 0.003]}}
TIMEOUT_S = 1800  # generous: the test machine is shared; nothing here is timed


def tiny_args(tmp_path: Path, space: Path, *extra: str) -> list[str]:
    return ["tune", "--dataset", "synth", "--backbone", "lmf", "--samples", "60", "--max-epochs", "2", "--space", str(space),
            "--study", str(tmp_path / "study"), "--data-root", str(tmp_path / "data"), "--pruner", "none", *extra]


def write_space(tmp_path: Path, space: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space))
    return path


def msmix(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would block the workers' output
        return subprocess.Popen([sys.executable, "-m", "msmix_cli", *args], cwd=cwd, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, text=True)


def trials(study_folder: Path) -> list:
    storage = tuning.open_storage(tuning.default_storage(study_folder), heartbeat=False)
    return optuna.load_study(study_name=study_folder.name, storage=storage).get_trials()


# ---------------------------------------------------------------- spaces: bad input before any training

@pytest.mark.parametrize("space, fragment", [
    ({"mix.alphaa": {"float": [0.1, 1.0]}}, "unknown key mix.alphaa"),
    ({"optim.lr": {"float": [0.1, 1.0]}}, "unknown recipe section"),
    ({"train.lr": {"float": [-1e-3, 1e-2], "log": True}}, "log range must be positive"),
    ({"train.lr": {"float": [1e-2, 1e-3]}}, "impossible range"),
    ({"train.batch_size": {"choices": []}}, "non-empty list"),
    ({"mix.delta": {"float": [0.0, 2.0]}}, "mix.delta must be in [0, 1]"),
    ({"train.batch_size": {"int": [8, 32.5]}}, "integers"),
    ({"train.seed": {"int": [1, 5]}}, "holds train.seed fixed"),
    ({"mix.alpha": {"float": [0.1, 1.0], "lg": True}}, "unknown field 'lg'"),
])
def test_a_bad_space_is_one_line_exit_2_before_any_training(tmp_path, space, fragment):
    result = runner.invoke(app, tiny_args(tmp_path, write_space(tmp_path, space), "--trials", "1"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
    assert lines[0].startswith("error:")
    assert not (tmp_path / "study").exists() and not (tmp_path / "data").exists()


def test_the_shipped_msmix_space_is_valid_for_every_key_it_names():
    recipe = resolve_recipe(None, dataset="synth", backbone="lmf")
    space = tuning.read_space(tuning.default_space_path("msmix"))
    spec = tuning.make_spec(recipe, space, "msmix.yaml", "valid_MAE")
    assert {p.key for p in spec.params()} >= {"mix.alpha", "mix.delta", "mix.w_mix", "mix.w_sal", "mix.sal_scale", "train.lr"}


def test_an_objective_that_is_not_a_validation_metric_is_bad_input(tmp_path):
    result = runner.invoke(app, tiny_args(tmp_path, write_space(tmp_path, TINY_SPACE), "--objective", "test_MAE"))
    assert result.exit_code == 2 and "--objective must be a validation metric" in result.stderr


@pytest.mark.parametrize("flag", ["--trials", "--workers"])
def test_zero_trials_or_workers_is_bad_input_before_a_study_exists(tmp_path, flag):
    result = runner.invoke(app, [*tiny_args(tmp_path, write_space(tmp_path, TINY_SPACE)), flag, "0"])
    assert result.exit_code == 2 and ">= 1" in result.stderr
    assert not (tmp_path / "study").exists()


def test_an_existing_study_refuses_another_space(tmp_path):
    recipe = resolve_recipe(None, dataset="synth", backbone="lmf", overrides={"data": {"samples": 60}})
    place = tuning.study_place(tmp_path / "study", None, None, "unused")
    tuning.resolve_study(place, tuning.make_spec(recipe, TINY_SPACE, "a", "valid_MAE"))
    other = {**TINY_SPACE, "mix.w_mix": {"float": [0.2, 1.0]}}
    with pytest.raises(tuning.BadInput, match="another space"):
        tuning.resolve_study(place, tuning.make_spec(recipe, other, "b", "valid_MAE"))
    assert tuning.resolve_study(place, None).space == TINY_SPACE  # the folder alone continues the study


# ---------------------------------------------------------------- trials never read test

def test_a_trial_never_predicts_the_test_split(tmp_path, monkeypatch):
    splits = []
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda setup, split, *a, **k: splits.append(split) or real(setup, split, *a, **k))
    recipe = resolve_recipe(None, dataset="synth", backbone="lmf", overrides={"data": {"samples": 60}, "train": {"max_epochs": 2}})
    result = loop.fit(recipe, RunDir.create(tmp_path, "run"), data_root=tmp_path / "data", test=False)
    assert splits == ["valid", "valid"] and result["split"] == "valid"
    assert not (tmp_path / "run" / "metrics.json").exists()
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    row = dict(zip(history[0].split(","), history[result["best_epoch"]].split(",")))
    assert float(row["valid_MAE"]) == result["metrics"]["MAE"]  # the best-validation epoch's own metrics


# ---------------------------------------------------------------- two workers, one study; --report; --final

@pytest.mark.slow
def test_two_workers_finish_four_distinct_trials_then_report_and_final(tmp_path):
    space = write_space(tmp_path, TINY_SPACE)
    process = msmix(tiny_args(tmp_path, space, "--trials", "4", "--workers", "2"), tmp_path, tmp_path / "tune.log")
    assert process.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "tune.log").read_text()
    study = tmp_path / "study"
    done = [t for t in trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and len(trials(study)) == 4
    assert len({t.number for t in done}) == 4 and len({t.user_attrs["run_dir"] for t in done}) == 4
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers trained
    for t in done:
        run = study / t.user_attrs["run_dir"]
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "complete" and info["objective_value"] == t.value
        assert (run / "history.csv").is_file() and (run / "checkpoint.pt").is_file()
    assert not list(study.rglob("metrics.json"))  # no test metrics anywhere before --final

    report = runner.invoke(app, ["tune", "--study", str(study), "--report"])
    assert report.exit_code == 0, report.stderr
    assert "top 4 trials by valid_MAE" in report.stdout and "importances" in report.stdout
    assert (study / "history.png").stat().st_size > 0

    final = runner.invoke(app, ["tune", "--study", str(study), "--final", "--seeds", "2", "--data-root", str(tmp_path / "data")])
    assert final.exit_code == 0, final.stderr
    summary = json.loads((study / "final" / "summary.json").read_text())
    best_seed = json.loads((study / "final" / "tuned-seed1112" / "run.json").read_text())["seed"]
    assert summary["reference"] == "default" and best_seed == 1112  # fresh seeds: the trials trained with 1111
    assert {row["variant"] for row in summary["rows"]} == {"tuned", "default"}
    assert "tuned − default" in final.stdout
    assert not list((study / "trials").rglob("metrics.json"))  # --final trains new runs; trials stay untouched


# ---------------------------------------------------------------- kill -9 of a worker

def training_trial(study: Path) -> tuple[int, int] | None:
    """(trial number, worker pid) of a trial past its first epoch and still training, as its run.json says."""
    for run in sorted((study / "trials").glob("trial-*")):
        try:
            info = json.loads((run / "run.json").read_text())
        except (OSError, ValueError):  # not written yet
            continue
        if info.get("status") == "running" and (run / "history.csv").exists():
            return info["trial"], int(info["worker"].rpartition(":")[2])
    return None


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_only_that_trial_and_a_rerun_completes(tmp_path):
    space = write_space(tmp_path, TINY_SPACE)
    args = tiny_args(tmp_path, space, "--trials", "4", "--workers", "2")
    args[args.index("--max-epochs") + 1] = "3"
    study = tmp_path / "study"
    process = msmix(args, tmp_path, tmp_path / "tune.log")
    deadline = time.time() + TIMEOUT_S
    killed = None
    while killed is None and process.poll() is None and time.time() < deadline:
        found = training_trial(study)
        if not found:
            time.sleep(0.05)
            continue
        number, pid = found
        os.kill(pid, signal.SIGSTOP)  # frozen, the trial cannot finish between the check and the kill
        if training_trial(study) == (number, pid):
            os.kill(pid, signal.SIGKILL)
            killed = number
        else:
            os.kill(pid, signal.SIGCONT)
    assert killed is not None, (tmp_path / "tune.log").read_text()
    assert process.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "tune.log").read_text()  # the survivor finished the study
    assert "1 worker(s) stopped early" in (tmp_path / "tune.log").read_text()

    rerun = msmix(args, tmp_path, tmp_path / "rerun.log")
    assert rerun.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "rerun.log").read_text()
    states = {t.number: t for t in trials(study)}
    complete = [t for t in states.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4  # the budget, not one more
    assert states[killed].state == optuna.trial.TrialState.FAIL  # the dead worker's trial is marked failed ...
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].params == states[killed].params  # ... and retried once, as a new trial
    assert len({t.user_attrs["run_dir"] for t in complete}) == 4
