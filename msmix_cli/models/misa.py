"""MISA: Modality-Invariant and -Specific Representations (Hazarika et al., ACM MM 2020), as MMSA implements it
(`models/singleTask/MISA.py`, trainer `trains/singleTask/MISA.py`, CMD similarity)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from msmix_cli.models.attention import VectorFusionEncoder
from msmix_cli.models.base import BACKBONES, Backbone, HeadOutput, Latents
from msmix_cli.models.blocks import Dropout, masked_mean, valid_lengths
from msmix_cli.models.text_encoder import build_text_encoder, text_sequence, text_width
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal


@dataclass
class MISAConfig:
    """MMSA's MOSI settings (MOSEI: dropout .5, diff .3, sim .8; SIMS: dropout 0, diff .3, sim 1, recon .8)."""

    hidden: int = 128  # width of the projections and of the shared and private codes
    dropout: float = 0.2  # in the final MLP
    diff_weight: float = 0.1  # orthogonality of shared vs private codes and of the privates to each other
    sim_weight: float = 0.3  # CMD between the shared codes of the three modalities
    recon_weight: float = 1.0  # reconstruction of each projection from its shared + private codes
    cmd_moments: int = 5
    fusion_heads: int = 2
    fusion_ffn: int = 2048  # torch's TransformerEncoderLayer default, which MMSA keeps
    fusion_dropout: float = 0.1
    text_encoder: str | None = None  # local model directory (e.g. bert-base-uncased); None = the stored features
    finetune_text: bool = True


class StackedLSTM(nn.Module):
    """MISA's utterance encoder for audio and vision (its "sLSTM"): two bidirectional LSTMs with a LayerNorm
    between them, over the valid steps only; returns the final states of both, [B, 4 * hidden], in MMSA's
    order (first forward, second forward, first backward, second backward)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.first = nn.LSTM(dim, hidden, bidirectional=True, batch_first=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.second = nn.LSTM(2 * hidden, hidden, bidirectional=True, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        steps = valid_lengths(x, lengths).clamp(1, x.shape[1]).cpu()
        packed = pack_padded_sequence(x, steps, batch_first=True, enforce_sorted=False)
        outputs, (first, _) = self.first(packed)
        # LayerNorm acts per step, so it can run on the packed rows directly.
        normed = PackedSequence(self.norm(outputs.data), outputs.batch_sizes, outputs.sorted_indices, outputs.unsorted_indices)
        _, (second, _) = self.second(normed)
        return torch.cat([first[0], second[0], first[1], second[1]], dim=-1)


def difference_loss(a: Tensor, b: Tensor) -> Tensor:
    """Squared Frobenius norm of the correlation of two [N, d] codes, after centring and L2 row normalisation
    (MMSA's DiffLoss: the norms are detached, the mean is over the d x d entries)."""
    a = a - a.mean(dim=0, keepdim=True)
    b = b - b.mean(dim=0, keepdim=True)
    a = a / (a.norm(dim=1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (a.t() @ b).pow(2).mean()


def central_moment_discrepancy(a: Tensor, b: Tensor, moments: int) -> Tensor:
    """CMD (Zellinger et al. 2017) between two [N, d] samples: distance of the means plus that of the central
    moments 2..`moments`. `vector_norm` has a zero (not NaN) gradient at 0, which a batch of one reaches."""
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    centred_a, centred_b = a - mean_a, b - mean_b
    total = torch.linalg.vector_norm(mean_a - mean_b)
    for k in range(2, moments + 1):
        total = total + torch.linalg.vector_norm(centred_a.pow(k).mean(dim=0) - centred_b.pow(k).mean(dim=0))
    return total


def sigmoid_layer(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.Sigmoid())


@BACKBONES.register("misa")
class MISA(Backbone):
    """MISA with MMSA's structure.

    Utterance vectors: text is the mean of its valid steps (MMSA averages BERT's outputs over the attention
    mask; with `text_encoder` msmix does the same over its own BERT), audio and vision go through a
    `StackedLSTM` whose width equals their input width (as MMSA's). Each is projected to `hidden` (Linear,
    ReLU, LayerNorm), then mapped to a private code (one sigmoid layer per modality) and a shared code (one
    sigmoid layer for all three).

    `encode` ends there: the latent of modality m is concat(shared_m, private_m), [B, 2 * hidden]. Its
    auxiliary loss is MISA's reconstruction loss (recon_weight x the MSE between each projection and a
    linear reconstruction from shared_m + private_m, averaged over modalities), on the original samples.

    `head` splits each latent back into its codes and computes the difference loss (diff_weight x the
    six orthogonality terms) and the CMD similarity loss (sim_weight x the mean over modality pairs) over
    all N rows it is given: with MS-Mix the mixed rows enter these regularisers too, since the head does not
    know which rows are original. It then runs the fusion transformer over the six codes (privates t, v, a,
    then shareds t, v, a, MMSA's order), concatenates its outputs and applies the MLP
    (Linear 6h -> 3h, dropout, ReLU, Linear 3h -> 1).

    Left out of MMSA's module: the shared/private discriminator (its loss is never added in MMSA) and the
    text LayerNorm that MMSA builds but never uses with BERT; 3,588 parameters at MOSI settings.
    """

    config_class = MISAConfig
    task_loss = "mse"

    def __init__(self, config: MISAConfig, shape: DataShape) -> None:
        super().__init__(config, shape)
        h = config.hidden
        self.text_encoder = build_text_encoder(config.text_encoder, config.finetune_text)
        self.latent_dims = {m: 2 * h for m in MODALITIES}
        self.audio_rnn = StackedLSTM(shape.dims["audio"], shape.dims["audio"])
        self.vision_rnn = StackedLSTM(shape.dims["vision"], shape.dims["vision"])
        utterance_dims = {"text": text_width(shape, self.text_encoder), "audio": 4 * shape.dims["audio"], "vision": 4 * shape.dims["vision"]}
        self.project = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(utterance_dims[m], h), nn.ReLU(), nn.LayerNorm(h)) for m in MODALITIES
        })
        self.private = nn.ModuleDict({m: sigmoid_layer(h) for m in MODALITIES})
        self.shared = sigmoid_layer(h)
        self.reconstruct = nn.ModuleDict({m: nn.Linear(h, h) for m in MODALITIES})
        self.fusion = VectorFusionEncoder(h, config.fusion_heads, 1, config.fusion_ffn, config.fusion_dropout)
        self.out = nn.Sequential(nn.Linear(6 * h, 3 * h), Dropout(config.dropout), nn.ReLU(), nn.Linear(3 * h, 1))

    def utterances(self, batch: Batch) -> dict[str, Tensor]:
        text, text_mask = text_sequence(batch, self.text_encoder)
        inputs = batch.inputs
        return {
            "text": masked_mean(text, text_mask),
            "audio": self.audio_rnn(inputs["audio"], inputs.length("audio")),
            "vision": self.vision_rnn(inputs["vision"], inputs.length("vision")),
        }

    def encode(self, batch: Batch) -> Latents:
        projected = {m: self.project[m](u) for m, u in self.utterances(batch).items()}
        shared = {m: self.shared(p) for m, p in projected.items()}
        private = {m: self.private[m](p) for m, p in projected.items()}
        recon = sum(
            (self.reconstruct[m](shared[m] + private[m]) - projected[m]).pow(2).mean() for m in MODALITIES
        ) / len(MODALITIES)
        views = Multimodal({m: torch.cat([shared[m], private[m]], dim=-1) for m in MODALITIES})
        return Latents(views, self.config.recon_weight * recon)

    def head(self, views: Multimodal) -> HeadOutput:
        h = self.config.hidden
        shared = {m: views[m][:, :h] for m in MODALITIES}
        private = {m: views[m][:, h:] for m in MODALITIES}
        fused = self.fusion([private["text"], private["vision"], private["audio"], shared["text"], shared["vision"], shared["audio"]])
        prediction = self.out(fused.flatten(1))
        return HeadOutput(prediction, self.regularisers(shared, private))

    def regularisers(self, shared: dict[str, Tensor], private: dict[str, Tensor]) -> Tensor:
        c = self.config
        pairs = (("text", "audio"), ("text", "vision"), ("audio", "vision"))
        diff = sum(difference_loss(private[m], shared[m]) for m in MODALITIES)
        diff = diff + sum(difference_loss(private[a], private[b]) for a, b in pairs)
        similarity = sum(central_moment_discrepancy(shared[a], shared[b], c.cmd_moments) for a, b in pairs) / len(pairs)
        return c.diff_weight * diff + c.sim_weight * similarity
