"""Per-example training losses: image flow matching (x0-space), masked-text MDLM (SUBS), stage-3 Brier.

Every function returns a per-example loss [B]; the batch loss is its plain mean, so averaging micro-batch
losses/gradients over equal-sized micro-batches is exactly the full-batch loss (unlike the original, which
summed micro-batch losses, spec §7.2 item 5). All reductions are in fp32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dualfashion_jax.diffusion import masked_text
from dualfashion_jax.diffusion.flow import expand_like

TEXT_LOSS_NORMS = ("batch_len", "masked")


def flow_x0_loss(velocity: jax.Array, x_in: jax.Array, x0: jax.Array, sigma: jax.Array) -> jax.Array:
    """Per-example mean over (H, W, C) of (x_in - sigma F - x0)^2, float32 [B] (spec §2.1).

    x_in is the actual network input (stage 2 adds the context offset to it); x0 the clean target latent.
    """
    if not velocity.shape == x_in.shape == x0.shape:
        raise ValueError(f"flow_x0_loss: velocity {velocity.shape}, network input {x_in.shape} and target "
                         f"{x0.shape} must all be [B, H, W, C]")
    s = expand_like(sigma.astype(jnp.float32), x0)
    x0_hat = x_in.astype(jnp.float32) - s * velocity.astype(jnp.float32)
    err = jnp.square(x0_hat - x0.astype(jnp.float32))
    return jnp.mean(err, axis=tuple(range(1, err.ndim)))


def _check_text_args(logits, x0, label_mask, t, norm):
    if norm not in TEXT_LOSS_NORMS:
        raise ValueError(f"text_loss_norm must be one of {TEXT_LOSS_NORMS}, got {norm!r}")
    if logits.ndim != 3 or logits.shape[:2] != x0.shape or label_mask.shape != x0.shape:
        raise ValueError(f"text loss: logits {logits.shape} must be [B, L, V] over ids {x0.shape} and "
                         f"label_mask {label_mask.shape} ([B, L]); truncate logits to the caption segment")
    if t.shape != x0.shape[:1]:
        raise ValueError(f"text loss: t {t.shape} must be [B] = [{x0.shape[0]}]")


def _normalise(per_token: jax.Array, counted: jax.Array, norm: str) -> jax.Array:
    """Sum over positions divided by L ("batch_len") or by the example's count of loss positions."""
    total = jnp.sum(per_token, axis=-1)  # [B]
    if norm == "batch_len":
        return total / per_token.shape[-1]
    return total / jnp.maximum(jnp.sum(counted.astype(jnp.float32), axis=-1), 1.0)


def mdlm_loss(logits: jax.Array, x_t: jax.Array, x0: jax.Array, label_mask: jax.Array, t: jax.Array,
              mask_id: int, *, eps: float = 1e-3, norm: str = "batch_len") -> jax.Array:
    """Masked-diffusion NELBO per example, float32 [B] (spec §2.2).

    Per token -log p_SUBS(x0 | x_t) * dsigma/expm1(sigma) (= 1/t), times the label mask. norm="batch_len"
    divides the sum by L (the original: B*L over the batch); "masked" divides by the example's number of
    MASKed positions (the only positions with non-zero loss), at least 1.
    """
    _check_text_args(logits, x0, label_mask, t, norm)
    logp = masked_text.subs_log_probs(logits, x_t, mask_id)  # [B, L, V]
    nll = -masked_text.token_log_prob(logp, x0)  # [B, L]
    lm = label_mask.astype(jnp.float32)
    per_token = nll * masked_text.elbo_weight(t, eps)[:, None] * lm
    counted = (x_t == mask_id) & (label_mask > 0)
    return _normalise(per_token, counted, norm)


def brier_loss(logits: jax.Array, x0: jax.Array, label_mask: jax.Array, t: jax.Array, *,
               norm: str = "batch_len") -> jax.Array:
    """Stage-3 Brier loss per example, float32 [B] (spec §2.5): no SUBS, softmax of the raw logits.

    Per label token sum_v p_v^2 - 2 p_{x0} (= ||p - onehot(x0)||^2 - 1), weighted by (1/t) * label_mask,
    masked or not. norm="batch_len" divides by L (original); "masked" by the example's label-token count.
    """
    _check_text_args(logits, x0, label_mask, t, norm)
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [B, L, V]
    p_x0 = masked_text.pick(p, x0)  # [B, L]
    per_token = jnp.sum(jnp.square(p), axis=-1) - 2.0 * p_x0
    lm = label_mask.astype(jnp.float32)
    per_token = per_token * (1.0 / t)[:, None] * lm
    return _normalise(per_token, label_mask > 0, norm)
