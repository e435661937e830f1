"""Bad input, generated: whatever a recipe, a command line or a damaged data file holds, msmix ends cleanly.

Hypothesis draws recipes, command lines, MMSA pickles, SDK `.csd` files and msmix caches, each spoiled in its
own way, and hostile ones: pickles that build arrays over raw bytes, recipe files that are no files (a FIFO, a
device, a huge file, a symlink loop), run names that are paths and checkpoints with the wrong contents. It
runs the command that reads them through Typer's CliRunner. Every case must keep:

- exit code 0 (usable after all) or 2 (bad input): never 1, never an uncaught exception;
- with 2, stderr is one line that starts with `error:`, and no warning was printed before it;
- no "Traceback" and no "internal error" in the output;
- its input files byte-identical afterwards, and no temporary file left; with 2, no file added at all (no
  partial cache, nothing in a run directory).

The examples per property are the constants below (TOTAL_CASES); `derandomize=True` without a database
makes every run draw the same cases. Nothing trains for more than one epoch of a tiny LMF.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import shlex
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from formats import frames, intervals, mmsa_split, write_csd, write_pickle
from msmix_cli.cli import app
from msmix_cli.data.cache import SplitArrays, write_cache
from msmix_cli.data.mmsdk import standard_folds
from msmix_cli.data.specs import DATASETS
from msmix_cli.mixing import MIXERS, MixConfig
from msmix_cli.models import BACKBONES
from msmix_cli.recipes import SECTIONS, DataConfig, TrainConfig

RECIPE_CASES = 50
CLI_CASES = 60
PICKLE_CASES = 50
CSD_CASES = 30
CACHE_CASES = 30
HOSTILE_PICKLE_CASES = 20  # arrays built over raw bytes, dtypes that hide their objects
RECIPE_FILE_CASES = 15  # a base that is a FIFO, a device, a huge file, a symlink loop
NAME_CASES = 15  # a --name that is a path
CHECKPOINT_CASES = 15  # a checkpoint torch reads, with the wrong contents
TOTAL_CASES = (RECIPE_CASES + CLI_CASES + PICKLE_CASES + CSD_CASES + CACHE_CASES + HOSTILE_PICKLE_CASES
               + RECIPE_FILE_CASES + NAME_CASES + CHECKPOINT_CASES)
assert TOTAL_CASES >= 265

MOSI, MOSEI = DATASETS.get("mosi"), DATASETS.get("mosei")
SPLITS = ("train", "valid", "test")
runner = CliRunner()
TEMPORARY = re.compile(r"\..+\.tmp|.+\.part")  # what an atomic write or a download leaves while it works
# Categories Python's default filters never print: only the others reach a user's terminal.
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def cases(count: int) -> settings:
    return settings(max_examples=count, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def case_folder() -> Iterator[Path]:
    """A fresh folder per example: hypothesis cannot reset pytest's function-scoped tmp_path between them."""
    with tempfile.TemporaryDirectory(prefix="msmix-bad-input-") as folder:
        yield Path(folder)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if not path.is_dir()}


def run_msmix(args: Sequence[object], *, root: Path, inputs: Sequence[Path] = ()) -> int:
    """Run `msmix ARGS` (writing only under `root`) and check what every case must keep; return the exit code."""
    argv = [str(a) for a in args]
    digests = {path: digest(path) for path in inputs}
    before = files_under(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, argv)
    shown = (f"msmix {shlex.join(argv)}\n[exit {result.exit_code}: {result.exception!r}]\n[stdout]\n{result.stdout}"
             f"\n[stderr]\n{result.stderr}")
    assert result.exit_code in (0, 2), shown
    for text in (result.stdout, result.stderr):
        assert "Traceback" not in text and "internal error" not in text, shown
    after = files_under(root)
    assert not [path for path in after if TEMPORARY.fullmatch(path.name)], f"a temporary file is left\n{shown}"
    assert {path: digest(path) for path in inputs} == digests, f"an input file changed\n{shown}"
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), shown
        printed = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, HIDDEN_WARNINGS)]
        assert not printed, f"warnings printed before the error: {printed}\n{shown}"
        assert after == before, f"files left by a refused command: {sorted(map(str, after - before))}\n{shown}"
    return result.exit_code


# ---------------------------------------------------------------------------------------------- values

# argv cannot hold a NUL; anything else a user may type.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
# Recipe values. Sizes in `model` and `mix` stay small: a width a million wide would allocate gigabytes for
# real, which is a legitimate (if slow) request, not bad input.
ANY_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
SMALL_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 8), st.floats(), TEXT)
WORDS = sorted({*DATASETS.names(), *BACKBONES.names(), *MIXERS.names(), "aligned", "unaligned", "adam", "adamw",
                "plateau", "cosine", "auto", "cpu", "cuda", "cuda:0", "stop", "skip"})


def recipe_values(scalars: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(scalars, st.sampled_from(WORDS), st.lists(scalars, max_size=4),
                     st.dictionaries(TEXT, scalars, max_size=2))


FIELDS = {"data": [f.name for f in dataclasses.fields(DataConfig)],
          "train": [f.name for f in dataclasses.fields(TrainConfig)],
          "mix": [f.name for f in dataclasses.fields(MixConfig)]}
MODEL_FIELDS = {name: ["name", *(f.name for f in dataclasses.fields(BACKBONES.get(name).config_class))]
                for name in BACKBONES.names()}
BROKEN_YAML = ["train: {lr: 1e-3", "train:\n\tlr: 1", "- [", "data: &a {x: *b}", "? [1, 2]\n: 3", "key: 'open",
               "train: !!python/object/apply:os.system [true]", "%YAML 9.9\n---\n", "{" * 3000, "[" * 3000]


# ---------------------------------------------------------------------------------------------- recipes

@st.composite
def recipe_documents(draw: st.DrawFn) -> bytes:
    """A recipe file: a valid one spoiled one to three ways, free text, broken YAML or bytes that are not UTF-8."""
    kind = draw(st.sampled_from(["spoiled", "spoiled", "spoiled", "text", "broken", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=120)).encode("utf-8")
    if kind == "broken":
        return (draw(st.sampled_from(BROKEN_YAML)) + draw(TEXT)).encode("utf-8")
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=120))
    recipe: dict[Any, Any] = {"data": {"dataset": "synth"}, "model": {"name": draw(st.sampled_from(BACKBONES.names()))},
                              "train": {"max_epochs": 2}}
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["value", "value", "value", "unknown key", "unknown section", "section type",
                                    "base"]))
        section = draw(st.sampled_from(SECTIONS))
        values = recipe.get(section) if isinstance(recipe.get(section), dict) else {}
        recipe[section] = values
        if how == "value" and section == "model":
            name = values.get("name")
            keys = MODEL_FIELDS.get(name, MODEL_FIELDS["tfn"]) if isinstance(name, str) else MODEL_FIELDS["tfn"]
            values[draw(st.sampled_from(keys))] = draw(recipe_values(SMALL_SCALAR))
        elif how == "value":
            scalars = SMALL_SCALAR if section == "mix" else ANY_SCALAR
            values[draw(st.sampled_from(FIELDS[section]))] = draw(recipe_values(scalars))
        elif how == "unknown key":
            values[draw(TEXT)] = draw(ANY_SCALAR)
        elif how == "unknown section":
            recipe[draw(TEXT)] = draw(recipe_values(ANY_SCALAR))
        elif how == "section type":
            recipe[section] = draw(st.one_of(ANY_SCALAR, st.lists(ANY_SCALAR, max_size=3)))
        else:
            recipe["base"] = draw(st.one_of(TEXT, st.integers(), st.sampled_from(
                ["recipe.yaml", "../recipe.yaml", "missing.yaml", ".", "/dev/null", "x" * 300])))
    return yaml.safe_dump(recipe, allow_unicode=True).encode("utf-8")


@cases(RECIPE_CASES)
@given(document=recipe_documents())
def test_a_recipe_is_used_or_refused_in_one_line(document: bytes) -> None:
    with case_folder() as root:
        recipe = root / "recipe.yaml"
        recipe.write_bytes(document)
        run_msmix(["train", "--recipe", recipe, "--dry-run", "--data-root", root / "data", "--out", root / "runs"],
                  root=root, inputs=[recipe])


# ---------------------------------------------------------------------------------------------- command lines

PATH_TOKENS = ["missing", "missing/deeper", "notes.txt", "notes.txt/below", "empty", "running", "complete",
               "x" * 300, "real", "real/checkpoint.pt", "real-cache", "shipped"]
INTEGERS = st.one_of(st.integers().map(str), TEXT)
# Not 1e300: noise of that size makes a model predict inf, which evaluate reports as a diverged run (exit 1).
FLOATS = st.one_of(st.floats(-10, 10).map(repr), st.sampled_from(["nan", "inf", "-inf", "1e-300"]), TEXT)


def choice(*known: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(known), TEXT)


def comma_list(*known: str) -> st.SearchStrategy[str]:
    return st.lists(choice(*known), max_size=3).map(",".join)


def assignments() -> st.SearchStrategy[str]:
    keys = sorted({key for names in (*FIELDS.values(), *MODEL_FIELDS.values()) for key in names})
    structured = st.builds("{}.{}={}".format, choice(*SECTIONS, "base"), choice(*keys), TEXT)
    return st.one_of(structured, TEXT)


def options(draw: st.DrawFn, pool: dict[str, st.SearchStrategy | None]) -> list[str]:
    """Some of `pool`'s options in random order: a strategy gives the option's value, None makes it a flag."""
    chosen = draw(st.lists(st.sampled_from(sorted(pool)), max_size=5))
    args: list[str] = []
    for name in chosen:
        args += [name] if pool[name] is None else [name, draw(pool[name])]
    return args


PATH = st.sampled_from(PATH_TOKENS).map(lambda token: f"@{token}")  # resolved in the example's folder
TRAIN_OPTIONS = {
    "--dataset": choice(*DATASETS.names()), "--backbone": choice(*BACKBONES.names()), "--mix": choice(*MIXERS.names()),
    "--recipe": PATH, "--set": assignments(), "--seed": INTEGERS, "--device": choice("auto", "cpu", "cuda", "cuda:x"),
    "--max-epochs": INTEGERS, "--samples": INTEGERS, "--drop": comma_list("sass", "sig", "sal", "all"),
    "--no-sass": None, "--no-sig": None, "--no-sal": None, "--name": TEXT,
    "--format": choice("table", "json", "csv"),
    "--nproc": st.sampled_from(["0", "-1", "1", "two", ""]),  # never 2 or more: that launches torchrun
}
EVALUATE_OPTIONS = {
    "--split": choice("train", "valid", "test"), "--format": choice("table", "json", "csv"),
    "--device": choice("cpu", "auto", "cuda:x", "tpu"), "--drop-modality": comma_list("text", "audio", "vision"),
    "--noise": FLOATS, "--noise-on": comma_list("text", "audio", "vision"), "--noise-seed": INTEGERS,
    "--data-root": PATH,
}
PREPROCESS_OPTIONS = {
    "--dataset": choice(*DATASETS.names()), "--source": choice("mmsa", "mmsdk"), "--setting": choice("aligned", "unaligned"),
    "--data-root": PATH, "--normalize": None, "--inspect": PATH, "--format": choice("table", "json"),
}
# No `--source mmsdk` without `--from`: that would download from the SDK's host.
DOWNLOAD_OPTIONS = {
    "--source": choice("mmsa"), "--data-root": PATH, "--link": None, "--retries": INTEGERS, "--timeout": FLOATS,
    "--mirror": TEXT,
}
ABLATE_OPTIONS = {
    "--dataset": comma_list(*DATASETS.names()), "--backbone": comma_list(*BACKBONES.names()),
    "--drop": comma_list("sass", "sig", "sal", "sig+sal", "all"), "--grid": None, "--baselines": None,
    "--seeds": comma_list("1", "2"), "--jobs": INTEGERS, "--share-gpu": None, "--recipe": PATH, "--set": assignments(),
    "--max-epochs": INTEGERS, "--samples": INTEGERS, "--format": choice("table", "json", "csv"),
}
# One of these comes last on every ablate line (Click keeps an option's last value), so no case trains.
ABLATE_POISON = st.one_of(
    st.tuples(st.just("--seeds"), st.sampled_from(["", ",", "a", "1,1", "-1", "1.5", str(2**64)])),
    st.tuples(st.just("--drop"), st.sampled_from(["nosuch", "sig+nope", "SASS"])),
    st.tuples(st.just("--jobs"), st.sampled_from(["0", "-3"])),
    st.tuples(st.just("--dataset"), st.sampled_from(["nosuch", "mosi", "sims"])),  # no cache for mosi or sims
    st.tuples(st.just("--backbone"), st.sampled_from(["nosuch", "tfn,nosuch"])),
    st.tuples(st.just("--samples"), st.sampled_from(["5", "-1", "0"])),
    st.tuples(st.just("--max-epochs"), st.sampled_from(["0", "-1"])),
    st.tuples(st.just("--set"), st.sampled_from(["mix.name=none", "train.seed=1", "train.lr=-1", "nokey", "x.y=1"])),
    st.tuples(st.just("--device"), st.sampled_from(["tpu", "cuda:x", "gpu"])),
    st.tuples(st.just("--recipe"), st.sampled_from(["@missing", "@notes.txt", "@empty"])),
)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["train", "train", "resume", "evaluate", "evaluate", "preprocess", "download",
                                    "ablate"]))
    if command == "train":  # a dry run never trains, whatever else the line says
        return ["train", "--dry-run", "--data-root", "@data", "--out", "@runs", *options(draw, TRAIN_OPTIONS)]
    if command == "resume":  # no path names a run that could go on: "running" holds a recipe that cannot build
        return ["train", "--resume", draw(PATH), "--data-root", "@data", *options(draw, {"--seed": INTEGERS,
                                                                                        "--format": TRAIN_OPTIONS["--format"]})]
    if command == "evaluate":
        runs = st.lists(st.one_of(st.just("@real"), PATH), min_size=1, max_size=3)
        return ["evaluate", *draw(runs), *options(draw, EVALUATE_OPTIONS)]
    if command == "preprocess":
        return ["preprocess", "--data-root", "@data", *options(draw, PREPROCESS_OPTIONS)]
    if command == "download":
        dataset = ["--dataset", draw(choice(*DATASETS.names()))]
        origin = draw(st.one_of(st.just([]), PATH.map(lambda path: ["--from", path])))
        source = ["--source", "mmsdk"] if origin and draw(st.booleans()) else []
        return ["download", "--data-root", "@data", *dataset, *origin, *source, *options(draw, DOWNLOAD_OPTIONS)]
    poison = list(draw(ABLATE_POISON))
    return ["ablate", "--out", "@ablation", "--data-root", "@data", "--drop", "sal", *options(draw, ABLATE_OPTIONS),
            *poison]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One complete tiny run (its last.pt kept) and its synth data root, for `evaluate` and `--resume` to meet."""
    root = tmp_path_factory.mktemp("real")
    result = runner.invoke(app, ["train", "--backbone", "lmf", "--mix", "none", "--samples", "40", "--max-epochs", "1", "--keep-last",
                                 "--set", "train.threads=1", "--data-root", str(root / "data"), "--out", str(root),
                                 "--name", "real", "--format", "json"])
    assert result.exit_code == 0, result.output
    return root / "real", root / "data"


def lay_out_paths(root: Path, real: tuple[Path, Path]) -> dict[str, Path]:
    """What PATH_TOKENS name: odd files and folders in `root`, the real run, and a shipped recipe."""
    (root / "notes.txt").write_text("not a run, not a recipe")
    (root / "empty").mkdir()
    for name, status in (("running", "running"), ("complete", "complete")):
        (root / name).mkdir()
        (root / name / "recipe.yaml").write_text("train: {lr: -1}\n")  # never a recipe a run could resume with
        (root / name / "run.json").write_text(f'{{"status": "{status}"}}\n')
    run, data = real
    shipped = Path(__file__).resolve().parent.parent / "recipes" / "mosi-mult.yaml"
    special = {"real": run, "real/checkpoint.pt": run / "checkpoint.pt", "real-cache": next((data / "cache").iterdir()),
               "shipped": shipped, "data": root / "data", "runs": root / "runs", "ablation": root / "ablation"}
    return {token: special.get(token, root / token) for token in [*PATH_TOKENS, "data", "runs", "ablation"]}


@cases(CLI_CASES)
@given(line=command_lines())
def test_a_command_line_is_run_or_refused_in_one_line(real_run: tuple[Path, Path], line: list[str]) -> None:
    real_files = files_under(real_run[0].parent)
    with case_folder() as root:
        paths = lay_out_paths(root, real_run)
        argv = [str(paths[arg[1:]]) if arg.startswith("@") else arg for arg in line]
        run_msmix(argv, root=root, inputs=[*files_under(root), *real_files, paths["shipped"]])
    assert files_under(real_run[0].parent) == real_files, "a command wrote beside the real run"


# ---------------------------------------------------------------------------------------------- MMSA pickles

PICKLE_SIZES = {"train": 4, "valid": 2, "test": 3}
READ_KEYS = ["text", "audio", "vision", "regression_labels", "id", "text_bert", "audio_lengths", "vision_lengths"]
DTYPES = ["float64", "float32", "float16", "int8", "int64", "uint64", "bool", "complex64", "object", "U3", "S3",
          "datetime64[s]"]


def mmsa_content(setting: str) -> dict[str, dict[str, np.ndarray]]:
    return {split: mmsa_split(n, MOSI.seq_lens[setting], MOSI.dims, aligned=setting == "aligned", seed=i, prefix=split)
            for i, (split, n) in enumerate(PICKLE_SIZES.items())}


def spoiled_array(rng: np.random.Generator, kind: str, original: Any) -> Any:
    """A value in place of an array: another shape or type, NaN, huge numbers, bytes that are not UTF-8, ..."""
    array = original if isinstance(original, np.ndarray) else np.zeros(3)
    if kind == "shape":
        return np.zeros(tuple(rng.integers(0, 6, size=rng.integers(0, 4))), dtype=rng.choice(["float64", "float32"]))
    if kind == "dtype":
        return np.zeros(array.shape, dtype=rng.choice(DTYPES))
    if kind in ("nan", "huge") and array.dtype.kind in "biuf":
        spoiled = array.astype(np.float64)  # lengths and ids too: a float where a count is expected
        if kind == "huge":
            return spoiled * 1e300 + 1e300
        if spoiled.size:
            spoiled.flat[rng.integers(spoiled.size)] = rng.choice([np.nan, np.inf, -np.inf])
        return spoiled
    if kind == "rows" and array.ndim:
        return array[: max(0, len(array) - 1)] if rng.random() < 0.5 else np.concatenate([array, array[:1]])
    if kind == "bytes":
        return np.array([b"\xff\xfe" + bytes([int(b)]) for b in rng.integers(0, 256, array.size)], dtype=object)
    return [None, 7, "text", [1.0, 2.0], {"x": 1}][rng.integers(5)]


@st.composite
def pickle_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(setting, file bytes): an MMSA pickle spoiled in its content, its bytes or both."""
    setting = draw(st.sampled_from(["aligned", "unaligned"]))
    content: Any = mmsa_content(setting)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["array", "array", "array", "drop", "junk key", "split type", "top level"]))
        if not isinstance(content, dict):
            break
        split = draw(st.sampled_from(SPLITS))
        if how == "top level":
            content = draw(st.sampled_from([None, [], "aligned_50", (1, 2), {"train": {}}]))
        elif how == "split type":
            content[split] = draw(st.sampled_from([None, [1, 2], "split", np.zeros(3)]))
        elif how == "junk key":
            content[draw(st.one_of(TEXT, st.integers()))] = draw(ANY_SCALAR)
        elif isinstance(content.get(split), dict) and content[split]:
            # mostly what the reader reads; sometimes what it ignores (raw_text, annotations, ...)
            key = draw(st.one_of(st.sampled_from(READ_KEYS), st.sampled_from(sorted(content[split]))))
            if how == "drop":
                content[split].pop(key, None)
            else:
                kind = draw(st.sampled_from(["shape", "dtype", "nan", "huge", "rows", "bytes", "other"]))
                content[split][key] = spoiled_array(rng, kind, content[split].get(key))
    # MMSA's are protocol 4; protocol 2 stores arrays through _codecs.encode, which the reader refuses
    data = bytearray(pickle.dumps(content, protocol=draw(st.sampled_from([4, 4, 4, 5, 5, 2]))))
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "prefix"]))
    if damage == "truncate":
        del data[int(len(data) * draw(st.floats(0, 1, exclude_max=True))):]
    elif damage == "flip":
        for position in rng.integers(0, len(data), size=draw(st.integers(1, 8))):
            data[position] = rng.integers(256)
    elif damage == "prefix":
        data[:0] = draw(st.binary(min_size=1, max_size=16))
    return setting, bytes(data)


@cases(PICKLE_CASES)
@given(spoiled=pickle_files(), normalize=st.booleans(), as_json=st.booleans())
def test_a_damaged_pickle_is_read_or_refused_without_a_partial_cache(spoiled: tuple[str, bytes], normalize: bool,
                                                                     as_json: bool) -> None:
    setting, data = spoiled
    with case_folder() as root:
        path = root / "raw" / "mosi" / f"{setting}_50.pkl"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        run_msmix(["preprocess", "--dataset", "mosi", "--setting", setting, "--data-root", root,
                   *(["--normalize"] if normalize else [])], root=root, inputs=[path])
        run_msmix(["preprocess", "--inspect", path, *(["--format", "json"] if as_json else [])], root=root, inputs=[path])


# ---------------------------------------------------------------------------------------------- .csd files

CSD_NAMES = {"text": "CMU_MOSEI_TimestampedWordVectors.csd", "audio": "CMU_MOSEI_COVAREP.csd",
             "vision": "CMU_MOSEI_VisualFacet42.csd", "labels": "CMU_MOSEI_Labels.csd"}


@pytest.fixture(scope="module")
def csd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOSEI's four computational sequences, one video per fold, in the SDK's layout (tests/formats.py)."""
    folder = tmp_path_factory.mktemp("csd")
    folds = standard_folds("mosei")
    videos = [folds[split][0] for split in SPLITS]
    rng = np.random.default_rng(0)
    content = {
        "text": {v: (rng.normal(size=(8, 300)).astype(np.float32), frames(8, 2.0)) for v in videos},
        "audio": {v: (rng.normal(size=(40, 74)).astype(np.float32), frames(40, 10.0)) for v in videos},
        "vision": {v: (rng.normal(size=(12, 35)).astype(np.float32), frames(12, 3.0)) for v in videos},
        "labels": {v: (rng.uniform(-3, 3, size=(2, 7)).astype(np.float32), intervals((0, 2), (2, 4))) for v in videos},
    }
    for role, name in CSD_NAMES.items():
        write_csd(folder / name, name.removesuffix(".csd"), content[role])
    return folder


def replace_dataset(group: h5py.Group, key: str, **spec: Any) -> None:
    if key in group:
        del group[key]
    group.create_dataset(key, **spec)


def spoil_csd(path: Path, how: str, rng: np.random.Generator) -> None:
    """Break one computational sequence the way `how` says, with h5py (the layout) or on its bytes."""
    if how in ("truncate", "flip"):
        data = bytearray(path.read_bytes())
        if how == "truncate":
            del data[int(rng.integers(len(data))):]
        else:
            for position in rng.integers(0, len(data), size=rng.integers(1, 20)):
                data[position] = rng.integers(256)
        path.write_bytes(bytes(data))
        return
    with h5py.File(path, "r+") as handle:
        root = handle[next(iter(handle))]
        video = root["data"][sorted(root["data"])[int(rng.integers(len(root["data"])))]]
        key = str(rng.choice(["features", "intervals"]))
        if how == "delete":
            del handle[str(rng.choice([f"{root.name}/data", f"{root.name}/metadata", video.name, f"{video.name}/{key}"]))]
        elif how == "second root":
            handle.create_group("another")
        elif how == "rank":
            replace_dataset(video, key, data=np.zeros(tuple(rng.integers(0, 5, size=rng.integers(0, 4))), np.float32))
        elif how == "dtype":
            dtype = rng.choice([h5py.string_dtype(), np.dtype([("a", "f4"), ("b", "i4")]), np.complex64, np.bool_,
                                np.int8, np.float16])
            replace_dataset(video, key, shape=video[key].shape, dtype=dtype)
        elif how == "absurd size":  # declared, never stored: a file of a few kB claiming terabytes
            replace_dataset(video, "features", shape=(10**12, video["features"].shape[1]), dtype=np.float32,
                            chunks=(1, video["features"].shape[1]))
            replace_dataset(video, "intervals", shape=(10**12, 2), dtype=np.float64, chunks=(1, 2))
        elif how == "values":
            values = video[key][()].astype(np.float64)
            values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e308, -1e308, 1e9])
            video[key][...] = values
        elif how == "reversed intervals":
            video["intervals"][...] = video["intervals"][()][:, ::-1]
        elif how == "video as dataset":
            name = video.name
            del handle[name]
            handle.create_dataset(name, data=np.zeros(3))
        elif how == "link":
            root["data"]["linked"] = (h5py.SoftLink("/nowhere") if rng.random() < 0.5
                                      else h5py.ExternalLink("/nonexistent.h5", "/x"))
        elif how == "metadata":
            name = str(rng.choice(sorted(root["metadata"])))
            replace_dataset(root["metadata"], name, shape=(1,), dtype=h5py.vlen_dtype(np.uint8))
            root["metadata"][name][0] = np.frombuffer(b"\xff\xfe\xfa", dtype=np.uint8)
            root.attrs["note"] = np.bytes_(b"\xff\xfe")
        elif how == "non-UTF-8 name":
            h5py.h5g.create(root["data"].id, b"\xff\xfe")
            group = root["data"][b"\xff\xfe"]
            group.create_dataset("features", data=np.zeros((2, video["features"].shape[1]), np.float32))
            group.create_dataset("intervals", data=intervals((0, 1), (1, 2)))
        else:  # "scaled": a thousand times larger (for the labels file: sentiment far outside ±3)
            video["features"][...] = video["features"][()] * 1e3


@cases(CSD_CASES)
@given(role=st.sampled_from(sorted(CSD_NAMES)), seed=st.integers(0, 2**32 - 1), setting=st.sampled_from(["aligned", "unaligned"]),
       how=st.sampled_from(["truncate", "flip", "delete", "second root", "rank", "dtype", "absurd size", "values",
                            "reversed intervals", "video as dataset", "link", "metadata", "non-UTF-8 name", "scaled"]))
def test_a_damaged_csd_is_read_or_refused_without_a_partial_cache(csd_folder: Path, role: str, seed: int, setting: str,
                                                                  how: str) -> None:
    with case_folder() as root:
        folder = root / "raw" / "mosei"
        shutil.copytree(csd_folder, folder)
        path = folder / CSD_NAMES[role]
        spoil_csd(path, how, np.random.default_rng(seed))
        inputs = sorted(folder.iterdir())
        run_msmix(["preprocess", "--dataset", "mosei", "--source", "mmsdk", "--setting", setting, "--data-root", root],
                  root=root, inputs=inputs)
        run_msmix(["preprocess", "--inspect", path], root=root, inputs=inputs)


# ---------------------------------------------------------------------------------------------- caches

CACHE_SIZES = {"train": 10, "valid": 4, "test": 4}
# One thread: on a busy 2-core machine, two threads make this tiny model ten times slower.
TRAIN_ON_CACHE = ["train", "--dataset", "mosi", "--backbone", "lmf", "--mix", "none", "--max-epochs", "1", "--device", "cpu",
                  "--set", "model.hidden_dims=[8,4,8]", "--set", "model.text_out=4", "--set", "train.batch_size=64",
                  "--set", "train.threads=1", "--name", "run", "--format", "json"]


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    """A valid MOSI-aligned cache, and where its feature arrays lie in the file."""
    path = tmp_path_factory.mktemp("cache") / "mosi-aligned.h5"
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in CACHE_SIZES.items():
        lengths = rng.integers(1, 51, n).astype(np.int32)
        features = {}
        for m, width in MOSI.dims.items():
            x = rng.standard_normal((n, 50, width)).astype(np.float32)
            x[np.arange(50)[None, :] >= lengths[:, None]] = 0.0
            features[m] = x
        splits[split] = SplitArrays(features, {m: lengths for m in features}, rng.uniform(-3, 3, n).astype(np.float32),
                                    [f"{split}{i}" for i in range(n)])
    write_cache(path, dataset="mosi", setting="aligned", splits=splits, label_range=3.0, provenance={"source": "test"})
    with h5py.File(path, "r") as handle:
        features = [handle[f"{split}/{m}"].id for split in SPLITS for m in MOSI.dims]
        ranges = [(dataset.get_offset(), dataset.get_offset() + dataset.get_storage_size()) for dataset in features]
    return path, ranges


ATTRIBUTE_VALUES = st.one_of(st.none(), TEXT, st.integers(-2**63, 2**63 - 1), st.floats(),
                             st.just(np.bytes_(b"\xff\xfe")), st.just(np.array([1.0, 2.0])), st.just(np.array(["a", "b"])))


def spoil_cache(path: Path, how: str, rng: np.random.Generator, value: Any, feature_ranges: list[tuple[int, int]]) -> None:
    """Break a cache the way `how` says. Its features keep finite values: finite numbers are valid data, and a
    model that diverges on them fails as a run (exit 1), not as bad input."""
    if how in ("truncate", "append", "flip"):
        data = bytearray(path.read_bytes())
        if how == "truncate":
            del data[int(rng.integers(len(data))):]
        elif how == "append":
            data += bytes(int(rng.integers(1, 5000)))
        else:
            allowed = [p for p in rng.integers(0, len(data), size=200) if not any(a <= p < b for a, b in feature_ranges)]
            for position in allowed[: rng.integers(1, 6)]:
                data[position] = rng.integers(256)
        path.write_bytes(bytes(data))
        return
    with h5py.File(path, "r+") as handle:
        split = handle[str(rng.choice(SPLITS))]
        key = str(rng.choice(sorted(split)))
        if how == "attribute":
            name = str(rng.choice(["format", "version", "dataset", "setting", "label_range", "provenance"]))
            if value is None:
                del handle.attrs[name]
            else:
                handle.attrs[name] = value
        elif how == "delete":
            del handle[split.name if rng.random() < 0.3 else f"{split.name}/{key}"]
        elif how == "replace":
            shape = split[key].shape
            kind = rng.integers(5)
            if kind == 0:
                replace_dataset(split, key, data=np.zeros(tuple(rng.integers(0, 4, size=rng.integers(0, 4))), np.float32))
            elif kind == 1:
                replace_dataset(split, key, data=split[key][()], chunks=True, compression="gzip")
            elif kind == 2:
                replace_dataset(split, key, data=np.zeros(shape, rng.choice(["float64", "int8", "bool"])))
            elif kind == 3:
                replace_dataset(split, key, data=np.full(shape, "x", dtype=object), dtype=h5py.string_dtype("ascii"))
            else:
                replace_dataset(split, key, data=np.full(shape, b"\xff", dtype=object), dtype=h5py.string_dtype())
        elif how == "non-finite":
            target = split[str(rng.choice([*MOSI.dims, "label"]))]
            values = target[()]
            values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf])
            target[...] = values
        elif how == "out of range":
            name = str(rng.choice(["label", *(f"{m}_lengths" for m in MOSI.dims)]))
            split[name][int(rng.integers(split[name].shape[0]))] = rng.choice([-1, 51, 1e6, -4.0])
        else:  # "one training sample"
            train = handle["train"]
            for name in list(train):
                data, dtype = train[name][:1], train[name].dtype
                del train[name]
                train.create_dataset(name, data=data, dtype=dtype)


def features_unchanged(path: Path, original: Path) -> bool:
    """Whether h5py still reads the original features (then training cannot meet garbage numbers)."""
    try:
        with h5py.File(path, "r") as spoiled, h5py.File(original, "r") as base:
            return all(np.array_equal(spoiled[f"{s}/{m}"][()], base[f"{s}/{m}"][()]) for s in SPLITS for m in MOSI.dims)
    except Exception:  # unreadable in any way h5py may fail: training must refuse it, so it may try
        return True


@cases(CACHE_CASES)
@given(how=st.sampled_from(["truncate", "append", "flip", "flip", "attribute", "delete", "replace", "non-finite",
                            "out of range", "one training sample"]),
       seed=st.integers(0, 2**32 - 1), value=ATTRIBUTE_VALUES)
def test_a_damaged_cache_is_used_or_refused_by_train_and_inspect(cache_file: tuple[Path, list[tuple[int, int]]],
                                                                 how: str, seed: int, value: Any) -> None:
    original, feature_ranges = cache_file
    with case_folder() as root:
        path = root / "data" / "cache" / "mosi-aligned.h5"
        path.parent.mkdir(parents=True)
        shutil.copyfile(original, path)
        spoil_cache(path, how, np.random.default_rng(seed), value, feature_ranges)
        run_msmix(["preprocess", "--inspect", path, "--format", "json"], root=root, inputs=[path])
        if how != "flip" or features_unchanged(path, original):
            run_msmix([*TRAIN_ON_CACHE, "--data-root", root / "data", "--out", root / "runs"], root=root, inputs=[path])


# ---------------------------------------------------------------------------------------------- hostile pickles

class Reduces:
    """Pickles as `function(*args)` (then `state` through BUILD, if given): how a crafted file builds objects."""

    def __init__(self, function: Any, args: tuple, state: Any = None) -> None:
        self.function, self.args, self.state = function, args, state

    def __reduce__(self) -> tuple:
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


RECONSTRUCT = np.zeros(1).__reduce__()[0]
FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
SCALAR = np.float64(1).__reduce__()[0]


def hostile_value(how: str, raw: bytes, dtype: np.dtype) -> Reduces:
    """Something that, unpickled, would read `raw` as memory (object pointers) or set state where it may not."""
    if how == "ndarray over bytes":
        return Reduces(np.ndarray, ((len(raw) // dtype.itemsize,), dtype, raw))
    if how == "dtype that hides its objects":
        lying = Reduces(np.dtype, ("V8", False, True), (3, "|", None, ("x",), {"x": (np.dtype("O"), 0)}, 8, 1, 0))
        return Reduces(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (len(raw) // 8,), lying, False, raw))
    if how == "frombuffer":
        return Reduces(FROMBUFFER, (raw, dtype, (len(raw) // dtype.itemsize,), "C"))
    if how == "scalar":
        return Reduces(SCALAR, (dtype, raw[: dtype.itemsize]))
    return Reduces(RECONSTRUCT, (np.dtype, (0,), b"b"))  # "another type": _reconstruct of a type not ndarray


@cases(HOSTILE_PICKLE_CASES)
@given(how=st.sampled_from(["ndarray over bytes", "dtype that hides its objects", "frombuffer", "scalar", "another type"]),
       dtype=st.sampled_from([np.dtype("O"), np.dtype([("a", "O"), ("b", "f8")]), np.dtype(("O", (2,))), np.dtype("f8")]),
       raw=st.binary(min_size=16, max_size=64).map(lambda b: b[: len(b) // 16 * 16]),
       split=st.sampled_from(SPLITS), key=st.sampled_from(["id", "text", "regression_labels", "raw_text"]),
       protocol=st.sampled_from([2, 4, 5]))
def test_a_hostile_pickle_is_refused_in_one_line(how: str, dtype: np.dtype, raw: bytes, split: str, key: str,
                                                 protocol: int) -> None:
    content = mmsa_content("aligned")
    content[split][key] = hostile_value(how, raw, dtype)
    with case_folder() as root:
        path = root / "raw" / "mosi" / "aligned_50.pkl"
        path.parent.mkdir(parents=True)
        path.write_bytes(pickle.dumps(content, protocol=protocol))
        run_msmix(["preprocess", "--dataset", "mosi", "--data-root", root], root=root, inputs=[path])
        run_msmix(["preprocess", "--inspect", path], root=root, inputs=[path])


# ---------------------------------------------------------------------------------------------- recipe files

def special_base(root: Path, kind: str) -> str:
    """A `base:` that is no recipe file: what it names, made in `root`."""
    if kind == "fifo":
        os.mkfifo(root / "fifo.yaml")  # nobody ever writes to it: reading it would wait forever
        return str(root / "fifo.yaml")
    if kind == "huge":
        (root / "huge.yaml").write_bytes(b"# " + b"x" * (1024**2 + 10) + b"\n")
        return str(root / "huge.yaml")
    if kind == "symlink loop":
        (root / "a.yaml").symlink_to(root / "b.yaml")
        (root / "b.yaml").symlink_to(root / "a.yaml")
        return "a.yaml"
    if kind == "cycle":
        (root / "c.yaml").write_text("base: recipe.yaml\n")
        return "c.yaml"
    if kind == "folder":
        (root / "folder.yaml").mkdir()
        return "folder.yaml"
    return kind  # a device: /dev/zero never ends, /dev/null is empty, /dev/urandom is noise


@cases(RECIPE_FILE_CASES)
@given(kind=st.sampled_from(["fifo", "huge", "symlink loop", "cycle", "folder", "/dev/zero", "/dev/null", "/dev/urandom"]),
       through=st.sampled_from(["base", "recipe"]))
def test_a_recipe_file_that_is_no_file_is_refused_in_one_line(kind: str, through: str) -> None:
    with case_folder() as root:
        target = special_base(root, kind)
        recipe = root / "recipe.yaml"
        if through == "base":
            recipe.write_text(f"base: {target}\ntrain: {{max_epochs: 1}}\n")
        else:
            recipe = Path(target) if target.startswith("/") else root / target
        inputs = [p for p in (root / "recipe.yaml", root / "huge.yaml", root / "c.yaml") if p.is_file()]
        code = run_msmix(["train", "--recipe", recipe, "--dry-run", "--data-root", root / "data", "--out", root / "runs"],
                         root=root, inputs=inputs)
        assert code == 2


# ---------------------------------------------------------------------------------------------- names

PATH_PARTS = st.sampled_from(["..", ".", "", "x", "runs", "/", "/tmp", "~", "a b"])


@cases(NAME_CASES)
@given(parts=st.lists(PATH_PARTS, min_size=1, max_size=4), absolute=st.booleans())
def test_a_name_that_is_a_path_is_refused_in_one_line(parts: list[str], absolute: bool) -> None:
    name = ("/" if absolute else "") + "/".join(parts)
    if name not in ("", ".", "..") and "/" not in name:
        name = f"../{name}"  # always a path: this family is about names that leave --out
    with case_folder() as root:
        assert run_msmix(["train", "--dry-run", "--name", name, "--data-root", root / "data", "--out", root / "runs"],
                         root=root) == 2
        result = runner.invoke(app, ["train", "--resume", str(root / "nothing"), "--name", name])
        assert result.exit_code == 2


# ---------------------------------------------------------------------------------------------- checkpoints

def spoiled_checkpoint(state: dict, how: str, rng: np.random.Generator) -> Any:
    import torch

    model = state["model"]
    if how == "empty model":
        return {"model": {}}
    if how == "list":
        return [1, 2, 3]
    if how == "other shapes":
        key = sorted(model)[int(rng.integers(len(model)))]
        return {**state, "model": {**model, key: torch.zeros(tuple(int(d) + 1 for d in model[key].shape))}}
    if how == "missing key":
        key = sorted(model)[int(rng.integers(len(model)))]
        return {**state, "model": {k: v for k, v in model.items() if k != key}}
    if how == "extra key":
        return {**state, "model": {**model, "intruder.weight": torch.zeros(2)}}
    if how == "no model":
        return {"weights": model}
    return {**state, "model": [1.0, 2.0]}  # "model not a dict"


@cases(CHECKPOINT_CASES)
@given(how=st.sampled_from(["empty model", "list", "other shapes", "missing key", "extra key", "no model", "model not a dict"]),
       file=st.sampled_from(["checkpoint.pt", "last.pt"]), seed=st.integers(0, 2**32 - 1))
def test_a_checkpoint_with_the_wrong_contents_is_refused_in_one_line(real_run: tuple[Path, Path], how: str, file: str,
                                                                     seed: int) -> None:
    import json

    import torch

    run, data = real_run
    with case_folder() as root:
        copy = root / "copy"
        shutil.copytree(run, copy)
        state = torch.load(copy / file, weights_only=True)
        torch.save(spoiled_checkpoint(state, how, np.random.default_rng(seed)), copy / file)
        if file == "last.pt":  # a resume reads it: the run must look interrupted
            info = json.loads((copy / "run.json").read_text())
            (copy / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
            code = run_msmix(["train", "--resume", copy, "--data-root", data], root=root, inputs=[copy / file])
        else:
            code = run_msmix(["evaluate", copy, "--data-root", data], root=root, inputs=[copy / file])
        assert code == 2
