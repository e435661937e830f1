"""Multi-process training: sharding like DistributedSampler, and two gloo processes on the CPU training exactly
as one process with twice the batch (`msmix train --nproc 2`, which launches torchrun on 127.0.0.1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from msmix_cli.data.synth import split_sizes
from msmix_cli.training.distributed import FollowerRun, Ranks, shard, without_option
from msmix_cli.training.rundir import RunDir

SAMPLES = 32  # synth: 18 training segments, so one step of 2 x 9 or of 1 x 18
TRAIN = split_sizes(SAMPLES)["train"]
# MulT has no BatchNorm (per-rank statistics would break the equality on CPU, where SyncBatchNorm does not run);
# no dropout, so both runs compute the same function. Adam's first step divides each gradient by its own size,
# so a gradient that is zero up to rounding (the output bias under L1 when as many predictions lie above their
# labels as below) would turn rounding noise into a full step: seed 3 has no such tie.
RECIPE = """\
data: {dataset: synth, samples: %d}
model: {name: mult, d_model: 16, heads: 2, layers: 1, attn_dropouts: [0.0, 0.0, 0.0], embed_dropout: 0.0,
        res_dropout: 0.0, out_dropout: 0.0, text_dropout: 0.0}
mix: {name: none}
train: {lr: 1.0e-3, max_epochs: 1, seed: 3, device: cpu, grad_clip: 0.6}
""" % SAMPLES


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("samples", [12, 13, 14])
def test_shard_is_distributed_samplers_share(world, samples):
    order = np.random.default_rng(0).permutation(samples)
    for rank in range(world):
        sampler = DistributedSampler(range(samples), num_replicas=world, rank=rank, shuffle=False)
        assert shard(order, Ranks(rank, world)).tolist() == [int(order[i]) for i in sampler]


def test_batch_k_of_all_ranks_is_batch_k_of_one_process():
    order = np.random.default_rng(1).permutation(24)
    per_rank = 4
    shards = [shard(order, Ranks(rank, 2)) for rank in range(2)]
    for k in range(3):
        together = np.concatenate([s[k * per_rank:(k + 1) * per_rank] for s in shards])
        assert sorted(together) == sorted(order[k * 2 * per_rank:(k + 1) * 2 * per_rank])


def test_without_option_drops_both_spellings():
    assert without_option(["train", "--nproc", "2", "--seed", "1", "--nproc=3"], "--nproc") == ["train", "--seed", "1"]


def test_follower_run_writes_nothing(tmp_path):
    follower = FollowerRun(tmp_path)
    follower.update_info(status="running")
    follower.write_history([{"epoch": 1}])
    follower.write_metrics({"MAE": 1.0})
    follower.save_best({"model": {}})
    follower.save_last({"model": {}})
    assert list(tmp_path.iterdir()) == []


def train(tmp_path: Path, name: str, *args: str) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    command = [sys.executable, "-m", "msmix_cli", "train", "--recipe", str(recipe), "--data-root", str(tmp_path / "data"),
               "--out", str(tmp_path / "runs"), "--name", name, "--format", "json", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # generous: only a hung run reaches it, however busy the machine
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "runs" / name


def test_two_gloo_processes_step_like_one_process_with_twice_the_batch(tmp_path):
    one = train(tmp_path, "one", "--set", f"train.batch_size={TRAIN}")
    two = train(tmp_path, "two", "--set", f"train.batch_size={TRAIN // 2}", "--nproc", "2")
    expected = torch.load(one / "checkpoint.pt", weights_only=True)["model"]
    got = torch.load(two / "checkpoint.pt", weights_only=True)["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-5, rtol=0), key
    info = json.loads((two / "run.json").read_text())
    assert info["status"] == "complete"
    assert len((two / "history.csv").read_text().splitlines()) == 2  # rank 0 alone wrote one epoch


def test_msmix_trains_on_two_processes(tmp_path):
    """MS-Mix pairs samples inside each rank's batch; its intensity predictors' gradients are averaged too."""
    run = train(tmp_path, "msmix", "--set", "train.batch_size=5", "--set", "mix.name=msmix", "--nproc", "2")
    assert json.loads((run / "metrics.json").read_text())["metrics"]["MAE"] is not None
    mixer = torch.load(run / "checkpoint.pt", weights_only=True)["mixer"]
    assert any(key.startswith("predictors.") for key in mixer)
