"""Run folders: a name is a folder inside --out, a folder has one writer at a time, and a run killed at any
moment (even while writing its first file) goes on or starts again in place; dead writers' temporary files go."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from msmix_cli.cli import app
from msmix_cli.io import atomic_write_text

runner = CliRunner()
TINY = ["train", "--backbone", "lmf", "--mix", "none", "--samples", "40", "--max-epochs", "2", "--seed", "4",
        "--set", "train.threads=1", "--format", "json"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (result.exit_code, result.stderr)
    return lines[0]


def dead_pid() -> int:
    """The id of a process that has ended (reused only after the system wraps its process ids)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data", tmp_path / "runs"


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".", "/tmp/msmix-absolute-name", ""])
def test_a_name_is_a_folder_name_not_a_path(roots, name: str) -> None:
    data, runs = roots
    result = invoke(*TINY, "--data-root", data, "--out", runs, "--name", name)
    assert "not a folder name" in one_error_line(result)
    assert not (runs.parent / "escaped").exists() and not Path("/tmp/msmix-absolute-name").exists()
    assert not runs.exists() or not any(runs.rglob("*.json"))


def test_a_run_folder_in_use_is_refused_in_one_line(roots) -> None:
    data, runs = roots
    folder = runs / "x"
    folder.mkdir(parents=True)
    holder = os.open(folder, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # what another msmix process training into runs/x holds
    try:
        result = invoke(*TINY, "--data-root", data, "--out", runs, "--name", "x")
        assert "in use by another msmix process" in one_error_line(result)
        assert list(folder.iterdir()) == []
    finally:
        os.close(holder)
    result = invoke(*TINY, "--data-root", data, "--out", runs, "--name", "x")  # the holder has gone: the lock with it
    assert result.exit_code == 0, result.stderr


def test_two_default_names_of_the_same_second_get_a_folder_each(roots, monkeypatch) -> None:
    data, runs = roots
    monkeypatch.setattr("msmix_cli.cli.train.time.strftime", lambda *_: "20260101-000000")
    for lr in ("1e-3", "2e-3"):
        assert invoke(*TINY, "--data-root", data, "--out", runs, "--set", f"train.lr={lr}").exit_code == 0
    folders = sorted(p.name for p in runs.iterdir())
    assert folders == ["synth-lmf-none-seed4-20260101-000000", "synth-lmf-none-seed4-20260101-000000-2"]
    assert all(json.loads((runs / f / "run.json").read_text())["status"] == "complete" for f in folders)


def killed_while_writing_its_recipe(run: Path) -> None:
    run.mkdir(parents=True)
    (run / f".recipe.yaml.{dead_pid()}.k3j9x0aa.tmp").write_text("data: {dataset: syn")


def killed_before_its_run_json(run: Path) -> None:
    """A complete run cut back to what a run killed between its first two files holds."""
    for entry in run.iterdir():
        if entry.name != "recipe.yaml":
            entry.unlink()


@pytest.mark.parametrize("resume_flag", [False, True])
def test_a_run_killed_before_its_run_json_resumes_in_place(roots, resume_flag: bool) -> None:
    data, runs = roots
    assert invoke(*TINY, "--data-root", data, "--out", runs, "--name", "r").exit_code == 0
    expected = json.loads((runs / "r" / "metrics.json").read_text())
    killed_before_its_run_json(runs / "r")
    again = (["train", "--resume", runs / "r", "--data-root", data, "--format", "json"] if resume_flag
             else [*TINY, "--data-root", data, "--out", runs, "--name", "r"])
    result = invoke(*again)
    assert result.exit_code == 0, result.stderr
    assert json.loads((runs / "r" / "metrics.json").read_text()) == expected
    info = json.loads((runs / "r" / "run.json").read_text())
    assert info["status"] == "complete" and "versions" in info


def test_a_run_killed_while_writing_its_recipe_starts_again_in_place(roots) -> None:
    data, runs = roots
    killed_while_writing_its_recipe(runs / "r")
    result = invoke("train", "--resume", runs / "r", "--data-root", data)
    assert "start" in one_error_line(result) and "again" in result.stderr  # says what to run
    result = invoke(*TINY, "--data-root", data, "--out", runs, "--name", "r")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (runs / "r").iterdir() if p.name.startswith(".")) == []


def test_a_dead_writers_temporary_file_goes_on_resume(roots) -> None:
    data, runs = roots
    assert invoke(*TINY, "--data-root", data, "--out", runs, "--name", "r").exit_code == 0
    run = runs / "r"
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    (run / ".last.pt.x8f2k1lm.tmp").write_bytes(b"half a checkpoint")  # an older msmix's name: no process id
    (run / f".checkpoint.pt.{dead_pid()}.q0w9e8r7.tmp").write_bytes(b"half a checkpoint")
    result = invoke("train", "--resume", run, "--data-root", data, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_an_atomic_write_removes_dead_writers_temporaries_of_its_file_only(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getpid()
    names = [f".mosi-aligned.h5.{dead}.a1b2c3d4.tmp", f".mosi-aligned.h5.{alive}.e5f6g7h8.tmp",
             f".other.h5.{dead}.i9j0k1l2.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    atomic_write_text(tmp_path / "mosi-aligned.h5", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mosi-aligned.h5", *names[1:]])


def test_an_atomic_write_gets_the_mode_the_umask_gives(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("complete")
    result = invoke(*TINY, "--data-root", root / "data", "--out", root / "runs", "--name", "done")
    assert result.exit_code == 0, result.stderr
    return root / "runs" / "done", root / "data"


def another_shape(state: dict) -> dict:
    return {**state, "model": {key: torch.zeros(3) for key in state["model"]}}


@pytest.mark.parametrize("spoil", [lambda state: {"model": {}}, lambda state: [1, 2], another_shape,
                                   lambda state: {"weights": state["model"]}])
def test_a_checkpoint_with_the_wrong_contents_is_bad_input_naming_it(complete_run, tmp_path, spoil) -> None:
    run, data = complete_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    torch.save(spoil(torch.load(copy / "checkpoint.pt", weights_only=True)), copy / "checkpoint.pt")
    result = invoke("evaluate", copy, "--data-root", data)
    assert f"checkpoint {copy / 'checkpoint.pt'} does not match" in one_error_line(result)


def test_a_resume_point_with_the_wrong_contents_is_bad_input_naming_it(complete_run, tmp_path) -> None:
    run, data = complete_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    torch.save({"model": {}}, copy / "last.pt")
    result = invoke("train", "--resume", copy, "--data-root", data)
    assert f"checkpoint {copy / 'last.pt'} does not match" in one_error_line(result)
