"""Preference-maximising guidance (DVBPR's "design", Kang et al. 2017) as a term of the flow sampler.

At each Euler step the sampler's guided velocity v gives the clean-latent estimate x0_hat = x - sigma v. The user's
DVBPR score of that estimate -- decoded to an image by the VAE decoder when the DVBPR model reads images, used as is
when it reads latents -- is differentiated with respect to x0_hat (in JAX, batched, inside the jitted sampler; the
denoiser itself is not differentiated). The estimate is moved by eta along that gradient, which for the state x
means v <- v - eta g / sigma. With `normalize` (default) g is scaled to unit RMS per row, so eta is a distance in
latent-std units and one sweep of eta means the same on any model; eta = 0 is exactly the unguided sampler.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dualfashion_jax.models import vae as vae_lib
from dualfashion_jax.models.dvbpr import DVBPR

ScoreFn = Callable[[jax.Array], jax.Array]  # x0 latents [B, h, w, C] -> scores [B]


@dataclasses.dataclass(frozen=True)
class ScoreGuidanceConfig:
    """eta: step along the score gradient (0 = off); normalize: unit-RMS gradient per row; interval: sigmas guided."""

    eta: float = 0.0
    normalize: bool = True
    interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        if float(self.eta) < 0:
            raise ValueError(f"ScoreGuidanceConfig.eta must be >= 0, got {self.eta}")
        lo, hi = (float(v) for v in self.interval)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"ScoreGuidanceConfig.interval: expected 0 <= lo <= hi <= 1 (sigmas), got {self.interval}")
        object.__setattr__(self, "interval", (lo, hi))


def dvbpr_score_fn(model: DVBPR, uids: jax.Array, vae=None) -> ScoreFn:
    """score(x0) = theta_u . Phi(input): input = the VAE-decoded image in [-1, 1] (bilinearly resized to the DVBPR
    input size if it differs) for an image DVBPR, the model-space latents themselves for a latent DVBPR."""
    cfg = model.cfg
    if cfg.input_kind == "image" and vae is None:
        raise ValueError("score guidance: this DVBPR model reads images; pass the VAE that decodes the latents")

    def score(x0: jax.Array) -> jax.Array:
        if cfg.input_kind == "latent":
            inp = x0
        else:
            img = vae.decode(vae_lib.from_model_latents(x0, vae.cfg)).astype(jnp.float32)  # [B, S, S, 3]
            size = cfg.input_size
            if img.shape[1:3] != (size, size):
                img = jax.image.resize(img, (img.shape[0], size, size, img.shape[-1]), "bilinear")
            inp = img
        return model.score(uids, inp)

    return score


def score_grad(score: ScoreFn, x0: jax.Array) -> jax.Array:
    """d score_b / d x0_b for every row b: [B, h, w, C] (rows are independent, so the gradient of the sum)."""
    return jax.grad(lambda x: jnp.sum(score(x)))(x0.astype(jnp.float32))


def guide(score: ScoreFn, cfg: ScoreGuidanceConfig) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """The sampler hook `(x, v, sigma) -> v'`: v' = v - eta g(x - sigma v) / sigma inside cfg.interval, else v."""
    eta = float(cfg.eta)
    lo, hi = cfg.interval

    def hook(x: jax.Array, v: jax.Array, sigma: jax.Array) -> jax.Array:
        g = score_grad(score, x - sigma * v)  # [B, h, w, C]
        if cfg.normalize:
            rms = jnp.sqrt(jnp.mean(jnp.square(g), axis=tuple(range(1, g.ndim)), keepdims=True))
            g = g / (rms + 1e-12)
        on = (sigma >= lo) & (sigma <= hi)
        return jnp.where(on, v - eta * g / sigma, v)

    return hook
