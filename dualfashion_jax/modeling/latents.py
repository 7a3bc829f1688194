"""The one images -> VAE latents path: SD3 preprocessing, the posterior (mean or a sample), model-space scaling.

Used by the training step (datasets without `latents/`), `dualfashion-jax encode-latents` and generation's
context images. Traceable; works for every VAE of `modeling/vae.py` (AutoencoderKL and the pixel autoencoder).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dualfashion_jax.models.vae import to_model_latents


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] NHWC images -> float32 [-1, 1] (the VAE's input range)."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"encode_images: images must be uint8 [0, 255] or float [0, 1], got dtype {images.dtype}")
    if not isinstance(images, jax.core.Tracer):
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"encode_images: float images must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}] "
                             "(pass uint8 for [0, 255] images)")
    return images.astype(jnp.float32) * 2.0 - 1.0


def encode_images(ae, images: jax.Array, key: jax.Array | None = None, *, sample: bool = True,
                  item_keys: jax.Array | None = None) -> jax.Array:
    """Images [N, S, S, 3] -> model-space latents [N, h, w, C] fp32 ((z - shift) * scale).

    `sample=False`: the posterior mean. `sample=True`: a posterior sample, one draw from `key` for the whole
    batch (DualFashion's training), or one per image from `item_keys` [N] (independent of the batch layout).
    """
    post = ae.encode(to_unit_range(images))
    if not sample:
        z = post.mode()
    elif item_keys is not None:
        noise = jax.vmap(lambda k, m: jax.random.normal(k, m.shape, jnp.float32))(item_keys, post.mean)
        z = post.mean + post.std * noise
    elif key is None:
        raise ValueError("encode_images: sample=True needs a PRNG key (or pass sample=False for the posterior mean)")
    else:
        z = post.sample(key)
    return to_model_latents(z, ae.cfg).astype(jnp.float32)

