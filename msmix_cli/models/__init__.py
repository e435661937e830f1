"""Backbones: a registry maps a name to a class; each backbone lives in its own module."""

from msmix_cli.models.base import BACKBONES, Backbone, HeadOutput, Latents, build_backbone, count_parameters, task_loss

# Importing a module registers its backbone.
from msmix_cli.models import tfn, lmf, mult, misa, almt, glomo  # noqa: E402,F401

__all__ = ["BACKBONES", "Backbone", "HeadOutput", "Latents", "build_backbone", "count_parameters", "task_loss"]
