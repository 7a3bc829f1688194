"""Hand-written backward passes for the MMDiT's layer norm, tanh-GELU and softmax attention (same forward).

Autodiff of these three spends most of the CPU step's elementwise time in extra passes over `[B, L, D]`
and `[B, H, L, L]` (docs/performance.md §8, seventh pass); the rules below are the textbook ones:
LN dx = rstd (g - mean(g) - x̂ mean(g x̂)); attention's softmax backward uses rowsum(P dP) = rowsum(dO O)
(FlashAttention's identity), a `[B, L, H, Dh]` reduction instead of one over `[B, H, L, L]`.
Forwards are the autodiff versions' own ops, bit for bit; gradients agree to float rounding (tests).
"""
from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp

_GELU_C = math.sqrt(2.0 / math.pi)


def _layer_norm_fwd(x: jax.Array, eps: float):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    xc = x32 - mean
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xc), axis=-1, keepdims=True) + eps)  # [..., 1]
    xhat = xc * rstd  # [..., D] fp32
    return xhat.astype(x.dtype), (xhat, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Affine-free LayerNorm over the last axis, statistics in fp32, output in x's dtype."""
    return _layer_norm_fwd(x, eps)[0]


def _layer_norm_bwd(eps, res, g):
    del eps
    xhat, rstd = res
    g32 = g.astype(jnp.float32)  # g has x's dtype (the output's)
    dx = (g32 - jnp.mean(g32, axis=-1, keepdims=True)
          - xhat * jnp.mean(g32 * xhat, axis=-1, keepdims=True)) * rstd
    return (dx.astype(g.dtype),)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def gelu_tanh(u: jax.Array) -> jax.Array:
    """`jax.nn.gelu(u, approximate=True)` (diffusers "gelu-approximate") with a one-pass derivative."""
    return jax.nn.gelu(u, approximate=True)


def _gelu_fwd(u):
    return jax.nn.gelu(u, approximate=True), u


def _gelu_bwd(u, g):
    u32 = u.astype(jnp.float32)
    t = jnp.tanh(_GELU_C * (u32 + 0.044715 * u32 * u32 * u32))
    d = 0.5 * (1.0 + t) + 0.5 * u32 * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * u32 * u32)  # d gelu / du
    return ((g.astype(jnp.float32) * d).astype(u.dtype),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


def _attention_fwd(q, k, v, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # [B, H, Lq, Lk]
    probs = jax.nn.softmax(logits, axis=-1)  # fp32
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)  # [B, Lq, H, Dh]
    return out, (q, k, v, probs, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """softmax(q k^T scale) v, q/k/v `[B, L, H, Dh]`: logits and softmax in fp32, matmuls in the input dtype."""
    return _attention_fwd(q, k, v, scale)[0]


def _attention_bwd(scale, res, d_out):
    q, k, v, probs, out = res
    d_v = jnp.einsum("bhqk,bqhd->bkhd", probs.astype(v.dtype), d_out)  # [B, Lk, H, Dh]
    d_probs = jnp.einsum("bqhd,bkhd->bhqk", d_out, v).astype(jnp.float32)  # in v's dtype, as autodiff does
    row = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))  # rowsum(P dP)
    d_logits = probs * (d_probs - row[..., None]) * scale  # [B, H, Lq, Lk] fp32
    d_q = jnp.einsum("bhqk,bkhd->bqhd", d_logits, k, preferred_element_type=jnp.float32).astype(q.dtype)
    d_k = jnp.einsum("bhqk,bqhd->bkhd", d_logits, q, preferred_element_type=jnp.float32).astype(k.dtype)
    return d_q, d_k, d_v


softmax_attention.defvjp(_attention_fwd, _attention_bwd)


def layer_norm_autodiff(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """`layer_norm` differentiated by JAX (the reference its backward is tested and benchmarked against)."""
    return _layer_norm_fwd(x, eps)[0]


def gelu_tanh_autodiff(u: jax.Array) -> jax.Array:
    """`gelu_tanh` differentiated by JAX."""
    return jax.nn.gelu(u, approximate=True)


@contextlib.contextmanager
def autodiff_norms():
    """Within: models traced use JAX's own gradients for `layer_norm` and `gelu_tanh` (A/B benchmarks, tests;
    attention's counterpart is the backend 'xla_autodiff')."""
    saved = (layer_norm, gelu_tanh)
    globals().update(layer_norm=layer_norm_autodiff, gelu_tanh=gelu_tanh_autodiff)
    try:
        yield
    finally:
        globals().update(layer_norm=saved[0], gelu_tanh=saved[1])
