"""Generation conditioning (spec §1.3, §1.6, §5.1-5.2): T5 segments with attention masks, context latents and
the stage-2 offset. All functions are traceable (called inside the jitted PFITB/GOR/API programs).

Context latents are the VAE posterior MEAN by default (fix of spec §7.2 item 16: the original sampled them,
so the conditioning was itself random); `sample=True` draws the posterior like the original, with per-row keys.
The mean context over VALID items only (`valid` mask) serves both as the caption branch's image stream and as
the offset network's input; with no valid item (GOR's first item, a request without outfit images) it is the
zero latent, as in the original GOR.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dualfashion_jax.diffusion.conditioning import context_mean
from dualfashion_jax.modeling.latents import encode_images
from dualfashion_jax.samplers.flow_euler import NEGATIVE_PROMPT


def encode_segment(t5, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """One T5 text segment [B, L] (+ its attention mask, padding masked as in spec §1.3) -> [B, L, D] fp32."""
    return t5(ids.astype(jnp.int32), mask.astype(jnp.int32)).astype(jnp.float32)


def negative_tokens(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The original's negative prompt tokenized: (ids [1, L], mask [1, L]) int32."""
    return tokenizer.encode([NEGATIVE_PROMPT])


def context_latents(vae, images: jax.Array, *, sample: bool = False, keys: jax.Array | None = None) -> jax.Array:
    """uint8 context images [B, K, S, S, 3] -> model-space latents [B, K, h, w, C] (posterior mean, or a sample
    with per-row keys [B] when `sample`)."""
    b, k = images.shape[:2]
    flat = images.reshape((b * k,) + images.shape[2:])  # [B*K, S, S, 3]
    item_keys = None
    if sample:
        if keys is None:
            raise ValueError("context_latents: sample=True needs per-row keys")
        item_keys = jax.vmap(lambda kk: jax.random.split(kk, k))(keys).reshape(b * k)  # [B*K]
    z = encode_images(vae, flat, sample=sample, item_keys=item_keys)
    return z.reshape((b, k) + z.shape[1:]).astype(jnp.float32)


masked_context_mean = context_mean  # the valid-items mean [B, K, h, w, C], [B, K] -> [B, h, w, C] (one definition)


def context_offset(model, ctx_mean: jax.Array) -> jax.Array:
    """The stage-2 offset c of the mean context latent (eval mode, no dropout): [B, h, w, C] fp32."""
    if model.stage2 is None:
        raise ValueError("this checkpoint has no stage-2 modules (a stage-1 model): PFITB/GOR need the context "
                         "offset network; use a stage-2 or stage-3 checkpoint")
    return model.stage2.offset(ctx_mean, deterministic=True).astype(jnp.float32)


def to_uint8(images01: jax.Array) -> jax.Array:
    """[0, 1] images -> uint8 on device (rounded like `vae.to_uint8`)."""
    return jnp.clip(jnp.round(images01 * 255.0), 0, 255).astype(jnp.uint8)
