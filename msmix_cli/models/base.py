"""The one interface every backbone implements, so any mixer applies to any backbone.

    latents = model.encode(batch)                     # once per batch; ends where the paper mixes
    mix = mixer(latents.views, batch.label, rng)      # K mixed samples in latent space (or None)
    out = model.head(latents.views.cat(mix.views))    # one pass over B + K latents
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from msmix_cli.registry import Registry
from msmix_cli.types import Batch, DataShape, Multimodal


@dataclass
class Latents:
    """What `encode` returns: the per-modality latents a mixer may mix, plus encoder-side losses."""

    views: Multimodal  # {"text", "audio", "vision"} -> [B, d_m] or [B, T, d_m]
    aux_loss: Tensor | float = 0.0  # weighted auxiliary losses computed on the originals (e.g. MISA's recon)


@dataclass
class HeadOutput:
    prediction: Tensor  # [N, 1] sentiment score
    aux_loss: Tensor | float = 0.0  # weighted auxiliary losses computed in the head (e.g. MISA, GLoMo's MoE)


class Backbone(nn.Module):
    """Base class. Subclasses set `config_class` (a dataclass of hyperparameters) and `task_loss`."""

    config_class: ClassVar[type]
    task_loss: ClassVar[str] = "l1"  # "l1" or "mse": the backbone's usual training loss
    latent_dims: dict[str, int]  # width (last dim) of each modality's latent, set in __init__

    def __init__(self, config: Any, shape: DataShape) -> None:
        super().__init__()
        self.config = config
        self.shape = shape

    def encode(self, batch: Batch) -> Latents:
        raise NotImplementedError

    def head(self, views: Multimodal) -> HeadOutput:
        raise NotImplementedError

    def forward(self, batch: Batch) -> HeadOutput:
        """Prediction without mixing (evaluation)."""
        latents = self.encode(batch)
        out = self.head(latents.views)
        return HeadOutput(out.prediction, out.aux_loss + latents.aux_loss)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimiser parameter groups; override for per-part learning rates (LMF's factors, BERT)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]


BACKBONES: Registry[type[Backbone]] = Registry("backbone")


def build_backbone(name: str, config: Any, shape: DataShape) -> Backbone:
    return BACKBONES.get(name)(config, shape)


def task_loss(kind: str, prediction: Tensor, label: Tensor) -> Tensor:
    """Mean task loss of [N, 1] predictions against [N] labels."""
    error = prediction.reshape(-1) - label.reshape(-1)
    return error.abs().mean() if kind == "l1" else error.pow(2).mean()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
