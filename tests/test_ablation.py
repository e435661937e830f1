"""`msmix ablate`: variants, the paired t-test against scipy, aggregation, reuse, resume after a kill, files."""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from msmix_cli import ablation
from msmix_cli.ablation import (MIX_PARTS, REFERENCE, paired_t_test, parse_seeds, parse_variants,
                                regularized_incomplete_beta, summarize, variant_label, write_outputs)
from msmix_cli.cli import app
from msmix_cli.errors import BadInput, Interrupted
from msmix_cli.metrics import METRIC_NAMES
from msmix_cli.mixing import MIXERS
from msmix_cli.recipes import Recipe
from msmix_cli.training.rundir import RunDir

runner = CliRunner()
DATA = ["--dataset", "synth", "--backbone", "tfn", "--samples", "48"]
TINY = [*DATA, "--max-epochs", "1", "--seeds", "1,2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# ---------------------------------------------------------------- significance

@pytest.mark.parametrize("n, shift, seed", [(2, 0.3, 0), (2, -0.01, 1), (3, 0.05, 2), (5, 0.0, 3), (10, 0.2, 4), (30, 0.01, 5)])
def test_paired_t_test_matches_scipy(n, shift, seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = rng.normal(0.8, 0.05, n)
    b = a - shift + rng.normal(0, 0.03, n)
    t, p, pairs = paired_t_test(list(a), list(b))
    expected = stats.ttest_rel(a, b)
    assert pairs == n
    assert t == pytest.approx(expected.statistic, rel=1e-10)
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-14)


def test_known_case_with_two_seeds_is_a_cauchy_tail():
    # df = 1: the t distribution is Cauchy, so p = 1 - 2/pi * atan(|t|) exactly; here t = 4.
    t, p, pairs = paired_t_test([1.0, 2.0], [0.5, 1.7])
    assert pairs == 2 and t == pytest.approx(4.0)
    assert p == pytest.approx(1 - 2 / math.pi * math.atan(4.0), rel=1e-12)
    assert p == pytest.approx(0.15595826075473862, rel=1e-12)  # scipy.stats.ttest_rel's value


@pytest.mark.parametrize("x", [1e-6, 0.01, 0.3, 0.5, 0.77, 0.99, 1 - 1e-9])
@pytest.mark.parametrize("a, b", [(0.5, 0.5), (1.0, 0.5), (2.5, 0.5), (14.5, 0.5), (3.0, 7.0)])
def test_incomplete_beta_matches_scipy(a, b, x):
    special = pytest.importorskip("scipy.special")
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("a, b", [([0.8, 0.7, 0.9], [0.8, 0.7, 0.9]), ([0.9, 0.8, 1.0], [0.8, 0.7, 0.9]), ([0.8], [0.7])])
def test_undefined_tests_are_nan_not_significant(a, b):
    # No spread in the differences (or a single pair): the t-test says nothing, so no p-value is claimed.
    t, p, _ = paired_t_test(a, b)
    assert math.isnan(t) and math.isnan(p)


def test_pairs_with_a_missing_value_are_left_out():
    t, p, pairs = paired_t_test([0.1, math.nan, 0.3, 0.2], [0.0, 0.5, 0.1, 0.15])
    assert pairs == 3 and math.isfinite(p)


# ---------------------------------------------------------------- variants and seeds

def test_grid_is_full_model_parts_and_every_other_mixer():
    names = [v.name for v in parse_variants(None, grid=True)]
    assert names[0] == REFERENCE
    assert names[1:4] == [f"msmix-no{part}" for part in MIX_PARTS]
    assert set(names[4:]) == set(MIXERS.names()) - {"msmix"}
    assert names == [v.name for v in parse_variants("all", grid=False)]


def test_drop_lists_give_one_variant_each_and_plus_combines():
    variants = parse_variants("sal, sig+sass", grid=False)
    assert [v.name for v in variants] == ["msmix", "msmix-nosal", "msmix-nosass-nosig"]
    assert variants[2].mix == {"name": "msmix", "sass": False, "sig": False, "sal": True}
    assert variants[0].mix == {"name": "msmix", "sass": True, "sig": True, "sal": True}
    assert variant_label("msmix-nosass-nosig") == "MS-Mix w/o SASS+SIG"


@pytest.mark.parametrize("drop", ["nosuch", "sig,nosuch", "sig+", None])
def test_bad_drop_is_bad_input(drop):
    with pytest.raises(BadInput):
        parse_variants(drop, grid=False)


@pytest.mark.parametrize("text", ["1,1", "a,b", ""])
def test_bad_seeds_are_bad_input(text):
    with pytest.raises(BadInput):
        parse_seeds(text)


# ---------------------------------------------------------------- scheduling

def planned(device: str = "auto", threads=None) -> ablation.PlannedRun:
    recipe = Recipe()
    recipe.train.device, recipe.train.threads = device, threads
    return ablation.PlannedRun("synth", "tfn", "msmix", 1, recipe, Path("runs/x"))


def test_one_gpu_runs_one_at_a_time_unless_shared(monkeypatch):
    monkeypatch.setattr(ablation, "resolve_device", lambda name: torch.device("cuda"))
    runs = [planned("cuda"), planned("cuda")]
    jobs, note = ablation.effective_jobs(runs, 2, share_gpu=False)
    assert jobs == 1 and "--share-gpu" in note
    assert ablation.effective_jobs(runs, 2, share_gpu=True) == (2, None)
    monkeypatch.setattr(ablation, "resolve_device", lambda name: torch.device("cpu"))
    assert ablation.effective_jobs(runs, 4, share_gpu=False) == (2, None)  # never more processes than runs


def test_each_child_gets_its_share_of_the_cores_and_reuse_ignores_it(monkeypatch):
    monkeypatch.setattr(ablation, "available_cores", lambda: 16)
    run = planned()
    child = ablation.with_fair_threads(run.recipe, 3)
    assert child.train.threads == 5 and run.recipe.train.threads is None
    assert ablation.with_fair_threads(planned(threads=2).recipe, 3).train.threads == 2  # the user's choice stands
    assert ablation.same_experiment(child, run.recipe)
    other = ablation.with_fair_threads(planned().recipe, 3)
    other.train.lr = 0.5
    assert not ablation.same_experiment(other, run.recipe)


# ---------------------------------------------------------------- aggregation

def fake_rows(values: dict[str, list[float]]) -> list[dict]:
    rows = []
    for variant, maes in values.items():
        for seed, mae in enumerate(maes):
            metrics = {name: 0.5 for name in METRIC_NAMES["mosi"]} | {"MAE": mae, "Corr": math.nan if seed == 0 else 0.6 + seed / 10}
            rows.append({"dataset": "synth", "backbone": "tfn", "variant": variant, "seed": seed, **metrics})
    return rows


def test_summary_is_mean_sample_std_delta_and_paired_test():
    stats = pytest.importorskip("scipy.stats")
    full, nosig = [0.80, 0.84, 0.83], [0.86, 0.85, 0.90]
    summary = summarize(fake_rows({"msmix": full, "msmix-nosig": nosig}))
    assert len(summary) == 2 * len(METRIC_NAMES["mosi"])
    mae = {row["variant"]: row for row in summary if row["metric"] == "MAE"}
    assert mae["msmix"]["mean"] == pytest.approx(np.mean(full))
    assert mae["msmix"]["std"] == pytest.approx(np.std(full, ddof=1)) and mae["msmix"]["std_ddof"] == 1
    assert math.isnan(mae["msmix"]["p"]) and math.isnan(mae["msmix"]["delta"])
    assert mae["msmix-nosig"]["delta"] == pytest.approx(np.mean(nosig) - np.mean(full))
    assert mae["msmix-nosig"]["p"] == pytest.approx(stats.ttest_rel(nosig, full).pvalue, rel=1e-9)
    corr = next(row for row in summary if row["metric"] == "Corr" and row["variant"] == "msmix")
    assert corr["n"] == 2  # the NaN of seed 0 is left out, and n says so


def test_outputs_without_matplotlib_still_write_the_tables(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib -> ImportError
    rows = fake_rows({"msmix": [0.8, 0.9], "none": [0.9, 1.0]})
    files, note = write_outputs(tmp_path, rows, summarize(rows), (0, 1))
    assert [f.name for f in files] == ["ablation.csv", "summary.csv", "summary.json"]
    assert "pip install 'msmix[plot]'" in note
    assert not (tmp_path / "ablation.png").exists()
    document = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: NaN became null
    assert document["std_ddof"] == 1 and "paired t-test" in document["test"]


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = fake_rows({"msmix": [0.8, 0.9], "msmix-nosig": [0.85, 0.95], "none": [0.9, 1.0]})
    rows += [dict(row, backbone="mult") for row in rows]
    files, note = write_outputs(tmp_path, rows, summarize(rows), (0, 1))
    assert note is None and files[-1].name == "ablation.png"
    assert files[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- end to end

class FitCounter:
    """Wraps the real `fit` seen by ablation.py and records which runs it trained."""

    def __init__(self, monkeypatch, interrupt_on_call: int | None = None):
        self.trained: list[str] = []
        self.interrupt_on_call = interrupt_on_call
        self.real_fit = ablation.fit
        monkeypatch.setattr(ablation, "fit", self)

    def __call__(self, recipe, run: RunDir, **kwargs):
        self.trained.append(run.path.name)
        if len(self.trained) == self.interrupt_on_call:
            run.update_info(status="interrupted")  # what fit leaves behind when Ctrl-C stops it
            raise Interrupted("stopped by SIGINT at epoch 1; resume with: ...")
        return self.real_fit(recipe, run, **kwargs)


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    out, data = root / "abl", root / "data"
    result = invoke("ablate", *TINY, "--drop", "sig", "--out", out, "--data-root", data)
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    return out, data, result


RUNS = ["synth-tfn-msmix-seed1", "synth-tfn-msmix-seed2", "synth-tfn-msmix-nosig-seed1", "synth-tfn-msmix-nosig-seed2"]


def test_two_seed_ablation_writes_one_row_per_run(tiny_ablation):
    out, _, result = tiny_ablation
    rows = read_csv(out / "ablation.csv")
    assert sorted(Path(r["run_dir"]).name for r in rows) == sorted(RUNS)
    assert {(r["variant"], r["seed"]) for r in rows} == {(v, s) for v in ("msmix", "msmix-nosig") for s in ("1", "2")}
    for row in rows:
        saved = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["metrics"]
        assert float(row["MAE"]) == saved["MAE"]  # raw, straight from the run's best-validation metrics.json
        assert set(METRIC_NAMES["mosi"]) <= set(row)
    summary = read_csv(out / "summary.csv")
    assert len(summary) == 2 * len(METRIC_NAMES["mosi"])
    assert {r["std_ddof"] for r in summary} == {"1"} and {r["n"] for r in summary} == {"2"}
    nosig = next(r for r in summary if r["variant"] == "msmix-nosig" and r["metric"] == "MAE")
    assert nosig["n_pairs"] == "2" and nosig["test"].startswith("paired t-test")
    assert (out / "summary.json").is_file() and (out / "ablation.png").is_file()
    assert "MS-Mix w/o SIG" in result.stdout and "paired t-test on MAE" in " ".join(result.stdout.split())


def test_second_call_reuses_every_run(tiny_ablation, monkeypatch):
    out, data, _ = tiny_ablation
    before = (out / "ablation.csv").read_text()
    counter = FitCounter(monkeypatch)
    result = invoke("ablate", *TINY, "--drop", "sig", "--out", out, "--data-root", data, "--format", "csv")
    assert result.exit_code == 0, result.stderr
    assert counter.trained == []
    assert (out / "ablation.csv").read_text() == before
    assert result.stdout == (out / "summary.csv").read_text()
    assert "4 complete and reused, 0 to train" in result.stderr


def test_interrupted_and_half_written_runs_are_redone_alone(tiny_ablation, monkeypatch):
    out, data, _ = tiny_ablation
    RunDir(out / RUNS[0]).update_info(status="running")  # killed mid-training
    (out / RUNS[3] / "metrics.json").unlink()  # killed before its metrics were written
    counter = FitCounter(monkeypatch)
    result = invoke("ablate", *TINY, "--drop", "sig", "--out", out, "--data-root", data)
    assert result.exit_code == 0, result.stderr
    assert sorted(counter.trained) == sorted([RUNS[0], RUNS[3]])
    assert all(RunDir(out / name).info()["status"] == "complete" for name in RUNS)


def test_ctrl_c_keeps_finished_runs_and_a_rerun_finishes(tmp_path, monkeypatch):
    out, data = tmp_path / "abl", tmp_path / "data"
    args = ["ablate", *DATA, "--max-epochs", "1", "--seeds", "7", "--drop", "sal", "--out", out, "--data-root", data]
    counter = FitCounter(monkeypatch, interrupt_on_call=2)
    result = invoke(*args)
    assert result.exit_code == 130 and "rerun the same command" in result.stderr
    first, second = counter.trained
    assert RunDir(out / first).info()["status"] == "complete"
    assert RunDir(out / second).info()["status"] == "interrupted"
    assert not (out / "ablation.csv").exists()

    counter = FitCounter(monkeypatch)
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert counter.trained == [second]
    assert len(read_csv(out / "ablation.csv")) == 2


@pytest.mark.slow
def test_parallel_jobs_match_one_at_a_time(tiny_ablation, tmp_path):
    out, data, _ = tiny_ablation
    parallel = tmp_path / "parallel"
    result = invoke("ablate", *DATA, "--max-epochs", "1", "--seeds", "1", "--drop", "sig", "--out", parallel,
                    "--data-root", data, "--jobs", "2")
    assert result.exit_code == 0, result.stderr
    serial = {Path(r["run_dir"]).name: float(r["MAE"]) for r in read_csv(out / "ablation.csv")}
    spawned = {Path(r["run_dir"]).name: float(r["MAE"]) for r in read_csv(parallel / "ablation.csv")}
    assert sorted(spawned) == ["synth-tfn-msmix-nosig-seed1", "synth-tfn-msmix-seed1"]
    for name, mae in spawned.items():
        assert mae == pytest.approx(serial[name], rel=1e-4)  # other processes, fewer threads, same seeds: same runs


def test_complete_run_of_another_recipe_is_never_overwritten(tiny_ablation):
    out, data, _ = tiny_ablation
    result = invoke("ablate", *DATA, "--max-epochs", "2", "--seeds", "1,2", "--drop", "sig", "--out", out, "--data-root", data)
    assert result.exit_code == 2 and "another recipe" in result.stderr
    assert all(RunDir(out / name).info()["status"] == "complete" for name in RUNS)


@pytest.mark.parametrize("args, fragment", [
    (["--drop", "nosuch"], "nosuch"),
    (["--drop", "sig", "--seeds", "1,x"], "--seeds"),
    (["--drop", "sig", "--set", "mix.sig=false"], "mix.sig"),
    (["--drop", "sig", "--backbone", "nosuch"], "nosuch"),
    (["--drop", "sig", "--jobs", "0"], "--jobs"),
    ([], "--drop"),
])
def test_bad_input_exits_2_with_one_line(args, fragment, tmp_path):
    result = invoke("ablate", *args, "--out", tmp_path / "abl", "--data-root", tmp_path / "data")
    assert result.exit_code == 2, result.output + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "abl").exists()  # nothing trained, nothing written


def test_baselines_compare_the_full_model_with_every_other_mixer_only():
    names = [v.name for v in parse_variants(None, grid=False, baselines=True)]
    assert names == [REFERENCE, *(m for m in MIXERS.names() if m != "msmix")]
    with_drop = [v.name for v in parse_variants("sig", grid=False, baselines=True)]
    assert set(with_drop) == set(names) | {f"{REFERENCE}-nosig"}
