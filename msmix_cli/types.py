"""The few data types every layer shares: per-modality tensors, a batch, and the shape of a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")


@dataclass(frozen=True)
class Multimodal:
    """One tensor per modality, [B, D] or [B, T, D], with the valid steps of each sequence.

    `lengths[m]` is a [B] long tensor of valid (front) steps, padding sits at the end; None means every
    step is valid (or the tensor is [B, D]). Raw inputs, latents and mixed latents all use this type, so a
    mixer works the same at the input and at the latent point.
    """

    features: dict[str, Tensor]
    lengths: dict[str, Tensor | None] = field(default_factory=dict)

    def __getitem__(self, modality: str) -> Tensor:
        return self.features[modality]

    @property
    def batch_size(self) -> int:
        return next(iter(self.features.values())).shape[0]

    def length(self, modality: str) -> Tensor | None:
        return self.lengths.get(modality)

    def mask(self, modality: str) -> Tensor | None:
        """[B, T] bool, True on valid steps; None when every step is valid."""
        lengths = self.length(modality)
        x = self.features[modality]
        if lengths is None or x.dim() < 3:
            return None
        return torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]

    def map(self, fn: Callable[[str, Tensor], Tensor]) -> Multimodal:
        return replace(self, features={m: fn(m, x) for m, x in self.features.items()})

    def select(self, index: Tensor) -> Multimodal:
        return Multimodal(
            {m: x[index] for m, x in self.features.items()},
            {m: None if n is None else n[index] for m, n in self.lengths.items()},
        )

    def cat(self, other: Multimodal) -> Multimodal:
        """Stack two sets of samples (originals, then mixed) along the batch axis."""
        lengths: dict[str, Tensor | None] = {}
        for m in self.features:
            mine, theirs = self.length(m), other.length(m)
            if mine is None and theirs is None:
                lengths[m] = None
            else:
                full = self.features[m].shape[1] if self.features[m].dim() > 2 else 1
                lengths[m] = torch.cat([
                    mine if mine is not None else torch.full((self.batch_size,), full, device=self.features[m].device),
                    theirs if theirs is not None else torch.full((other.batch_size,), full, device=self.features[m].device),
                ])
        return Multimodal({m: torch.cat([self.features[m], other.features[m]]) for m in self.features}, lengths)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Multimodal:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Multimodal({m: move(x) for m, x in self.features.items()}, {m: move(n) for m, n in self.lengths.items()})


@dataclass(frozen=True)
class Batch:
    """A batch of samples as the data layer yields it and `Backbone.encode` takes it."""

    inputs: Multimodal  # raw features [B, L_m, D_m] (float32), lengths per modality
    label: Tensor  # [B] sentiment score
    text_ids: Tensor | None = None  # [B, 3, L_T] BERT input_ids / input_mask / segment_ids, when the cache has them
    index: Tensor | None = None  # [B] row numbers in the split, for tracing a sample back

    @property
    def size(self) -> int:
        return self.label.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(self.inputs.to(device, non_blocking), move(self.label), move(self.text_ids), move(self.index))


@dataclass(frozen=True)
class DataShape:
    """What a backbone and a mixer must know of a dataset to be built."""

    dims: dict[str, int]  # feature width per modality, e.g. {"text": 768, "audio": 5, "vision": 20}
    seq_lens: dict[str, int]  # padded length per modality
    label_range: float = 3.0  # labels lie in [-label_range, label_range]: 3 for MOSI/MOSEI, 1 for CH-SIMS
    aligned: bool = True  # True when every modality shares the text's time steps
