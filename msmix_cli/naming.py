"""What a run is known by: its mixer's label and the identity every row of results carries.

Kept free of torch, so that the command line checks `--drop` with it before anything heavy loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from msmix_cli.recipes import Recipe

MIX_PARTS = ("sass", "sig", "sal")  # the MS-Mix parts an ablation can switch off


def mix_label(mix: Any) -> str:
    """`msmix`, `msmix-nosig-nosal` with MS-Mix parts switched off, or a baseline's name (`none`, `mixup`, ...).

    `mix` is a recipe's mix section: its MixConfig, or the mapping a recipe.yaml holds (read without torch).
    """
    def get(key: str, default: Any = None) -> Any:
        return mix.get(key, default) if isinstance(mix, Mapping) else getattr(mix, key, default)

    name = str(get("name", "msmix"))
    off = [part for part in MIX_PARTS if name == "msmix" and get(part, True) is False]
    return name + "".join(f"-no{part}" for part in off)


def run_identity(recipe: Recipe) -> dict[str, Any]:
    """The keys that say what a row of results is, so that a script need not open recipe.yaml to know."""
    return {"dataset": recipe.data.dataset, "backbone": recipe.backbone, "mix": mix_label(recipe.mix), "seed": recipe.train.seed}
