"""GPU paths: mixed precision (bf16, or fp16 with a gradient scaler), pinned non-blocking copies, torch.compile,
and DDP over NCCL with SyncBatchNorm. Skipped where no CUDA device is present."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from msmix_cli.recipes import resolve_recipe
from msmix_cli.training.device import amp_dtype, to_device
from msmix_cli.training.loop import fit
from msmix_cli.training.rundir import RunDir
from msmix_cli.types import Batch, Multimodal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def train_on_cuda(tmp_path, name, *assignments):
    recipe = resolve_recipe(None, dataset="synth", backbone="tfn",
                            assignments=["data.samples=120", "train.max_epochs=2", "train.batch_size=16", "train.device=cuda",
                                          *assignments])
    return fit(recipe, RunDir.create(tmp_path / "runs", name), data_root=tmp_path / "data")


def test_amp_picks_native_bf16_else_fp16():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    assert amp_dtype(CUDA, enabled=True) == expected
    assert amp_dtype(CUDA, enabled=False) is None


def test_batches_reach_the_gpu_through_pinned_memory():
    features = {m: torch.randn(4, 6, 3) for m in ("text", "audio", "vision")}
    batch = Batch(Multimodal(features, {m: torch.full((4,), 6) for m in features}), torch.zeros(4))
    moved = to_device(batch, CUDA)
    torch.cuda.synchronize()
    assert moved.label.is_cuda and all(moved.inputs[m].is_cuda for m in features)
    assert torch.equal(moved.inputs["text"].cpu(), features["text"])


@pytest.mark.parametrize("mixer", ["none", "msmix"])
def test_amp_training_gives_finite_metrics(tmp_path, mixer):
    result = train_on_cuda(tmp_path, mixer, f"mix.name={mixer}")
    assert np.isfinite(result["metrics"]["MAE"])


def test_fp16_with_gradient_scaler(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert amp_dtype(CUDA, enabled=True) == torch.float16
    assert np.isfinite(train_on_cuda(tmp_path, "fp16")["metrics"]["MAE"])


def test_compiled_backbone_trains(tmp_path):
    eager = train_on_cuda(tmp_path, "eager", "train.amp=false")
    compiled = train_on_cuda(tmp_path, "compiled", "train.amp=false", "train.compile=true")
    assert compiled["metrics"]["MAE"] == pytest.approx(eager["metrics"]["MAE"], abs=0.05)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_with_sync_batchnorm_step_like_one(tmp_path):
    """TFN has BatchNorm: as SyncBatchNorm its statistics span both ranks, so 2 x 9 steps like 1 x 18."""
    def run(name, *args):
        command = [sys.executable, "-m", "msmix_cli", "train", "--samples", "32", "--max-epochs", "1", "--seed", "3",
                   "--mix", "none", "--device", "cuda", "--set", "train.amp=false", "--set", "model.dropouts=[0,0,0,0]",
                   "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--name", name,
                   "--format", "json", *args]
        # generous: only a hung run reaches it, however busy the machine
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=os.environ)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((tmp_path / "runs" / name / "run.json").read_text())["status"] == "complete"
        return torch.load(tmp_path / "runs" / name / "checkpoint.pt", weights_only=True)["model"]

    one = run("one", "--set", "train.batch_size=18")
    two = run("two", "--set", "train.batch_size=9", "--nproc", "2")
    for key in one:
        assert torch.allclose(two[key], one[key], atol=1e-4, rtol=0), key
