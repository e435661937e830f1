"""Mixers: a registry maps a name to a mixer; `none` is registered like the others."""

from msmix_cli.mixing.base import MIXERS, Mix, MixConfig, Mixer, build_mixer, mix_loss, mixer_settings

# Importing a module registers its mixer.
from msmix_cli.mixing import none, msmix, mixup  # noqa: E402,F401

__all__ = ["MIXERS", "Mix", "MixConfig", "Mixer", "build_mixer", "mix_loss", "mixer_settings"]
