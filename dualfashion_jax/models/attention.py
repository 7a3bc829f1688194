"""One attention entry point with pluggable backends (XLA einsum reference, cuDNN flash; TPU splash later).

All backends take q/k/v as `[B, L, H, Dh]`, full bidirectional attention with no mask (the original
attends padding too, spec §7.1), and return `[B, Lq, H, Dh]` in q's dtype. A new backend (e.g. `splash`
in its own file) registers itself with `@register_backend("splash")`.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

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
    """Explicit einsum attention; logits and softmax in fp32, matmuls in the input dtype."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale  # [B, H, Lq, Lk]
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)  # [B, Lq, H, Dh]


@register_backend("cudnn")
def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """cuDNN fused (flash) attention through `jax.nn.dot_product_attention`; GPU with bf16/fp16 only."""
    if _platform() != "gpu":
        raise ValueError(f"attention backend 'cudnn' needs a GPU, but JAX runs on {_platform()!r}; "
                         "use attention_backend='xla' or 'auto'")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention backend 'cudnn' needs bfloat16/float16 inputs, got {q.dtype}; "
                         "set the model dtype to bfloat16 or use attention_backend='auto'")
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")


def resolve_backend(backend: str, dtype) -> str:
    """The concrete backend `backend` means for inputs of `dtype` on this platform ('auto' -> cudnn|xla)."""
    if backend == "auto":
        if _platform() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            return "cudnn"
        return "xla"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {available_backends()}")
    return backend


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, backend: str = "xla",
              scale: float | None = None) -> jax.Array:
    """Softmax(q k^T * scale) v with q/k/v `[B, L, H, Dh]`; scale defaults to 1/sqrt(Dh)."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention: expected q [B, Lq, H, Dh] and k == v [B, Lk, H, Dh], got "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _BACKENDS[resolve_backend(backend, q.dtype)](q, k, v, scale=scale)
