"""MS-Mix (MSMIX.md sections 1-3): similar pairs, intensity-guided per-modality ratios, alignment loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from msmix_cli.mixing.base import MIXERS, Mix, MixConfig, Mixer, beta_draws, mix_pairs
from msmix_cli.mixing.sal import intensity_regression_loss, sentiment_alignment_loss
from msmix_cli.mixing.sass import Selection, random_pairs, select_pairs, similarity_matrix
from msmix_cli.mixing.sig import IntensityPredictor, label_ratio, modality_ratios
from msmix_cli.types import Multimodal


@MIXERS.register("msmix")
class MSMix(Mixer):
    """Mixes latents before fusion. Its intensity predictors are parameters: the optimiser must include them.

    By default (the authors) the predictors read the latents undetached and the ratios are not detached, so
    SAL and the mixed loss both reach the backbone through them; `sal_to_encoder` and `detach_ratio` cut
    those paths. With `sig` off the ratios are lambda_0 and the predictors are trained by SAL alone; with
    `sig` and `sal` both off they are not run at all. The rng draws the pairs first, then lambda_0.
    """

    point = "latent"

    def __init__(self, config: MixConfig, dims: dict[str, int], label_range: float) -> None:
        super().__init__(config, dims, label_range)
        self.predictors = nn.ModuleDict(
            {m: IntensityPredictor(dim, heads=config.sig_heads, tokens=config.sig_tokens) for m, dim in dims.items()}
        )

    def forward(self, views: Multimodal, label: Tensor, rng: np.random.Generator) -> Mix | None:
        size = views.batch_size
        if size < 2:
            return None
        config = self.config
        selection = self._pairs(views, label, config.num_mix or size, rng)
        pairs = selection.pairs
        lam0 = beta_draws(rng, config.alpha, len(pairs), label.device)
        intensity = self.intensities(views) if config.sig or config.sal else {}
        guide = {m: i.detach() for m, i in intensity.items()} if config.detach_ratio else intensity
        ratios = modality_ratios(guide, pairs, lam0) if config.sig else {m: lam0 for m in views.features}
        lam = label_ratio(ratios) if config.sig else lam0
        loss = config.w_sal * self._alignment_loss(intensity, label) if config.sal else 0.0
        stats = {"pairs": pairs, "lam0": lam0, "lam_y": lam.detach(),
                 "candidate_share": torch.tensor(selection.candidate_share), "fell_back": torch.tensor(float(selection.fell_back))}
        stats |= {f"lam_{m}": r.detach() for m, r in ratios.items()}
        stats |= {f"intensity_{m}": i.detach() for m, i in intensity.items()}
        return Mix(mix_pairs(views, pairs, ratios), label[pairs[:, 0]], label[pairs[:, 1]], lam, loss, stats)

    def used_parameters(self) -> int:
        """The intensity predictors shape the model through SIG's ratios, or through SAL when it reaches the encoder
        (`sal_to_encoder`); otherwise nothing the model computes depends on them, so they count for nothing."""
        config = self.config
        return super().used_parameters() if config.sig or (config.sal and config.sal_to_encoder) else 0

    def intensities(self, views: Multimodal) -> dict[str, Tensor]:
        """I^m per modality, [B] in (-3, 3). With `sal_to_encoder` off the predictors read detached latents,
        so neither SAL nor the mixing ratios send gradients into the backbone (msmix's option)."""
        detach = not self.config.sal_to_encoder
        return {m: self.predictors[m](x.detach() if detach else x, views.length(m)) for m, x in views.features.items()}

    def _alignment_loss(self, intensity: dict[str, Tensor], label: Tensor) -> Tensor:
        if self.config.sal_kind == "regression":
            return intensity_regression_loss(intensity, label, self.label_range, self.config.sal_scale)
        return sentiment_alignment_loss(intensity, label, self.label_range, self.config.sal_scale)

    def _pairs(self, views: Multimodal, label: Tensor, num_mix: int, rng: np.random.Generator) -> Selection:
        if not self.config.sass:
            return Selection(random_pairs(views.batch_size, num_mix, rng, device=label.device), 1.0, False)
        config = self.config
        return select_pairs(similarity_matrix(views), num_mix, config.delta, rng, label, config.same_polarity,
                            threshold=config.sass_threshold, label_bandwidth=config.label_bandwidth)
