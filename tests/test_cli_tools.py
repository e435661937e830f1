"""`msmix ls`, `msmix recipe show|cp|validate`, `msmix env`, `msmix clean --synth`, and last.pt dropped on completion."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from msmix_cli.cli import app
from msmix_cli.recipes import build_recipe, resolve_recipe
from msmix_cli.recipe_tools import full_sections

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """A data root with one synth cache, and a runs folder with a complete run and an interrupted-looking one."""
    root = tmp_path_factory.mktemp("tools")
    data, runs = root / "data", root / "runs"
    result = invoke("train", "--samples", 80, "--max-epochs", 1, "--seed", 4, "--data-root", data, "--out", runs, "--name", "done")
    assert result.exit_code == 0, result.output
    (runs / "abl" / "half").mkdir(parents=True)
    (runs / "abl" / "half" / "run.json").write_text(json.dumps({"status": "interrupted"}))
    return data, runs


def test_a_complete_run_keeps_no_resume_point(workspace):
    _, runs = workspace
    assert not (runs / "done" / "last.pt").exists() and (runs / "done" / "checkpoint.pt").is_file()


def test_ls_json_lists_names_caches_and_runs_with_sizes(workspace):
    data, runs = workspace
    result = invoke("ls", "--out", runs, "--data-root", data, "--format", "json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert {"tfn", "mult", "glomo"} <= set(listing["backbones"]) and "msmix" in listing["mixers"]
    assert "synth-tfn.yaml" in listing["recipes"]
    synth = next(d for d in listing["datasets"] if d["name"] == "synth")
    cache = data / "cache" / synth["caches"][0]
    assert synth["size_bytes"] == cache.stat().st_size > 0
    by_name = {run["name"]: run for run in listing["runs"]}
    done = by_name["done"]
    assert done["status"] == "complete" and done["backbone"] == "tfn" and done["seed"] == 4
    saved = json.loads((runs / "done" / "metrics.json").read_text())["metrics"]["MAE"]
    assert done["test_mae"] == saved
    assert done["size_bytes"] == sum(p.stat().st_size for p in (runs / "done").iterdir())
    assert by_name[str(Path("abl") / "half")]["status"] == "interrupted"


def test_ls_table_names_every_run(workspace):
    data, runs = workspace
    result = invoke("ls", "--out", runs, "--data-root", data)
    assert result.exit_code == 0, result.output
    assert "done" in result.stdout and "complete" in result.stdout and "synth" in result.stdout


def test_recipe_show_resolves_every_value_and_says_where_it_comes_from():
    result = invoke("recipe", "show", "synth", "mult", "--set", "train.lr=0.0042")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    expected = resolve_recipe(None, dataset="synth", backbone="mult", assignments=["train.lr=0.0042"])
    assert full_sections(build_recipe(shown)) == full_sections(expected)  # YAML reads tuples back as lists
    assert {k: list(v) for k, v in shown.items()} == {k: list(v) for k, v in full_sections(expected).items()}
    lines = result.stdout.splitlines()
    assert any(line.startswith("  lr: 0.0042") and line.endswith("# --set") for line in lines)
    assert any(line.startswith("  early_stop:") and "synth-mult.yaml" in line for line in lines)
    assert any(line.startswith("  d_model:") and "mosi-mult.yaml" in line for line in lines)  # from the base file
    assert any(line.startswith("  seed:") and line.endswith("# default") for line in lines)


def test_recipe_cp_writes_a_recipe_that_trains_as_shown_and_never_clobbers(tmp_path):
    target = tmp_path / "mine.yaml"
    assert invoke("recipe", "cp", "synth", "lmf", target).exit_code == 0
    copied = build_recipe(yaml.safe_load(target.read_text()))
    assert full_sections(copied) == full_sections(resolve_recipe(None, backbone="lmf"))
    validated = invoke("recipe", "validate", target)
    assert validated.exit_code == 0 and validated.stdout.strip() == "valid"
    before = target.read_text()
    again = invoke("recipe", "cp", "synth", "tfn", target)
    assert again.exit_code == 2 and "never overwrites" in again.stderr and target.read_text() == before


@pytest.mark.parametrize("content, fragment", [
    ("train: {lr: -1}\n", "train.lr must be > 0"),
    ("train: {nosuch: 1}\n", "unknown key train.nosuch"),
    ("model: {name: mult, heads: 7}\n", "cannot build mult"),
])
def test_recipe_validate_prints_the_one_line_error(tmp_path, content, fragment):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    result = invoke("recipe", "validate", bad)
    assert result.exit_code == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_env_reports_what_a_bug_report_needs():
    result = invoke("env", "--format", "json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    for key in ("msmix", "python", "torch", "CUDA available", "numpy", "h5py", "git commit", "device (auto)",
                "CPU threads (torch)"):
        assert key in facts, key
    import torch
    assert facts["torch"] == torch.__version__


def test_clean_synth_removes_only_synthetic_caches(tmp_path):
    data = tmp_path / "data"
    for samples in (60, 70):  # every --samples value leaves a cache of its own
        trained = invoke("train", "--samples", samples, "--max-epochs", 1, "--data-root", data, "--out", tmp_path / "runs")
        assert trained.exit_code == 0, trained.output
    real = data / "cache" / "mosi-aligned.h5"
    real.write_bytes(b"not touched")
    synth = sorted((data / "cache").glob("synth-*.h5"))
    assert len(synth) == 2
    preview = invoke("clean", "--synth", "--dry-run", "--data-root", data)
    assert preview.exit_code == 0 and "would remove 2 synth cache(s)" in preview.stdout and all(p.exists() for p in synth)
    done = invoke("clean", "--synth", "--data-root", data)
    assert done.exit_code == 0 and "removed 2 synth cache(s)" in done.stdout
    assert not any(p.exists() for p in synth) and real.read_bytes() == b"not touched"


def test_clean_needs_to_be_told_what():
    result = invoke("clean")
    assert result.exit_code == 2 and "--synth" in result.stderr


def test_readme_documents_shell_completion():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "msmix --install-completion" in readme
    assert "--install-completion" in invoke("--help").output
