"""Turn an NNX module used as `model_fn` / `t5_fn` into a pure function safe inside JAX control flow.

An NNX module whose Variables were created at one trace level cannot run `nnx.scan` (the MMDiT and T5 layer
stacks) under a deeper one (`lax.cond`, `lax.fori_loop`, `jax.grad` of a non-differentiated module):
"Cannot extract graph node from different trace level". Splitting it once and re-merging a copy inside the
callee creates fresh Variables at the caller's level. State updates made inside (e.g. RNG counters) are
discarded, so use it only for deterministic calls (pass dropout keys explicitly).
"""
from __future__ import annotations

from typing import Any, Callable

from flax import nnx


def as_pure(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn if it is a plain function; for an nnx.Module, a function that calls a fresh merged copy of it."""
    if not isinstance(fn, nnx.Module):
        return fn
    graph, state = nnx.split(fn)

    def call(*args, **kwargs):
        return nnx.merge(graph, state, copy=True)(*args, **kwargs)

    return call
