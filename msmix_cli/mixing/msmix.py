"""MS-Mix (MSMIX.md sections 1-3): similar pairs, intensity-guided per-modality ratios, alignment loss."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from msmix_cli.mixing.base import MIXERS, Mix, MixConfig, Mixer, beta_draws, mix_pairs
from msmix_cli.mixing.sal import sentiment_alignment_loss
from msmix_cli.mixing.sass import random_pairs, select_pairs, similarity_matrix
from msmix_cli.mixing.sig import IntensityPredictor, label_ratio, modality_ratios
from msmix_cli.types import Multimodal


@MIXERS.register("msmix")
class MSMix(Mixer):
    """Mixes latents before fusion. Its intensity predictors are parameters: the optimiser must include them.

    The predictors read the original latents without detaching them, so SAL also shapes the backbone's
    latents (msmix decides; the spec is silent). With `sig` off the ratios are lambda_0 and the predictors
    are trained by SAL alone; with `sig` and `sal` both off they are not run at all. The rng draws the
    pairs first, then lambda_0.
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
        pairs = self._pairs(views, label, config.num_mix or size, rng)
        lam0 = beta_draws(rng, config.alpha, len(pairs), label.device)
        intensity = self._intensities(views) if config.sig or config.sal else {}
        ratios = modality_ratios(intensity, pairs, lam0) if config.sig else {m: lam0 for m in views.features}
        lam = label_ratio(ratios) if config.sig else lam0
        loss = config.w_sal * sentiment_alignment_loss(intensity, label, self.label_range, config.sal_scale) if config.sal else 0.0
        stats = {"pairs": pairs, "lam0": lam0, "lam_y": lam.detach()}
        stats |= {f"lam_{m}": r.detach() for m, r in ratios.items()}
        stats |= {f"intensity_{m}": i.detach() for m, i in intensity.items()}
        return Mix(mix_pairs(views, pairs, ratios), label[pairs[:, 0]], label[pairs[:, 1]], lam, loss, stats)

    def _pairs(self, views: Multimodal, label: Tensor, num_mix: int, rng: np.random.Generator) -> Tensor:
        if not self.config.sass:
            return random_pairs(views.batch_size, num_mix, rng, device=label.device)
        sim = similarity_matrix(views)
        return select_pairs(sim, num_mix, self.config.delta, rng, label, self.config.same_polarity)

    def _intensities(self, views: Multimodal) -> dict[str, Tensor]:
        return {m: self.predictors[m](x, views.length(m)) for m, x in views.features.items()}
