"""Recipes: precedence, validation with one-line errors naming the key, and the shipped recipe files."""

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput
from msmix_cli.models import BACKBONES
from msmix_cli.recipes import build_recipe, dump_recipe, parse_overrides, read_yaml, recipes_dir, resolve_recipe, same_experiment


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_msmix_with_its_preset_on_synth():
    recipe = build_recipe({})
    assert recipe.data.dataset == "synth" and recipe.mix.name == "msmix" and recipe.mix.preset == "msmix"
    assert (recipe.mix.alpha, recipe.mix.delta, recipe.mix.w_mix, recipe.mix.w_sal) == (2.0, 0.4, 0.7, 0.5)
    assert (recipe.mix.sal_kind, recipe.mix.sal_scale, recipe.mix.same_polarity) == ("regression", 1.0, True)
    assert recipe.mix.sass is False  # random partners: docs/msmix.md, "SASS off in the preset"


def test_a_recipe_can_turn_sass_back_on_under_the_msmix_preset():
    recipe = resolve_recipe(None, assignments=["mix.sass=true"])
    assert recipe.mix.preset == "msmix" and recipe.mix.sass is True and recipe.mix.same_polarity is True


def test_precedence_file_then_flags_then_set(tmp_path):
    path = write(tmp_path, "r.yaml", "model: {name: tfn}\ntrain: {lr: 0.01, seed: 5}\nmix: {name: none}\n")
    recipe = resolve_recipe(path, overrides={"train": {"seed": 7}}, assignments=["train.lr=1e-4", "mix.name=msmix"])
    assert recipe.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string: coerced to float
    assert recipe.train.seed == 7
    assert recipe.mix.name == "msmix"


def test_base_chain_merges_and_own_keys_win(tmp_path):
    write(tmp_path, "base.yaml", "mix: {delta: 0.2, alpha: 1.0}\n")
    path = write(tmp_path, "r.yaml", "base: base.yaml\nmix: {delta: 0.3}\n")
    recipe = build_recipe(read_yaml(path))
    assert (recipe.mix.delta, recipe.mix.alpha) == (0.3, 1.0)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"train": {"lrr": 1}}, "train.lrr"),
        ({"nosuch": {}}, "nosuch"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"batch_size": 1.5}}, "train.batch_size"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"mix": {"name": "cutmix"}}, "cutmix"),
        ({"model": {"name": "bert"}}, "bert"),
        ({"mix": {"sass": "yes"}}, "mix.sass"),
        ({"mix": {"delta": 2}}, "mix.delta"),
        ({"train": {"optimizer": "sgd"}}, "train.optimizer"),
        ({"train": [1, 2]}, "train"),
        ({"model": {"name": "tfn", "no_such_knob": 3}}, "model.no_such_knob"),
    ],
)
def test_bad_values_name_the_key(raw, fragment):
    with pytest.raises(BadInput) as error:
        build_recipe(raw)
    message = str(error.value)
    assert fragment in message and "\n" not in message


def test_malformed_yaml_is_one_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "train: {lr: [1, 2\n")
    with pytest.raises(BadInput, match="malformed YAML") as error:
        read_yaml(path)
    assert "\n" not in str(error.value)


def test_set_syntax_errors():
    with pytest.raises(BadInput, match="section.key=value"):
        parse_overrides(["lr=1"])
    assert parse_overrides(["mix.sass=false"]) == {"mix": {"sass": False}}


def test_recipe_for_other_backbone_conflicts(tmp_path):
    path = write(tmp_path, "r.yaml", "model: {name: tfn}\n")
    with pytest.raises(BadInput, match="for backbone 'tfn'"):
        resolve_recipe(path, backbone="mult")


def test_dump_round_trip(tmp_path):
    recipe = resolve_recipe(None, dataset="synth", backbone="tfn", assignments=["train.seed=3"])
    path = write(tmp_path, "dumped.yaml", dump_recipe(recipe, "msmix train"))
    assert build_recipe(read_yaml(path)) == recipe


def shipped_recipes() -> list[Path]:
    return sorted(p for p in recipes_dir().glob("*.yaml"))


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = build_recipe(read_yaml(path))
    dataset, backbone = path.stem.split("-")
    assert (recipe.data.dataset, recipe.backbone) == (dataset, backbone)
    assert path.read_text().startswith("# msmix train"), "a recipe opens with the command that runs it"


def test_every_dataset_backbone_pair_has_a_recipe():
    names = {p.stem for p in shipped_recipes()}
    missing = [f"{d}-{b}" for d in DATASETS.names() for b in BACKBONES.names() if f"{d}-{b}" not in names]
    assert not missing


# ------------------------------------------------------------ recipe files that are not files: endless, silent, looping

def fifo_that_answers(path: Path) -> Path:
    """A FIFO whose writer sends a valid recipe once someone opens it: a reader that waits for it gets an answer
    (so the test ends either way), one that refuses it never opens it for writing."""
    os.mkfifo(path)

    def write() -> None:
        with contextlib.suppress(OSError), open(path, "wb") as handle:
            handle.write(b"train: {lr: 0.001}\n")

    threading.Thread(target=write, daemon=True).start()
    return path


@pytest.mark.parametrize("make_base, fragment", [
    (lambda folder: fifo_that_answers(folder / "fifo.yaml"), "is not a regular file"),
    (lambda folder: Path("/dev/null"), "is not a regular file"),
    (lambda folder: (folder / "big.yaml").write_bytes(b"# padding\n" * 110_000) and folder / "big.yaml",
     "larger than 1 MB"),
])
def test_a_base_that_is_no_recipe_file_is_named_in_one_line(tmp_path, make_base, fragment):
    base = make_base(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: {base}\ntrain: {{lr: 0.001}}\n")
    with pytest.raises(BadInput, match=fragment) as raised:
        read_yaml(recipe)
    assert str(base.resolve()) in str(raised.value)


def test_an_endless_device_is_refused_without_reading_it(tmp_path):
    """/dev/zero read to its end fills memory: in a child process with a 2 GB address-space limit."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: /dev/zero\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))\n"
            "from msmix_cli.errors import BadInput\nfrom msmix_cli.recipes import read_yaml\n"
            f"try:\n    read_yaml(__import__('pathlib').Path({str(recipe)!r}))\n"
            "except BadInput as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0 and "/dev/zero is not a regular file" in done.stdout, done.stdout + done.stderr


def test_a_symlink_loop_as_base_is_named_in_one_line(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: a.yaml\n")
    with pytest.raises(BadInput, match=r"cannot read recipe .*a\.yaml"):
        read_yaml(recipe)


def lmf(*assignments: str):
    return resolve_recipe(None, dataset="synth", backbone="lmf", assignments=list(assignments))


def test_mix_keys_a_mixer_never_reads_do_not_make_another_experiment():
    """A `none` run trained before the msmix preset changed (its recipe says mix.sass: true) is the run asked for
    now; a key the mixer reads, or another mixer, is another experiment."""
    assert same_experiment(lmf("mix.name=none", "mix.sass=true", "mix.alpha=0.5", "mix.preset=authors"), lmf("mix.name=none"))
    assert same_experiment(lmf("mix.name=mixup", "mix.sass=true", "mix.w_sal=0.1"), lmf("mix.name=mixup"))
    assert not same_experiment(lmf("mix.name=mixup", "mix.alpha=0.5"), lmf("mix.name=mixup"))
    assert not same_experiment(lmf("mix.name=manifold", "mix.warmup_epochs=2"), lmf("mix.name=manifold"))
    assert not same_experiment(lmf("mix.name=msmix", "mix.sass=true"), lmf("mix.name=msmix"))
    assert not same_experiment(lmf("mix.name=none"), lmf("mix.name=manifold"))
    assert not same_experiment(lmf("mix.name=none", "train.lr=0.5"), lmf("mix.name=none"))
    assert same_experiment(lmf("mix.name=none", "train.threads=3"), lmf("mix.name=none"))
