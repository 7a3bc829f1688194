"""`PixelRefiner`: the optional learned decoder head of the demo's pixel autoencoder (`models/pixel_ae.py`).

Why: the linear PCA decoder turns every latent error into a pixel error one-for-one, so a generator's per-token
errors come out as a 4 x 4-block mosaic and speckle. SD3's real VAE decoder is a learned conv net that maps a latent
near the data onto a plausible image; this small conv net plays that role for the stand-in. It reads the linear
decode x0 [B, S, S, 3] and the model-space latent upsampled to pixels, and adds a correction to x0; its output
conv starts at zero, so an untrained refiner decodes exactly like the linear decoder. Fitted (denoising: noisy
latents of the catalogue -> the clean images) by `training/pixel_refiner.py`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.models.vae_blocks import conv


class PixelRefiner(nnx.Module):
    """x0 [B, S, S, 3] (linear decode) + z [B, S/f, S/f, C] (model-space latent) -> x0 + correction, [-1, 1] scale."""

    def __init__(self, latent_channels: int, factor: int, width: int, depth: int, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.factor = factor
        self.conv_in = conv(3 + latent_channels, width, 3, **kw)
        self.blocks = nnx.List([conv(width, width, 3, **kw) for _ in range(depth)])
        self.conv_out = conv(width, 3, 3, **kw)
        # zero output conv: the untrained refiner is the identity on x0 (decode = the linear decoder)
        self.conv_out.kernel[...] = jnp.zeros_like(self.conv_out.kernel[...])

    def __call__(self, x0: jax.Array, z: jax.Array) -> jax.Array:
        f = self.factor
        up = jnp.repeat(jnp.repeat(z, f, axis=1), f, axis=2).astype(x0.dtype)  # [B, S, S, C] nearest upsampling
        h = nnx.gelu(self.conv_in(jnp.concatenate([x0, up], axis=-1)))      # [B, S, S, width]
        for block in self.blocks:
            h = h + nnx.gelu(block(h))                                       # residual 3x3 convs
        return x0 + self.conv_out(h).astype(x0.dtype)                        # [B, S, S, 3]
