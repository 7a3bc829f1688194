"""Building the conditioned network inputs: text segments, classifier-free dropouts, stage-2 latent input.

Stage 2 (spec §2.4): x_in = (1-lam) [(1-sigma)(z0 + r_t) + sigma eps] + lam m c, with c = MatchingMLP(mean_k
C_k + r_c) (computed by the model's `stage2.offset`), m ~ Bernoulli(1 - p_ctx_drop) per sample, lam = 0.1.
Text conditioning is a concatenation of T5 segments along the sequence axis, with no segment embeddings.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dualfashion_jax.diffusion.flow import expand_like


def broadcast_segment(emb: jax.Array, batch: int, like: jax.Array, name: str) -> jax.Array:
    """Broadcasts a precomputed embedding ([L, D], [1, L, D] or [B, L, D]) to like's [B, L, D], checking it."""
    emb = jnp.asarray(emb)
    if emb.ndim == 2:
        emb = emb[None]
    if emb.ndim != 3 or emb.shape[1:] != like.shape[1:] or emb.shape[0] not in (1, batch):
        raise ValueError(f"{name}: expected [L, D], [1, L, D] or [B, L, D] with [L, D] = {like.shape[1:]} "
                         f"and B = {batch}, got {emb.shape}")
    return jnp.broadcast_to(emb, (batch,) + like.shape[1:]).astype(like.dtype)


def drop_text(u: jax.Array, txt: jax.Array, null_emb: jax.Array, p: float,
              name: str = "null_emb") -> tuple[jax.Array, jax.Array]:
    """Per-sample classifier-free dropout: sample i's text [B, L, D] becomes null_emb where u_i < p.

    u [B] are uniforms (pass `jax.random.uniform(key, (B,))`). Returns (text [B, L, D], dropped bool [B]).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop_text: dropout probability must be in [0, 1], got {p}")
    b = txt.shape[0]
    null = broadcast_segment(null_emb, b, txt, name)
    dropped = u < p  # [B]
    return jnp.where(dropped[:, None, None], null, txt), dropped


def concat_segments(*segments: jax.Array) -> jax.Array:
    """Concatenates T5 segments [B, L_i, D] along the sequence: [B, sum L_i, D]."""
    if not segments:
        raise ValueError("concat_segments: need at least one segment")
    b, d = segments[0].shape[0], segments[0].shape[-1]
    for i, s in enumerate(segments):
        if s.ndim != 3 or s.shape[0] != b or s.shape[-1] != d:
            raise ValueError(f"concat_segments: segment {i} has shape {s.shape}, expected [{b}, L, {d}]")
    return jnp.concatenate(segments, axis=1)


def context_mean(context_latents: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Mean of the K context-item latents: [B, K, H, W, C] -> [B, H, W, C] (fp32); with `valid` [B, K] (generation:
    PFITB/GOR outfits with missing items) the mean of the valid ones only, zeros where none is valid."""
    if context_latents.ndim != 5:
        raise ValueError(f"context_latents: expected [B, K, H, W, C], got {context_latents.shape}")
    if valid is None:
        return jnp.mean(context_latents.astype(jnp.float32), axis=1)
    w = valid.astype(jnp.float32)[:, :, None, None, None]  # [B, K, 1, 1, 1]
    n = jnp.maximum(w.sum(axis=1), 1.0)  # [B, 1, 1, 1]
    return (context_latents.astype(jnp.float32) * w).sum(axis=1) / n


def context_keep(u: jax.Array, drop_prob: float = 0.5) -> jax.Array:
    """Per-sample context-dropout mask m in {0, 1} from uniforms u [B]: 1 keeps the offset. float32 [B]."""
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"context dropout probability must be in [0, 1], got {drop_prob}")
    return (u >= drop_prob).astype(jnp.float32)


def stage2_image_input(x0: jax.Array, noise: jax.Array, sigma: jax.Array, target_role: jax.Array,
                       offset: jax.Array, keep: jax.Array, lam: float) -> jax.Array:
    """x_in = (1-lam)[(1-sigma)(z0 + r_t) + sigma eps] + lam m c, all [B, H, W, C] fp32 (spec §2.4).

    target_role r_t broadcasts ([1, 1, 1, C]); offset c is MatchingMLP(mean ctx + r_c); keep m is [B].
    """
    if offset.shape != x0.shape:
        raise ValueError(f"stage-2 offset {offset.shape} must have the target latent's shape {x0.shape}")
    s = expand_like(sigma.astype(jnp.float32), x0)
    m = expand_like(keep.astype(jnp.float32), x0)
    z = x0.astype(jnp.float32) + target_role.astype(jnp.float32)
    x_t = (1.0 - s) * z + s * noise.astype(jnp.float32)
    return (1.0 - lam) * x_t + lam * m * offset.astype(jnp.float32)
