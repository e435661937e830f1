"""Test-time perturbations (a modality zeroed, Gaussian noise) and `msmix evaluate` over several runs."""

import csv
import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from msmix_cli.cli import app
from msmix_cli.errors import BadInput
from msmix_cli.training.loop import build, evaluate_run
from msmix_cli.training.perturb import PerturbSpec, drop_modalities, gaussian_noise
from msmix_cli.training.rundir import RunDir
from msmix_cli.types import Batch, Multimodal

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def make_batch(size: int = 4, steps: int = 6) -> Batch:
    generator = torch.Generator().manual_seed(0)
    features, lengths = {}, {}
    for m, dim in (("text", 5), ("audio", 3), ("vision", 4)):
        lengths[m] = torch.tensor([steps, steps - 2, 1, 3][:size])
        x = torch.randn(size, steps, dim, generator=generator)
        valid = torch.arange(steps)[None, :] < lengths[m][:, None]
        features[m] = x * valid.unsqueeze(-1)
    return Batch(Multimodal(features, lengths), label=torch.linspace(-2, 2, size), text_ids=torch.ones(size, 3, steps, dtype=torch.long))


def padding(batch: Batch, modality: str) -> torch.Tensor:
    return batch.inputs.features[modality][~batch.inputs.mask(modality)]


def test_drop_zeroes_one_modality_and_leaves_the_rest():
    batch = make_batch()
    before = {m: x.clone() for m, x in batch.inputs.features.items()}
    dropped = drop_modalities(["audio"])(batch)
    assert torch.count_nonzero(dropped.inputs["audio"]) == 0
    assert torch.equal(dropped.inputs["text"], before["text"]) and torch.equal(dropped.inputs["vision"], before["vision"])
    assert torch.equal(dropped.label, batch.label) and dropped.inputs.lengths == batch.inputs.lengths
    assert all(torch.equal(batch.inputs.features[m], before[m]) for m in before)  # the input batch is untouched


def test_dropping_text_also_hides_its_token_ids():
    assert drop_modalities(["text"])(make_batch()).text_ids is None
    assert drop_modalities(["vision"])(make_batch()).text_ids is not None


def test_noise_is_seeded_keeps_padding_zero_and_spares_the_input():
    batch = make_batch()
    original = batch.inputs.features["audio"].clone()
    first = gaussian_noise(0.5, seed=3)(batch)
    again = gaussian_noise(0.5, seed=3)(batch)
    other = gaussian_noise(0.5, seed=4)(batch)
    for m in ("text", "audio", "vision"):
        assert torch.equal(first.inputs[m], again.inputs[m])
        assert not torch.equal(first.inputs[m], other.inputs[m])
        assert torch.count_nonzero(padding(first, m)) == 0
        valid = batch.inputs.mask(m)
        assert torch.all(first.inputs[m][valid] != batch.inputs[m][valid])
    assert torch.equal(batch.inputs.features["audio"], original)


def test_a_sample_gets_the_same_noise_in_any_batch_size():
    batch = replace(make_batch(), index=torch.tensor([10, 11, 12, 13]))
    whole = gaussian_noise(0.5, seed=1)(batch)
    in_halves = gaussian_noise(0.5, seed=1)
    halves = [in_halves(select(batch, rows)) for rows in ([0, 1], [2, 3])]
    for m in ("text", "audio", "vision"):
        assert torch.equal(whole.inputs[m], torch.cat([h.inputs[m] for h in halves]))


def select(batch: Batch, rows: list[int]) -> Batch:
    picked = torch.tensor(rows)
    return Batch(batch.inputs.select(picked), batch.label[picked], batch.text_ids[picked], batch.index[picked])


def test_noise_has_the_asked_spread():
    big = Batch(Multimodal({"text": torch.zeros(200, 50, 20)}, {"text": None}), label=torch.zeros(200))
    noisy = gaussian_noise(0.3, modalities=["text"])(big).inputs["text"]
    assert noisy.std().item() == pytest.approx(0.3, rel=0.02) and abs(noisy.mean().item()) < 0.01


def test_spec_never_puts_noise_on_a_dropped_modality():
    spec = PerturbSpec.from_options("vision", 1.0, None, seed=0)
    perturbed = spec.build()(make_batch())
    assert torch.count_nonzero(perturbed.inputs["vision"]) == 0
    assert spec.describe() == "vision zeroed, noise σ=1 on text+audio"
    assert PerturbSpec.from_options(None, None, None, 0).build() is None
    assert PerturbSpec.from_options(None, 0.2, "audio", 0).describe() == "noise σ=0.2 on audio"


@pytest.mark.parametrize("drop, sigma, on", [("sound", None, None), (None, -1.0, None), (None, math.nan, None), (None, 0.1, "txt")])
def test_spec_rejects_bad_options(drop, sigma, on):
    with pytest.raises(BadInput):
        PerturbSpec.from_options(drop, sigma, on, 0)


# ---------------------------------------------------------------- through evaluate_run and the CLI

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("robust")
    data, runs = root / "data", root / "runs"
    result = invoke("train", "--samples", 48, "--max-epochs", 1, "--data-root", data, "--out", runs, "--name", "plain")
    assert result.exit_code == 0, result.stderr
    shutil.copytree(runs / "plain", runs / "mixed")  # a second complete run, without paying for training again
    (runs / "notes.txt").write_text("not a run")
    return [runs / "plain", runs / "mixed"], data


def test_evaluate_run_perturbs_every_test_batch(two_runs):
    (run, _), data = two_runs
    seen: list[int] = []

    def spy(batch: Batch) -> Batch:
        seen.append(batch.size)
        return batch

    unperturbed = evaluate_run(RunDir.open(run), data_root=data)
    spied = evaluate_run(RunDir.open(run), data_root=data, perturb=spy)
    assert sum(seen) == len(build(RunDir(run).recipe(), data).data.split("test"))
    assert spied["metrics"] == unperturbed["metrics"]


def test_noise_changes_the_metrics_and_repeats_exactly(two_runs):
    (run, _), data = two_runs
    clean = json.loads(invoke("evaluate", run, "--data-root", data, "--format", "json").stdout)
    noisy = [json.loads(invoke("evaluate", run, "--data-root", data, "--format", "json", "--noise", 3).stdout) for _ in range(2)]
    assert noisy[0]["metrics"] == noisy[1]["metrics"]
    assert noisy[0]["metrics"]["MAE"] != clean["metrics"]["MAE"]
    assert noisy[0]["perturbation"] == "noise σ=3" and clean["perturbation"] == ""


def test_evaluate_many_runs_as_csv_one_row_each(two_runs):
    runs, data = two_runs
    everything = sorted(runs[0].parent.iterdir())  # what `runs/*` expands to, notes.txt included
    result = invoke("evaluate", *everything, "--data-root", data, "--format", "csv", "--drop-modality", "audio")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(r["run"] for r in rows) == ["mixed", "plain"]
    assert {r["perturbation"] for r in rows} == {"audio zeroed"}
    assert all(float(r["MAE"]) >= 0 for r in rows)
    assert "skipped:" in result.stderr and "notes.txt" in result.stderr


def test_evaluate_many_runs_as_one_table(two_runs):
    runs, data = two_runs
    result = invoke("evaluate", *runs, "--data-root", data, "--drop-modality", "text,vision")
    assert result.exit_code == 0, result.stderr
    assert "plain" in result.stdout and "mixed" in result.stdout and "text+vision zeroed" in result.stdout


@pytest.mark.parametrize("args, fragment", [(["--drop-modality", "sound"], "sound"), (["--noise", "-1"], "--noise")])
def test_bad_perturbation_exits_2_with_one_line(two_runs, args, fragment):
    (run, _), data = two_runs
    result = invoke("evaluate", run, "--data-root", data, *args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0]
