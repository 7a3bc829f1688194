"""One attention entry point with pluggable backends (XLA einsum reference, cuDNN flash, TPU splash).

All backends take q/k/v as `[B, L, H, Dh]`, full bidirectional attention with no mask (the original
attends padding too, spec §7.1), and return `[B, Lq, H, Dh]` in q's dtype. A backend registers itself with
`@register_backend(name)`; `auto` picks cudnn on GPU for bf16/fp16, splash on TPU, else xla. A backend the
platform/dtype cannot run is an error, or, with `fallback="xla"`, a logged switch to the fallback.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import jax
import jax.numpy as jnp

from dualfashion_jax.models import attention_splash, custom_grads

log = logging.getLogger(__name__)

AttentionFn = Callable[..., jax.Array]  # (q, k, v, *, scale) -> out
_BACKENDS: dict[str, AttentionFn] = {}


def register_backend(name: str) -> Callable[[AttentionFn], AttentionFn]:
    """Decorator adding `fn(q, k, v, *, scale)` to the backend registry under `name`."""
    def deco(fn: AttentionFn) -> AttentionFn:
        _BACKENDS[name] = fn
        return fn
    return deco


def available_backends() -> tuple[str, ...]:
    return ("auto",) + tuple(sorted(_BACKENDS))


def _platform() -> str:
    return jax.default_backend()  # "cpu" | "gpu" | "tpu"


@register_backend("xla")
def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """Explicit einsum attention; logits and softmax in fp32, matmuls in the input dtype; a hand-written
    backward (`custom_grads.softmax_attention`: one fewer pass over the `[B, H, L, L]` probabilities)."""
    return custom_grads.softmax_attention(q, k, v, scale)


@register_backend("xla_autodiff")
def xla_autodiff_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """The same einsum attention differentiated by JAX (the reference the `xla` backend's gradient is tested on)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # [B, H, Lq, Lk]
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)  # [B, Lq, H, Dh]


def unsupported_reason(backend: str, dtype) -> str | None:
    """Why `backend` cannot run inputs of `dtype` on this platform (None: it can)."""
    if backend == "cudnn":
        if _platform() != "gpu":
            return f"attention backend 'cudnn' needs a GPU, but JAX runs on {_platform()!r}"
        if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
            return f"attention backend 'cudnn' needs bfloat16/float16 inputs, got {jnp.dtype(dtype)}"
    if backend == "splash" and _platform() != "tpu":
        return f"attention backend 'splash' needs a TPU, but JAX runs on {_platform()!r}"
    return None


@register_backend("cudnn")
def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """cuDNN fused (flash) attention through `jax.nn.dot_product_attention`; GPU with bf16/fp16 only."""
    reason = unsupported_reason("cudnn", q.dtype)
    if reason:
        raise ValueError(f"{reason}; use attention_backend='xla' or 'auto' (or fallback='xla')")
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")


@register_backend("splash")
def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """Pallas splash attention on TPU, per shard of the context mesh (models/attention_splash.py)."""
    reason = unsupported_reason("splash", q.dtype)
    if reason:
        raise ValueError(f"{reason}; use attention_backend='xla' or 'auto' (or fallback='xla')")
    return attention_splash.splash_attention(q, k, v, scale=scale)


def resolve_backend(backend: str, dtype, fallback: str | None = None) -> str:
    """The concrete backend `backend` means for `dtype` here ('auto' -> cudnn | splash | xla).

    A named backend this platform/dtype cannot run raises ValueError, or with `fallback` logs and uses it.
    """
    if backend == "auto":
        if _platform() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            return "cudnn"
        return "splash" if _platform() == "tpu" else "xla"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {available_backends()}")
    reason = unsupported_reason(backend, dtype)
    if reason is None:
        return backend
    if fallback is None:
        raise ValueError(f"{reason}; use attention_backend='xla' or 'auto', or pass fallback='xla'")
    log.warning("%s; falling back to attention backend %r", reason, fallback)
    return resolve_backend(fallback, dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, backend: str = "xla",
              scale: float | None = None, fallback: str | None = None) -> jax.Array:
    """Softmax(q k^T * scale) v with q/k/v `[B, L, H, Dh]`; scale defaults to 1/sqrt(Dh).

    `fallback` (e.g. "xla") is used, with a logged warning, when `backend` cannot run here.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention: expected q [B, Lq, H, Dh] and k == v [B, Lk, H, Dh], got "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _BACKENDS[resolve_backend(backend, q.dtype, fallback)](q, k, v, scale=scale)
