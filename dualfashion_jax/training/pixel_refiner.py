"""Fits the pixel autoencoder's learned decoder head (`models/pixel_refiner.py`) as a latent denoiser.

Each step draws catalogue images, encodes them (linear, model-space latents z with unit std), adds Gaussian noise
of a per-image level sigma ~ U(0, sigma_max) and trains the refiner to map decode(z + sigma * eps) back to the clean
image (L1 in [-1, 1]). A generator's latents sit near the data but not on it; the refiner learns to put them back
on the images it was fitted to (docs/demo.md, "A learned decoder head"). The linear basis and shift/scale stay.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from dualfashion_jax.models import pixel_ae
from dualfashion_jax.models.vae import from_model_latents, to_model_latents


@dataclasses.dataclass(frozen=True)
class RefinerFit:
    """Denoising fit of the refiner: steps of `batch_size` images, noise levels U(0, sigma_max) in model space."""

    steps: int = 400
    batch_size: int = 16
    sigma_max: float = 1.0
    lr: float = 3e-3               # AdamW peak, cosine decay to 0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.sigma_max < 0 or self.lr <= 0:
            raise ValueError(f"RefinerFit: expected steps >= 1, batch_size >= 1, sigma_max >= 0, lr > 0; got {self}")


def denoising_loss(ae: pixel_ae.PixelAutoencoder, refiner, images: jax.Array, z: jax.Array, key: jax.Array,
                   sigma_max: float) -> jax.Array:
    """Mean |decode(z + sigma eps) - images| with `refiner` as the decoder head (= ae.decode when it is ae.refiner);
    images [B, S, S, 3] in [-1, 1], z [B, h, w, C] model-space latents."""
    k_sigma, k_eps = jax.random.split(key)
    sigma = jax.random.uniform(k_sigma, (z.shape[0], 1, 1, 1)) * sigma_max     # [B, 1, 1, 1]
    noisy = z + sigma * jax.random.normal(k_eps, z.shape)                        # [B, h, w, C]
    x0 = ae.decode_linear(from_model_latents(noisy, ae.cfg))                     # raw latents -> [B, S, S, 3]
    return jnp.mean(jnp.abs(refiner(x0, noisy) - images))


def fit_refiner(ae: pixel_ae.PixelAutoencoder, images_uint8: np.ndarray, fit: RefinerFit = RefinerFit(), *,
                progress: bool = True) -> list[float]:
    """Trains `ae.refiner` in place on `images_uint8` [N, S, S, 3]; returns the loss every 50 steps (and the last)."""
    if ae.refiner is None:
        raise ValueError("fit_refiner: the autoencoder has no refiner (PixelAEConfig.refiner_width is 0)")
    if images_uint8.ndim != 4 or images_uint8.dtype != np.uint8 or images_uint8.shape[-1] != 3:
        raise ValueError(f"fit_refiner: expected uint8 images [N, S, S, 3], got {images_uint8.dtype} "
                         f"{images_uint8.shape}")
    images = jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0                 # [N, S, S, 3]
    z_all = to_model_latents(ae.encode(images).mode(), ae.cfg)                   # [N, h, w, C] model space
    opt = nnx.Optimizer(ae.refiner, optax.adamw(optax.cosine_decay_schedule(fit.lr, fit.steps), weight_decay=0.0),
                        wrt=nnx.Param)

    @nnx.jit
    def step(ae, opt, key):
        k_idx, k_loss = jax.random.split(key)
        idx = jax.random.randint(k_idx, (fit.batch_size,), 0, images.shape[0])

        def loss_fn(refiner):
            return denoising_loss(ae, refiner, images[idx], z_all[idx], k_loss, fit.sigma_max)

        loss, grads = nnx.value_and_grad(loss_fn)(ae.refiner)
        opt.update(ae.refiner, grads)
        return loss

    key, losses = jax.random.key(fit.seed), []
    for i in tqdm.tqdm(range(fit.steps), desc="vae refiner (denoising)", disable=not progress, mininterval=2.0):
        key, sub = jax.random.split(key)
        loss = step(ae, opt, sub)
        if i % 50 == 0 or i == fit.steps - 1:
            losses.append(float(loss))
    return losses
