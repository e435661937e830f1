"""A recipe as a user inspects it: every value resolved, each with where it came from (`msmix recipe show`),
written out to edit (`msmix recipe cp`), or checked (`msmix recipe validate`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput
from msmix_cli.io import atomic_write_text
from msmix_cli.mixing.presets import PRESETS
from msmix_cli.recipes import Recipe, default_recipe_path, parse_overrides, resolve_recipe

DEFAULT = "default"
SET = "--set"


def recipe_file(dataset: str, backbone: str, path: Path | None) -> Path | None:
    """The file a recipe starts from: the one given, else the shipped one of dataset × backbone (an import's
    is that of the published dataset it is like), or None when only the code's defaults apply."""
    if path is not None:
        return path
    shipped = default_recipe_path(dataset, backbone)
    if shipped is None and dataset not in DATASETS:
        like = DATASETS.get(dataset).like
        shipped = default_recipe_path(like, backbone) if like else None
    return shipped


def file_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its `base:` files, the lowest first, each with only its own keys."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    current: Path | None = path.resolve()
    while current is not None:
        loaded = yaml.safe_load(current.read_text(encoding="utf-8")) or {}
        base = loaded.pop("base", None)
        chain.insert(0, (current, loaded))
        current = (current.parent / base).resolve() if isinstance(base, str) and len(chain) < 32 else None
    return chain


def full_sections(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The recipe's sections with every key, the backbone's own defaults included."""
    sections = recipe.to_dict()
    sections["model"] = {"name": recipe.backbone, **dataclasses.asdict(recipe.backbone_config())}
    return sections


def value_sources(recipe: Recipe, path: Path | None, assignments: list[str]) -> dict[str, str]:
    """`section.key` -> where its value came from: `--set`, a recipe file, the mix preset, or the code's default."""
    given: dict[str, str] = {}
    for file, raw in file_chain(path) if path is not None else []:
        for section, values in raw.items():
            for key in values if isinstance(values, dict) else ():
                given[f"{section}.{key}"] = display_path(file)
    for section, values in parse_overrides(assignments).items():
        for key in values:
            given[f"{section}.{key}"] = SET
    preset = PRESETS.get(recipe.mix.preset, {})
    sources = {}
    for section, values in full_sections(recipe).items():
        for key in values:
            fallback = f"preset {recipe.mix.preset}" if section == "mix" and key in preset else DEFAULT
            sources[f"{section}.{key}"] = given.get(f"{section}.{key}", fallback)
    return sources


def display_path(path: Path) -> str:
    """A path relative to the working folder when it lies inside it, so that the listing stays short."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def show_recipe(dataset: str | None, backbone: str | None, path: Path | None, assignments: list[str]) -> tuple[Recipe, str]:
    """The resolved recipe and its YAML, each value followed by a comment saying where it came from."""
    recipe = resolve_recipe(path, dataset=dataset, backbone=backbone, assignments=assignments)
    origin = recipe_file(recipe.data.dataset, recipe.backbone, path)
    sources = value_sources(recipe, origin, assignments)
    lines = [f"# {recipe.data.dataset} × {recipe.backbone}, resolved from {display_path(origin) if origin else 'the defaults'}"
             f"{' and --set' if assignments else ''}; train it with: msmix train --recipe FILE"]
    for section, values in full_sections(recipe).items():
        lines.append(f"{section}:")
        for key, value in values.items():
            text = yaml.safe_dump({key: value}, default_flow_style=True, width=1_000_000).strip()[1:-1]
            lines.append(f"  {text}  # {sources[f'{section}.{key}']}")
    return recipe, "\n".join(lines) + "\n"


def copy_recipe(dataset: str, backbone: str, target: Path, assignments: list[str]) -> Path:
    """Write the resolved recipe of dataset × backbone to `target` to edit; never over an existing file."""
    if target.exists():
        raise BadInput(f"{target} exists; msmix recipe cp never overwrites a file: choose another path or remove it")
    _, text = show_recipe(dataset, backbone, None, assignments)
    atomic_write_text(target, text)
    return target
