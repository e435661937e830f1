"""Resume: a run killed with SIGKILL mid-training and resumed ends with exactly the metrics of an uninterrupted run.

Kills follow the progress a run reports (its first epoch written), never a sleep; the limits are generous
(30 min), so that a loaded 2-core machine is slow, not failing.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

# Small work (LMF, one thread); early stopping off so the run always lasts max-epochs.
ARGS = ["train", "--backbone", "lmf", "--samples", "200", "--max-epochs", "4", "--seed", "5", "--set", "train.batch_size=8",
        "--set", "train.early_stop=100", "--set", "train.threads=1", "--format", "json"]
LIMIT = 1800  # seconds: reached only by a hung run


def msmix(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "msmix_cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_first_epoch(run: Path, process: subprocess.Popen) -> None:
    """Until `last.pt` exists (renamed into place only when complete); a stat, so the poll never lags the run."""
    deadline = time.monotonic() + LIMIT
    while not (run / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def last_epoch(run: Path) -> int:
    try:
        return torch.load(run / "last.pt", weights_only=True)["epoch"]
    except Exception:  # not written yet, or being renamed into place
        return 0


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    common = ["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    reference = msmix([*ARGS, *common, "--name", "reference"], tmp_path)
    assert reference.wait(timeout=LIMIT) == 0, reference.stderr.read()

    victim = msmix([*ARGS, *common, "--name", "victim"], tmp_path)
    run = tmp_path / "runs" / "victim"
    wait_for_first_epoch(run, victim)
    victim.send_signal(signal.SIGKILL)  # epoch 1 is saved; the kill lands in epoch 2, however slow the machine
    victim.wait()
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert not (run / "metrics.json").exists()

    resumed = msmix(["train", "--resume", str(run), "--data-root", str(tmp_path / "data"), "--format", "json"], tmp_path)
    assert resumed.wait(timeout=LIMIT) == 0, resumed.stderr.read()
    expected = json.loads((tmp_path / "runs" / "reference" / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    assert got == expected
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed_from_epoch"] >= 1


def test_sigterm_stops_at_a_safe_point_and_says_how_to_resume(tmp_path):
    common = ["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--name", "stopped"]
    process = msmix([*ARGS, "--max-epochs", "50", *common], tmp_path)
    run = tmp_path / "runs" / "stopped"
    wait_for_first_epoch(run, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=LIMIT)
    assert process.returncode == 130
    assert "msmix train --resume" in stderr and "Traceback" not in stderr
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert last_epoch(run) >= 1


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    from msmix_cli.training.seeding import capture_rng, restore_rng, seed_everything
    import numpy as np
    import random

    rng = seed_everything(7)
    torch.save(capture_rng(rng), tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(), rng.random(), torch.rand(1).item())
    restore_rng(torch.load(tmp_path / "state.pt", weights_only=True), rng)
    assert (random.random(), np.random.rand(), rng.random(), torch.rand(1).item()) == expected
