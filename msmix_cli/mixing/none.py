"""The `none` mixer: no mixing, registered like the others so "no augmentation" is just a configuration."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from msmix_cli.mixing.base import MIXERS, Mix, Mixer
from msmix_cli.types import Multimodal


@MIXERS.register("none")
class NoMix(Mixer):
    reads = frozenset({"name"})

    def forward(self, views: Multimodal, label: Tensor, rng: np.random.Generator) -> Mix | None:
        return None
