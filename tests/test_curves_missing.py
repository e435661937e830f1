"""curves.png per run, `msmix plot RUN...`, and `msmix evaluate RUN --missing-rate ...` (curve, table, PNG)."""

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from msmix_cli.cli import app
from msmix_cli.training.missing import parse_rates, random_missing
from msmix_cli.errors import BadInput
from msmix_cli.types import Batch, Multimodal

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("curves")
    for name, mix in (("a", "msmix"), ("b", "none")):
        result = invoke("train", "--samples", 80, "--max-epochs", 2, "--mix", mix, "--data-root", root / "data",
                        "--out", root / "runs", "--name", name)
        assert result.exit_code == 0, result.output
    return root / "runs", root / "data"


def test_every_complete_run_draws_its_curves(runs):
    folder, _ = runs
    for name in ("a", "b"):
        assert (folder / name / "curves.png").read_bytes().startswith(PNG)


def test_without_matplotlib_a_run_completes_without_curves(tmp_path, monkeypatch):
    from msmix_cli import plots

    def missing(figure: str = "") -> None:
        raise plots.PlotUnavailable("matplotlib is not installed")

    monkeypatch.setattr(plots, "require_matplotlib", missing)
    monkeypatch.setattr("msmix_cli.curves.require_matplotlib", missing)
    result = invoke("train", "--samples", 80, "--max-epochs", 1, "--data-root", tmp_path / "data", "--out", tmp_path / "runs",
                    "--name", "r")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "r" / "metrics.json").is_file() and not (tmp_path / "runs" / "r" / "curves.png").exists()


def test_plot_overlays_several_runs(runs, tmp_path):
    folder, _ = runs
    target = tmp_path / "compare.png"
    result = invoke("plot", folder / "a", folder / "b", "-o", target)
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(PNG)


def test_plot_of_a_folder_without_history_is_bad_input(tmp_path):
    result = invoke("plot", tmp_path, "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "no history.csv" in result.stderr and not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------------ missing rate

def batch_of(rows: list[int]) -> Batch:
    features = {m: torch.ones(len(rows), 4, 3) for m in ("text", "audio", "vision")}
    return Batch(Multimodal(features), torch.zeros(len(rows)), index=torch.tensor(rows))


def zeroed(batch: Batch) -> dict[str, list[bool]]:
    return {m: [bool((x[i] == 0).all()) for i in range(batch.size)] for m, x in batch.inputs.features.items()}


def test_rates_zero_and_one_keep_or_remove_everything():
    rows = list(range(50))
    assert not any(any(v) for v in zeroed(random_missing(0.0, 0, 0)(batch_of(rows))).values())
    assert all(all(v) for v in zeroed(random_missing(1.0, 0, 0)(batch_of(rows))).values())


def test_a_samples_fate_does_not_depend_on_the_batching_and_grows_with_the_rate():
    rows = list(range(200))
    whole = zeroed(random_missing(0.3, 7, 1)(batch_of(rows)))
    perturb = random_missing(0.3, 7, 1)
    parts = [zeroed(perturb(batch_of(rows[i:i + 16]))) for i in range(0, 200, 16)]
    assert whole == {m: sum((p[m] for p in parts), []) for m in whole}
    higher = zeroed(random_missing(0.6, 7, 1)(batch_of(rows)))
    assert all(h or not w for m in whole for w, h in zip(whole[m], higher[m]))  # missing at 0.3 -> missing at 0.6
    share = sum(sum(v) for v in whole.values()) / 600
    assert 0.2 < share < 0.4
    assert zeroed(random_missing(0.3, 7, 2)(batch_of(rows))) != whole  # another draw, other samples


@pytest.mark.parametrize("text", ["0,1.5", "a,b", "0.1,0.1", "-0.1"])
def test_bad_rates_are_bad_input(text):
    with pytest.raises(BadInput):
        parse_rates(text)


def test_missing_rate_curve_matches_the_unperturbed_and_the_fully_dropped_runs(runs, tmp_path):
    folder, data = runs
    run = folder / "a"
    plot = tmp_path / "missing.png"
    result = invoke("evaluate", run, "--missing-rate", "0,0.5,1", "--missing-draws", 2, "--format", "csv",
                    "--data-root", data, "--plot", plot)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [float(r["missing_rate"]) for r in rows] == [0.0, 0.5, 1.0] and [r["draws"] for r in rows] == ["1", "2", "1"]
    assert all(r["dataset"] == "synth" and r["backbone"] == "tfn" for r in rows)
    plain = json.loads(invoke("evaluate", run, "--format", "json", "--data-root", data).stdout)["metrics"]
    dropped = json.loads(invoke("evaluate", run, "--format", "json", "--data-root", data,
                                "--drop-modality", "text,audio,vision").stdout)["metrics"]
    assert float(rows[0]["MAE"]) == pytest.approx(plain["MAE"], abs=1e-9)
    assert float(rows[2]["MAE"]) == pytest.approx(dropped["MAE"], abs=1e-9)
    assert plot.read_bytes().startswith(PNG)


def test_missing_rate_with_another_perturbation_is_bad_input(runs):
    folder, data = runs
    result = invoke("evaluate", folder / "a", "--missing-rate", "0.5", "--noise", "0.1", "--data-root", data)
    assert result.exit_code == 2 and "--missing-rate" in result.stderr
