"""Masked-diffusion caption sampler (MDLM "ddpm_cache", spec §5.2) as one `lax.fori_loop`.

Prior: template tokens where kept, MASK elsewhere. For t on linspace(1, 1e-5, steps+1) and s = t - dt:
p = exp(SUBS log-probs(model(x))), q(v) = p(v)(t - s), q(MASK) = s, draw argmax(q / E) with
E = 1e-10 - log(U + 1e-10), U ~ U(0,1) (the original's exponential race); positions already unmasked are
copied through. Finally any MASK left becomes argmax p.
`temperature` T != 1 (not the original) draws the tokens from p^(1/T) renormalised, T = 0 from the one-hot argmax
of p; when a position is unmasked stays the original's race (q(MASK) = s vs t - s), only which token changes.
`order="confidence"` (not the original; MaskGIT-style) replaces that race: each step draws a token for every
masked position (from p^(1/T), same exponential race without the MASK column) and unmasks the most probable
ones, leaving floor(N_b * s) of row b's N_b label positions masked (the race's expected count at s), so values
are committed where the model is surest first.

The original reuses p when a step changed nothing (the model is time-agnostic). Recomputing gives the
same p, so `use_cache=True` keeps that optimisation exactly with a `lax.cond` (one branch runs on
CPU/GPU/TPU), and `use_cache=False` always recomputes.

Conditioning segments are the caller's choice: the original appends [T5(pref), T5(sentence),
T5(masked template)] (1024 tokens), although training only ever saw [pref, sentence] (spec §7.2 item 10);
pass `(pref, sentence)` to `caption_logits_fn` for the train-consistent layout.

Padding (spec §7.2 item 11): by default only label positions are masked and padding keeps its EOS,
as in training; `mask_padding=True` is the original prior (everything outside attention-and-not-label is
masked, so the model fills padding with free text).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dualfashion_jax.diffusion import masked_text
from dualfashion_jax.diffusion.conditioning import concat_segments
from dualfashion_jax.diffusion.pure_fn import as_pure

LogitsFn = Callable[[jax.Array], jax.Array]  # x_t [B, L] int32 -> logits [B, >=L, V]
ORDERS = ("random", "confidence")  # which masked positions a step unmasks: the original race | most probable first


def caption_prior(template_ids: jax.Array, attention_mask: jax.Array, label_mask: jax.Array, mask_id: int,
                  mask_padding: bool = False) -> jax.Array:
    """The sampler's x_1: template where kept, MASK elsewhere. int32 [B, L]."""
    if not template_ids.shape == attention_mask.shape == label_mask.shape:
        raise ValueError(f"caption prior: template ids {template_ids.shape}, attention_mask {attention_mask.shape}"
                         f" and label_mask {label_mask.shape} must all be [B, L]")
    label = label_mask > 0
    keep = (attention_mask > 0) & ~label if mask_padding else ~label
    return jnp.where(keep, template_ids.astype(jnp.int32), jnp.int32(mask_id))


def time_grid(steps: int, t_min: float = 1e-5) -> tuple[np.ndarray, float]:
    """(t_i float32 [steps + 1] = linspace(1, t_min), dt = (1 - t_min) / steps), as the original."""
    if steps < 1:
        raise ValueError(f"caption sampler: steps must be >= 1, got {steps}")
    return np.linspace(1.0, t_min, steps + 1).astype(np.float32), (1.0 - t_min) / steps


def caption_logits_fn(model_fn: Callable[..., tuple[Any, Any]], t5_fn: Callable[[jax.Array, Any], jax.Array],
                      image: jax.Array | None, cond_segments: Sequence[jax.Array], length: int) -> LogitsFn:
    """The caption branch (spec §1.6): image stream = context latent (or None = null tokens) at t = 0,
    text = [T5(x_t) (no mask), *cond_segments]; logits of the first `length` positions.
    NNX modules are wrapped by `as_pure` so the result is safe inside the sampler's fori_loop / cond."""
    model_fn, t5_fn = as_pure(model_fn), as_pure(t5_fn)
    def logits_fn(x_t):
        b = x_t.shape[0]
        txt = concat_segments(t5_fn(x_t, None), *cond_segments)  # [B, L * (1 + n), D]
        _, logits = model_fn(image, txt, jnp.zeros((b,), jnp.float32), heads=("text",), text_logits_len=length)
        return logits
    return logits_fn


def guided_logits_fn(cond_fn: LogitsFn, uncond_fn: LogitsFn, scale: float,
                     where: jax.Array | None = None) -> LogitsFn:
    """Classifier-free guidance on the caption (not the original): log p_c + scale (log p_c - log p_u) [B, L, V],
    e.g. p_c with the image stream and p_u with the null tokens, so values follow the image more. `where` [B, L]
    bool: guide only those positions (e.g. the Color value, `run_positions`); log p_c elsewhere."""
    def logits_fn(x_t):
        lc, lu = jax.nn.log_softmax(cond_fn(x_t), -1), jax.nn.log_softmax(uncond_fn(x_t), -1)
        guided = lc + scale * (lc - lu)
        return guided if where is None else jnp.where(where[:, : lc.shape[1], None], guided, lc)
    return logits_fn


def run_positions(label_mask: jax.Array, runs: Sequence[int]) -> jax.Array:
    """[B, L] bool: the positions of the label runs numbered `runs` (0-based, left to right) of label_mask [B, L]
    (`templates.value_runs` in-program); a budget template's runs are its attribute values in CAPTION_KEYS order."""
    lab = label_mask.astype(bool)
    starts = lab & ~jnp.pad(lab[:, :-1], ((0, 0), (1, 0)))  # [B, L] first position of each run
    index = jnp.cumsum(starts, axis=1) - 1  # [B, L] run number of each label position
    return lab & jnp.isin(index, jnp.asarray(list(runs), jnp.int32))


def _probs(logits_fn: LogitsFn, x: jax.Array, mask_id: int) -> jax.Array:
    logits = logits_fn(x)[:, : x.shape[1]]  # [B, L, V]
    return jnp.exp(masked_text.subs_log_probs(logits, x, mask_id))


def tempered(p: jax.Array, temperature: float) -> jax.Array:
    """p^(1/T) renormalised over the last axis [.., V]; T = 1 returns p, T = 0 the one-hot argmax of p."""
    if temperature < 0:
        raise ValueError(f"sample_caption: temperature must be >= 0, got {temperature}")
    if temperature == 1.0:
        return p
    if temperature == 0.0:
        return jax.nn.one_hot(jnp.argmax(p, axis=-1), p.shape[-1], dtype=p.dtype)
    return jax.nn.softmax(jnp.log(jnp.maximum(p, 1e-30)) / temperature, axis=-1)


def _uniform(key: jax.Array, i, shape: tuple[int, ...]) -> jax.Array:
    """U(0,1) of `shape` [B, L, V] for step i: one key for the batch, or one key per row (key [B])."""
    if key.ndim == 0:
        return jax.random.uniform(jax.random.fold_in(key, i), shape)
    if key.shape != shape[:1]:
        raise ValueError(f"sample_caption: per-row keys must be [B] = [{shape[0]}], got {key.shape}")
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, i), shape[1:]))(key)


def confidence_step(x: jax.Array, p_tok: jax.Array, p: jax.Array, e: jax.Array, n0: jax.Array, s: jax.Array,
                    mask_id: int) -> jax.Array:
    """One `order="confidence"` step: x [B, L], token weights p_tok and probs p [B, L, V], race noise e [B, L, V],
    initial masked counts n0 [B], next time s -> x with all but floor(n0 * s) masked positions committed."""
    masked = x == mask_id  # [B, L]
    w = jnp.where(jnp.arange(p.shape[-1]) == mask_id, 0.0, p_tok)
    tok = jnp.argmax(w / e, axis=-1).astype(jnp.int32)  # [B, L]
    conf = jnp.where(masked, jnp.take_along_axis(p, tok[..., None], axis=-1)[..., 0], -jnp.inf)
    left = jnp.minimum(jnp.floor(n0 * s).astype(jnp.int32), masked.sum(-1))  # [B] positions to leave masked
    rank = jnp.argsort(jnp.argsort(-conf, axis=-1, stable=True), axis=-1, stable=True)  # 0 = most confident
    commit = masked & (rank < (masked.sum(-1) - left)[:, None])
    return jnp.where(commit, tok, x)


def sample_caption(logits_fn: LogitsFn, template_ids: jax.Array, attention_mask: jax.Array, label_mask: jax.Array,
                   *, mask_id: int, key: jax.Array | None = None, uniforms: jax.Array | None = None,
                   steps: int = 64, t_min: float = 1e-5, mask_padding: bool = False,
                   use_cache: bool = True, temperature: float = 1.0, order: str = "random") -> jax.Array:
    """Samples caption token ids int32 [B, L] (no MASK left).

    Randomness: `key` (U for step i from fold_in(key, i)), a batch of keys [B] (row b draws from
    fold_in(key[b], i): each row's caption is independent of the batch it is in, as generation needs for
    batching/sharding invariance) or explicit `uniforms` [steps, B, L, V] (tests).
    logits_fn runs inside lax.fori_loop/cond: build it with `caption_logits_fn` (or keep it free of NNX modules
    created outside, see diffusion/pure_fn.py). `temperature`, `order`: see the module docstring (1 and "random"
    are the original).
    """
    if order not in ORDERS:
        raise ValueError(f"sample_caption: order must be one of {ORDERS}, got {order!r}")
    if (key is None) == (uniforms is None):
        raise ValueError("sample_caption: pass exactly one of key= or uniforms=")
    ts, dt = time_grid(steps, t_min)
    ts = jnp.asarray(ts)
    x = caption_prior(template_ids, attention_mask, label_mask, mask_id, mask_padding)  # [B, L]
    p0 = _probs(logits_fn, x, mask_id)  # [B, L, V]
    vocab = p0.shape[-1]
    if uniforms is not None and uniforms.shape != (steps,) + p0.shape:
        raise ValueError(f"sample_caption: uniforms must be [steps, B, L, V] = {(steps,) + p0.shape}, "
                         f"got {uniforms.shape}")
    is_mask_col = jnp.arange(vocab) == mask_id  # [V]
    n0 = jnp.sum(x == mask_id, axis=-1).astype(jnp.float32)  # [B] label positions to fill

    def body(i, carry):
        x, p, fresh = carry
        if use_cache:
            p = jax.lax.cond(fresh, lambda: p, lambda: _probs(logits_fn, x, mask_id))
        else:
            p = _probs(logits_fn, x, mask_id)
        t = ts[i]
        s = t - dt
        u = uniforms[i] if uniforms is not None else _uniform(key, i, p.shape)
        e = 1e-10 - jnp.log(u + 1e-10)
        if order == "confidence":
            x_next = confidence_step(x, tempered(p, temperature), p, e, n0, s, mask_id)
        else:
            q = jnp.where(is_mask_col, s, tempered(p, temperature) * (t - s))  # [B, L, V]
            draw = jnp.argmax(q / e, axis=-1).astype(jnp.int32)  # [B, L]
            x_next = jnp.where(x != mask_id, x, draw)
        return x_next, p, jnp.all(x_next == x)

    x, p, fresh = jax.lax.fori_loop(0, steps, body, (x, p0, jnp.bool_(True)))
    if use_cache:
        p = jax.lax.cond(fresh, lambda: p, lambda: _probs(logits_fn, x, mask_id))
    else:
        p = _probs(logits_fn, x, mask_id)
    return jnp.where(x == mask_id, jnp.argmax(p, axis=-1).astype(jnp.int32), x)
