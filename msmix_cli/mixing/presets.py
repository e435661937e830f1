"""Named sets of `mix` keys. A preset fills the keys a recipe, a flag or `--set` did not give.

`authors` reproduces the authors' code exactly (MSMIX.md): what a researcher reproducing the paper needs.
`msmix` is msmix's recommended configuration, chosen on validation scores (docs/msmix.md has the evidence).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from msmix_cli.errors import BadInput
from msmix_cli.mixing.base import MixConfig

# MixConfig's defaults are the authors' behaviour; `name` and `preset` are not part of a preset.
AUTHORS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(MixConfig) if f.name not in ("name", "preset")}

PRESETS: dict[str, dict[str, Any]] = {
    "authors": AUTHORS,
}


def apply_preset(mix: dict[str, Any]) -> dict[str, Any]:
    """The recipe's mix section with its preset's values under the keys it sets itself."""
    name = mix.get("preset")
    if name is None:
        return mix
    if not isinstance(name, str) or name not in PRESETS:
        raise BadInput(f"unknown mix.preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return {**PRESETS[name], **mix}
