"""An optional pretrained text encoder (BERT and kin, through `transformers`) that a backbone fine-tunes.

By default MISA, ALMT and GLoMo read the 768-d BERT features stored in the MMSA caches. Given a local model
directory as their `text_encoder`, they instead encode `Batch.text_ids` with that model, as the reference
implementations do with bert-base-uncased. Nothing is ever downloaded: the directory must hold the model.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from types import ModuleType

from torch import Tensor, nn

from msmix_cli.errors import BadInput
from msmix_cli.types import Batch, DataShape

INSTALL_HINT = "pip install 'msmix[bert]'"


@dataclass
class TextStates:
    layers: tuple[Tensor, ...]  # hidden states, the embeddings first and the last layer last, each [B, L, H]
    mask: Tensor  # [B, L] bool, True on real tokens

    @property
    def last(self) -> Tensor:
        return self.layers[-1]


def import_transformers() -> ModuleType:
    """`transformers`, imported only when a text encoder is asked for: most runs use stored features."""
    try:
        import transformers
    except ImportError:
        raise BadInput(f"a text_encoder needs the transformers package: {INSTALL_HINT}") from None
    return transformers


class PretrainedTextEncoder(nn.Module):
    """A `transformers.AutoModel` loaded from a local directory, fed MMSA's [B, 3, L] `text_bert` rows."""

    def __init__(self, path: str, finetune: bool = True) -> None:
        super().__init__()
        transformers = import_transformers()
        if not os.path.isdir(path):  # unlike Path.is_dir, False for a name too long or holding a NUL
            raise BadInput(f"text_encoder {path!r} is not a directory holding a pretrained model (config.json and weights)")
        try:
            self.model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise BadInput(f"cannot load a text encoder from {path}: {error}") from None
        self.hidden_size: int = self.model.config.hidden_size
        # DistilBERT-like models have no segment embedding; MMSA's segment ids are all 0 then anyway.
        self.takes_segments = "token_type_ids" in inspect.signature(self.model.forward).parameters
        self.model.requires_grad_(finetune)

    def forward(self, text_ids: Tensor) -> TextStates:
        """text_ids [B, 3, L]: input ids, attention mask, segment ids (MMSA stores them as floats)."""
        ids, mask, segments = (text_ids[:, row].long() for row in range(3))
        extra = {"token_type_ids": segments} if self.takes_segments else {}
        output = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra)
        return TextStates(tuple(output.hidden_states), mask.bool())

    def encode_batch(self, batch: Batch) -> TextStates:
        if batch.text_ids is None:
            raise BadInput("this backbone's text_encoder reads token ids, and the dataset has none (no text_bert); "
                           "set model.text_encoder to null to use the stored text features")
        if batch.text_ids.shape[0] != batch.inputs.batch_size:
            raise BadInput("input-level mixing cannot mix token ids: with a text_encoder use a latent-space mixer, "
                           "or set model.text_encoder to null")
        return self(batch.text_ids)


def build_text_encoder(path: str | None, finetune: bool) -> PretrainedTextEncoder | None:
    return None if path is None else PretrainedTextEncoder(path, finetune)


def text_width(shape: DataShape, encoder: PretrainedTextEncoder | None) -> int:
    """Width of the text sequence a backbone reads: the encoder's hidden size, else the stored features'."""
    return shape.dims["text"] if encoder is None else encoder.hidden_size


def text_sequence(batch: Batch, encoder: PretrainedTextEncoder | None) -> tuple[Tensor, Tensor | None]:
    """The text a backbone reads: [B, L, D] and its [B, L] valid mask (None when every step is valid)."""
    if encoder is None:
        return batch.inputs["text"], batch.inputs.mask("text")
    states = encoder.encode_batch(batch)
    return states.last, states.mask
