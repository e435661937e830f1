"""YAML recipe -> typed, validated dataclasses. An unknown key or a wrong type fails before any data loads.

Precedence, lowest first: the dataclass defaults, the recipe file, the CLI's named flags, `--set a.b=v`.
A recipe may name `base: other.yaml` (relative to itself) whose keys it overrides, so the MS-Mix settings
live once in `recipes/base/msmix.yaml`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput, first_line
from msmix_cli.mixing import MIXERS, MixConfig, mixer_settings
from msmix_cli.mixing.presets import apply_preset
from msmix_cli.models import BACKBONES

SECTIONS = ("data", "model", "mix", "train")
SEED_LIMIT = 2**64
MAX_RECIPE_BYTES = 1024**2  # a recipe is a few hundred bytes; a bound keeps a huge or endless file from filling memory


@dataclass
class DataConfig:
    dataset: str = "synth"
    setting: str | None = None  # aligned | unaligned; None = the dataset's first setting
    samples: int | None = None  # synth only: total number of segments (default MOSI's 2199)
    data_seed: int = 0  # synth only: the benchmark's own seed, fixed across training seeds
    # Features in memory (true) or read from the cache file batch by batch (false, for caches larger than RAM);
    # None: streamed when the features would take more than 2 GiB (MOSEI unaligned, about 8.5 GB).
    in_memory: bool | None = None


@dataclass
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    scheduler: Literal["none", "plateau", "cosine"] = "none"
    plateau_patience: int = 5  # ReduceLROnPlateau patience (MulT)
    warmup: float = 0.0  # fraction of the steps spent warming up before the cosine decay (ALMT: 0.1)
    batch_size: int = 32
    max_epochs: int = 40
    early_stop: int = 8  # stop this many epochs after the last improvement of the validation loss
    min_epochs: int = 0  # never stop early before this epoch (a run may start on a constant-prediction plateau)
    grad_clip: float | None = None  # max gradient norm
    accumulation: int = 1  # optimiser step every this many batches (MulT reference: 8)
    seed: int = 1111
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with a scaler); ignored on CPU
    nonfinite: Literal["stop", "skip"] = "stop"  # what a non-finite loss does: stop the run, or skip the batch
    threads: int | None = None  # CPU intra-op threads; None: the cores this process may use, shared among local ranks
    compile: bool = False  # torch.compile the backbone's encode and head (first steps slower while it compiles)
    log_grad_norms: bool = False  # history.csv gets each loss term's gradient norm at encoder, head, predictors (costs backward passes)
    keep_last: bool = False  # keep last.pt (the resume point, as large as the model and its optimiser) once the run is complete


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "tfn"})  # name + the backbone's own keys
    mix: MixConfig = field(default_factory=MixConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def backbone(self) -> str:
        return self.model["name"]

    def backbone_config(self) -> Any:
        """The backbone's typed config, built from the recipe's `model` keys other than `name`."""
        config_class = BACKBONES.get(self.backbone).config_class
        params = {k: v for k, v in self.model.items() if k != "name"}
        return build_dataclass(config_class, params, "model")

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(part) if dataclasses.is_dataclass(part) else dict(part) for name, part in
                (("data", self.data), ("model", self.model), ("mix", self.mix), ("train", self.train))}


def recipes_dir() -> Path:
    """The folder of shipped recipes: $MSMIX_RECIPES, else `recipes/` beside the package (editable install)."""
    return Path(os.environ.get("MSMIX_RECIPES", Path(__file__).resolve().parent.parent / "recipes"))


def default_recipe_path(dataset: str, backbone: str) -> Path | None:
    path = recipes_dir() / f"{dataset}-{backbone}.yaml"
    return path if path.is_file() else None


def shipped_recipe(dataset: str, backbone: str) -> dict[str, Any]:
    """The shipped recipe of dataset × backbone ({} when none). An imported dataset has none of its own: it
    gets the recipe of the published dataset it is `like`, without that dataset's name and setting."""
    path = default_recipe_path(dataset, backbone)
    if path is not None:
        return read_yaml(path)
    like = None if dataset in DATASETS else DATASETS.get(dataset).like
    path = default_recipe_path(like, backbone) if like else None
    if path is None:
        return {}
    raw = read_yaml(path)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    raw["data"] = {k: v for k, v in data.items() if k not in ("dataset", "setting")}
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """A recipe file as a dict with its `base:` chain merged in (the file's own keys win)."""
    return _read_yaml(path, seen=())


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    try:
        path = path.resolve()
    except (OSError, ValueError, RuntimeError) as error:  # a symlink loop (RuntimeError before 3.13), a NUL in a name
        raise BadInput(f"cannot read recipe {path}: {first_line(error)}") from None
    if path in seen:
        raise BadInput(f"recipe {path} includes itself through 'base:'")
    try:
        loaded = yaml.safe_load(recipe_text(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]  # a ReaderError has no `problem`
        raise BadInput(f"malformed YAML in recipe {path}{where}: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise BadInput(f"recipe {path} nests its values too deeply") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise BadInput(f"recipe {path} must be a mapping of sections ({', '.join(SECTIONS)}), not {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise BadInput(f"'base' in recipe {path} must be a file name")
    return merge(_read_yaml(path.parent / base, (*seen, path)), loaded)


def recipe_text(path: Path) -> str:
    """The text of a recipe file: a regular file of at most MAX_RECIPE_BYTES (not a device that never ends, not a
    FIFO that never answers), UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # without O_NONBLOCK, opening a FIFO waits for a writer
    except FileNotFoundError:
        raise BadInput(f"recipe not found: {path}") from None
    except OSError as error:
        raise BadInput(f"cannot read recipe {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadInput(f"recipe {path} is not a regular file")
        try:
            data = handle.read(MAX_RECIPE_BYTES + 1)
        except OSError as error:  # a folder's name ends here on some systems; a failing disk
            raise BadInput(f"cannot read recipe {path}: {error.strerror or error}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise BadInput(f"recipe {path} is larger than {MAX_RECIPE_BYTES // 1024**2} MB; a recipe is a short YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"cannot read recipe {path}: {error}") from None


def merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """Section-wise merge: keys of `high` replace those of `low`."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in low.items()}
    for section, values in high.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            if section == "model" and values.get("name", merged[section].get("name")) != merged[section].get("name"):
                merged[section] = dict(values)  # another backbone: its keys, not the old one's
            else:
                merged[section].update(values)
        else:
            merged[section] = values
    return merged


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-3", "mix.sass=false"]` -> {"train": {"lr": 1e-3}, "mix": {"sass": False}}."""
    result: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name or "." in name:
            raise BadInput(f"--set expects section.key=value (e.g. train.lr=1e-3), got {assignment!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, RecursionError):  # not YAML (or nested too deeply for PyYAML): the text as given
            value = raw
        result.setdefault(section, {})[name] = value
    return result


def build_recipe(raw: dict[str, Any]) -> Recipe:
    """Validate a merged recipe dict into a Recipe; every problem is a one-line BadInput."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise BadInput(f"unknown recipe section {unknown[0]!r}; sections are: {', '.join(SECTIONS)}")
    for section, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise BadInput(f"recipe section {section!r} must be a mapping, not {type(values).__name__}")
    model = dict(raw.get("model") or {})
    model.setdefault("name", "tfn")
    if not isinstance(model["name"], str):
        raise BadInput(f"model.name must be a backbone name; choose one of: {', '.join(BACKBONES.names())}")
    BACKBONES.get(model["name"])
    recipe = Recipe(
        data=build_dataclass(DataConfig, raw.get("data") or {}, "data"),
        model=model,
        mix=build_dataclass(MixConfig, apply_preset(dict(raw.get("mix") or {})), "mix"),
        train=build_dataclass(TrainConfig, raw.get("train") or {}, "train"),
    )
    MIXERS.get(recipe.mix.name)
    spec = DATASETS.get(recipe.data.dataset)
    if recipe.data.setting is not None and recipe.data.setting not in spec.seq_lens:
        raise BadInput(f"{spec.name} has no setting {recipe.data.setting!r}; choose one of: {', '.join(spec.settings)}")
    recipe.backbone_config()  # validates the model keys now, before any data loads
    check_ranges(recipe)
    return recipe


def check_ranges(recipe: Recipe) -> None:
    """Values that parse but make no sense: caught here with the key's name rather than deep in training."""
    t, m = recipe.train, recipe.mix
    rules: list[tuple[bool, str]] = [
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.max_epochs >= 1, f"train.max_epochs must be >= 1, got {t.max_epochs}"),
        (t.early_stop >= 1, f"train.early_stop must be >= 1, got {t.early_stop}"),
        (t.min_epochs >= 0, f"train.min_epochs must be >= 0, got {t.min_epochs}"),
        (m.warmup_epochs >= 0, f"mix.warmup_epochs must be >= 0, got {m.warmup_epochs}"),
        (m.label_bandwidth is None or m.label_bandwidth > 0, f"mix.label_bandwidth must be > 0, got {m.label_bandwidth}"),
        (t.accumulation >= 1, f"train.accumulation must be >= 1, got {t.accumulation}"),
        (t.grad_clip is None or t.grad_clip > 0, f"train.grad_clip must be > 0, got {t.grad_clip}"),
        (0 <= t.warmup < 1, f"train.warmup must be in [0, 1), got {t.warmup}"),
        (t.plateau_patience >= 0, f"train.plateau_patience must be >= 0, got {t.plateau_patience}"),
        (t.threads is None or t.threads >= 1, f"train.threads must be >= 1, got {t.threads}"),
        (m.alpha > 0, f"mix.alpha must be > 0, got {m.alpha}"),
        (0 <= m.delta <= 1, f"mix.delta must be in [0, 1], got {m.delta}"),
        (m.num_mix is None or m.num_mix >= 1, f"mix.num_mix must be >= 1, got {m.num_mix}"),
        (m.w_mix >= 0 and m.w_sal >= 0 and m.sal_scale >= 0, "mix.w_mix, mix.w_sal and mix.sal_scale must be >= 0"),
        (m.sig_tokens >= 1 and m.sig_heads >= 1, "mix.sig_tokens and mix.sig_heads must be >= 1"),
        (recipe.data.samples is None or recipe.data.samples >= 12, f"data.samples must be >= 12, got {recipe.data.samples}"),
        (0 <= t.seed < SEED_LIMIT, f"train.seed must be in [0, 2**64), got {t.seed}"),  # what numpy and torch accept
        (re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
         f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}"),
        (0 <= recipe.data.data_seed < SEED_LIMIT, f"data.data_seed must be in [0, 2**64), got {recipe.data.data_seed}"),
    ]
    for ok, message in rules:
        if not ok:
            raise BadInput(message)


def build_dataclass(cls: type, values: dict[str, Any], section: str) -> Any:
    """Instantiate dataclass `cls` from `values`, checking names and coercing types; BadInput on any mismatch."""
    if not isinstance(values, dict):
        raise BadInput(f"recipe section {section!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        valid = ", ".join(k for k in fields)
        raise BadInput(f"unknown key {section}.{unknown[0]}; valid keys: {valid}")
    converted = {k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**converted)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type (ints to floats, '1e-3' to 1e-3, lists to tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, key)
            except BadInput as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise BadInput(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"{key} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce(v, item, key) for v in value]
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(items):
            raise BadInput(f"{key} must have {len(args)} items, got {len(items)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            items = [coerce(v, a, key) for v, a in zip(value, args)]
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise BadInput(f"{key} must be a mapping, got {value!r}")
        return {str(k): coerce(v, args[1] if args else Any, key) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise BadInput(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BadInput(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise BadInput(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise BadInput(f"{key} must be a string, got {value!r}")
    raise BadInput(f"{key}: unsupported value {value!r}")


def resolve_recipe(
    recipe_path: Path | None,
    *,
    dataset: str | None = None,
    backbone: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    assignments: list[str] | None = None,
) -> Recipe:
    """The recipe a command runs: a file (or the shipped one for dataset × backbone), then flags, then --set.

    `overrides` are the CLI's named flags as {section: {key: value}} (e.g. {"train": {"seed": 1}}).
    """
    sets = parse_overrides(assignments or [])
    raw: dict[str, Any] = read_yaml(recipe_path) if recipe_path is not None else {}
    file_dataset = (raw.get("data") or {}).get("dataset") if isinstance(raw.get("data"), dict) else None
    file_backbone = (raw.get("model") or {}).get("name") if isinstance(raw.get("model"), dict) else None
    if recipe_path is not None and backbone and file_backbone and backbone != file_backbone:
        raise BadInput(f"recipe {recipe_path} is for backbone {file_backbone!r}; drop --backbone {backbone} or use another recipe")
    if recipe_path is None:
        want_dataset = dataset or sets.get("data", {}).get("dataset") or DataConfig.dataset
        want_backbone = backbone or sets.get("model", {}).get("name") or "tfn"
        if isinstance(want_dataset, str) and isinstance(want_backbone, str):
            raw = shipped_recipe(want_dataset, want_backbone)
    elif dataset and file_dataset and dataset != file_dataset:
        raise BadInput(f"recipe {recipe_path} is for dataset {file_dataset!r}; drop --dataset {dataset} or use another recipe")
    flags: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (overrides or {}).items()}
    if dataset:
        flags.setdefault("data", {})["dataset"] = dataset
    if backbone:
        flags.setdefault("model", {})["name"] = backbone
    merged = merge(merge(raw, flags), sets)
    return build_recipe(merged)


def same_experiment(saved: Recipe, wanted: Recipe) -> bool:
    """Whether a run saved with recipe `saved` is the run `wanted` asks for: equal recipes, but for
    `train.threads` (it changes no result; `ablate --jobs` sets it in each child) and for the mix keys that
    the mixer never reads (a `none` run is the same run whatever `mix.sass` or the preset says)."""
    if mixer_settings(saved.mix) != mixer_settings(wanted.mix):
        return False
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, threads=wanted.train.threads), mix=wanted.mix) == wanted


def dump_recipe(recipe: Recipe, command: str | None = None) -> str:
    """The resolved recipe as YAML; with `command`, it opens with the line that reruns it."""
    header = f"# {command}\n" if command else ""
    return header + yaml.safe_dump(recipe.to_dict(), sort_keys=False)
