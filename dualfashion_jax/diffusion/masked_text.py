"""Masked discrete diffusion (MDLM, SUBS parameterisation) over T5 caption tokens: schedule, t, masking.

Log-linear schedule with eps = 1e-3 (spec §2.2): sigma(t) = -log(1 - (1-eps) t), so a token is masked with
probability 1 - exp(-sigma) = (1-eps) t and the continuous-time ELBO weight dsigma / expm1(sigma) is 1/t.
Only label positions (the values of the 4 caption keys) are ever masked.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e6  # the original's "neg_infinity": finite, so 0 * NEG_INF stays 0 in masked sums


def log_linear_sigma(t: jax.Array, eps: float = 1e-3) -> jax.Array:
    """Total noise sigma(t) = -log(1 - (1-eps) t)."""
    return -jnp.log1p(-(1.0 - eps) * t)


def log_linear_dsigma(t: jax.Array, eps: float = 1e-3) -> jax.Array:
    """Rate d sigma / dt = (1-eps) / (1 - (1-eps) t)."""
    return (1.0 - eps) / (1.0 - (1.0 - eps) * t)


def move_chance(t: jax.Array, eps: float = 1e-3) -> jax.Array:
    """Probability that a label token is masked at time t: 1 - exp(-sigma(t)) = (1-eps) t."""
    return -jnp.expm1(-log_linear_sigma(t, eps))


def elbo_weight(t: jax.Array, eps: float = 1e-3) -> jax.Array:
    """The original's per-token loss weight dsigma / expm1(sigma), written as it is (it equals 1/t)."""
    return log_linear_dsigma(t, eps) / jnp.expm1(log_linear_sigma(t, eps))


def t_from_uniform(u: jax.Array, *, sampling_eps: float = 1e-3, antithetic: bool = True) -> jax.Array:
    """Diffusion times in [sampling_eps, 1] from uniforms u [B], float32 [B].

    antithetic: t_i = ((u_i/n + i/n) mod 1)(1-eps) + eps, one stratum per example (spec §2.2); otherwise
    t_i = u_i (1-eps) + eps i.i.d. (the original crashes on that path, spec §7.2 item 1).
    """
    if not 0.0 <= sampling_eps < 1.0:
        raise ValueError(f"sampling_eps must be in [0, 1), got {sampling_eps}")
    u = u.astype(jnp.float32)
    if antithetic:
        n = u.shape[0]
        u = jnp.mod(u / n + jnp.arange(n, dtype=jnp.float32) / n, 1.0)
    return u * (1.0 - sampling_eps) + sampling_eps


def sample_t(key: jax.Array, batch: int, *, sampling_eps: float = 1e-3, antithetic: bool = True) -> jax.Array:
    """Draws diffusion times float32 [B] (see `t_from_uniform`)."""
    u = jax.random.uniform(key, (batch,), jnp.float32)
    return t_from_uniform(u, sampling_eps=sampling_eps, antithetic=antithetic)


def mask_from_uniform(u: jax.Array, x0: jax.Array, label_mask: jax.Array, t: jax.Array, mask_id: int,
                      eps: float = 1e-3) -> jax.Array:
    """x_t: label positions with u < (1-eps) t become `mask_id`; others keep x0. int32 [B, L]."""
    if not x0.shape == label_mask.shape == u.shape:
        raise ValueError(f"masking: ids {x0.shape}, label_mask {label_mask.shape} and uniforms {u.shape} "
                         "must all be [B, L]")
    draw = u < move_chance(t, eps)[:, None]  # [B, L]
    return jnp.where(draw & (label_mask > 0), jnp.int32(mask_id), x0.astype(jnp.int32))


def mask_tokens(key: jax.Array, x0: jax.Array, label_mask: jax.Array, t: jax.Array, mask_id: int,
                eps: float = 1e-3) -> jax.Array:
    """Draws x_t: each label position becomes `mask_id` with probability (1-eps) t. int32 [B, L]."""
    u = jax.random.uniform(key, x0.shape, jnp.float32)
    return mask_from_uniform(u, x0, label_mask, t, mask_id, eps)


def subs_log_probs(logits: jax.Array, x_t: jax.Array, mask_id: int) -> jax.Array:
    """SUBS log p_theta(x0 | x_t), float32 [B, L, V].

    The MASK logit gets NEG_INF added (never predict MASK), log-softmax in fp32; positions already unmasked
    in x_t are forced to a one-hot on their own token (log-prob 0 there, NEG_INF elsewhere).
    """
    if logits.shape[:2] != x_t.shape:
        raise ValueError(f"subs_log_probs: logits {logits.shape} must be [B, L, V] with [B, L] = x_t {x_t.shape}")
    vocab = logits.shape[-1]
    if not 0 <= mask_id < vocab:
        raise ValueError(f"subs_log_probs: mask_id {mask_id} is outside the vocabulary of size {vocab}")
    logits = logits.astype(jnp.float32)
    is_mask_col = jnp.arange(vocab) == mask_id  # [V]
    logits = logits + jnp.where(is_mask_col, NEG_INF, 0.0)
    logp = jax.nn.log_softmax(logits, axis=-1)  # [B, L, V]
    onehot = jax.nn.one_hot(x_t, vocab, dtype=jnp.bool_)  # [B, L, V]
    forced = jnp.where(onehot, 0.0, NEG_INF)
    unmasked = (x_t != mask_id)[..., None]  # [B, L, 1]
    return jnp.where(unmasked, forced, logp)


def pick(values: jax.Array, ids: jax.Array) -> jax.Array:
    """values[..., ids] per position, [B, L, V], [B, L] -> [B, L], as a one-hot select-and-sum: exact (one term),
    and its gradient is elementwise (a gather's is a scatter into a zeroed [B, L, V]: ~10 % of a CPU step)."""
    hit = jnp.arange(values.shape[-1], dtype=jnp.int32) == ids[..., None].astype(jnp.int32)  # [B, L, V]
    return jnp.sum(jnp.where(hit, values, jnp.zeros((), values.dtype)), axis=-1)


def token_log_prob(log_probs: jax.Array, x0: jax.Array) -> jax.Array:
    """Gathers log p(x0) per position: [B, L, V], [B, L] -> [B, L]."""
    return pick(log_probs, x0)
