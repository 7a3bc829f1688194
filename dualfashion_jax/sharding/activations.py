"""Activation sharding by logical axis names: the one place model code asks for an activation layout.

`constrain(x, (ACT_BATCH, ACT_LEN, ACT_EMBED))` maps the names through the sharding rules onto the mesh that is
current while tracing (`jax.set_mesh(mesh)`) and applies `jax.lax.with_sharding_constraint`. Without a mesh (or
on a 1-device mesh) it returns `x` unchanged, so single-device code and parity tests see no difference.
Why: inside a scanned trunk XLA otherwise keeps the global batch on every device and splits the model width
(an all-reduce of a full-batch activation after every dense layer); pinning the residual stream, heads, MLP
hidden and vocab at block boundaries gives the ZeRO-3 / Megatron layout the rules describe.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding

from dualfashion_jax.sharding import axes, partition, rules as rules_lib

# Logical layouts of the activations model code constrains (names from axes.py).
RESIDUAL = (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_EMBED)      # [B, L, D] residual stream
HEADS = (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_HEADS, None)   # [B, L, H, Dh] q / k / v
HEADS_FLAT = (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_HEADS)    # [B, L, H*Dh] attention output
MLP = (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_MLP)             # [B, L, F] feed-forward hidden
LOGITS = (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_VOCAB)        # [B, L, V] text-head logits
VECTOR = (axes.ACT_BATCH, axes.ACT_EMBED)                      # [B, D] per-sample vectors (temb)

_RULES: contextvars.ContextVar[rules_lib.Rules | None] = contextvars.ContextVar("activation_rules", default=None)
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("activation_constraints", default=True)


@contextlib.contextmanager
def use_rules(rules: rules_lib.Rules | None) -> Iterator[None]:
    """Traces under `rules` (a preset table from `rules.get`) instead of `rules.ACTIVATION_DEFAULT`."""
    token = _RULES.set(rules)
    try:
        yield
    finally:
        _RULES.reset(token)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Traces without activation constraints (benchmarks/partitioning.py --no_constraints: the 'before' layout)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def current_rules() -> rules_lib.Rules:
    return _RULES.get() or rules_lib.ACTIVATION_DEFAULT


def _mesh():
    """The abstract mesh being traced under, or None when there is none / it has one device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not _ENABLED.get():
        return None
    return mesh


def under_mesh() -> bool:
    """True while tracing under a multi-device mesh with constraints enabled (what `constrain` acts on)."""
    return _mesh() is not None


def spec_for(shape: Sequence[int], logical: Sequence[str | None], mesh, rules: rules_lib.Rules, name: str = ""):
    """PartitionSpec for an activation; mesh axes missing from `mesh` or manual there (shard_map) are skipped."""
    usable = set(mesh.axis_names) - set(getattr(mesh, "manual_axes", ()) or ())
    table = {k: tuple(a for a in rules_lib.mesh_axes_for(k, rules) if a in usable) or None for k in rules}
    return partition.mesh_spec(tuple(logical), tuple(shape), mesh, table, name)


def constrain(x: jax.Array, logical: Sequence[str | None], name: str = "activation") -> jax.Array:
    """`x` constrained to the layout its logical axis names map to under the current mesh/rules (else `x`)."""
    mesh = _mesh()
    if mesh is None:
        return x
    spec = spec_for(x.shape, logical, mesh, current_rules(), name)
    if all(t == AxisType.Explicit for t in mesh.axis_types):  # explicit-sharding meshes: a constraint asserts
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def constrain_batch_all(x: jax.Array, name: str = "activation") -> jax.Array:
    """Leading dim over every mesh axis (ACT_BATCH_ALL): a tower without tensor-parallel layers (the VAE) uses
    `tensor` as more data parallelism instead of repeating its work on each tensor shard."""
    return constrain(x, (axes.ACT_BATCH_ALL,) + (None,) * (x.ndim - 1), name)


def constrain_batch(x: jax.Array, name: str = "activation") -> jax.Array:
    """Shorthand: only the leading dim is named (ACT_BATCH); the others stay replicated."""
    return constrain(x, (axes.ACT_BATCH,) + (None,) * (x.ndim - 1), name)


def _weight_sharding(w: jax.Array, logical: Sequence[str | None], name: str) -> NamedSharding | None:
    """The layout a weight's (parameter) logical names map to under the current mesh/rules; None without a mesh
    or when the rules do not name its axes (e.g. the activation-only default table)."""
    mesh, rules = _mesh(), current_rules()
    if mesh is None or any(n is not None and n not in rules for n in logical):
        return None
    return NamedSharding(mesh, spec_for(w.shape, logical, mesh, rules, name))


def constrain_weight(w: jax.Array, logical: Sequence[str | None], name: str = "weight") -> jax.Array:
    """`w` pinned to its parameter layout (else `w`): e.g. an embedding table gathered over fsdp before a
    batch-local lookup."""
    sharding = _weight_sharding(w, logical, name)
    return w if sharding is None else jax.lax.with_sharding_constraint(w, sharding)


def cast_weight(w: jax.Array, logical: Sequence[str | None], dtype) -> jax.Array:
    """`w` in the compute `dtype`, cast while still sharded by its own rule so FSDP gathers the bf16 copy.

    Why: XLA otherwise all-gathers the fp32 master weight and converts after (2x the bytes). The gradient is cast
    back to the parameter dtype before it is reduced (custom VJP), so gradient sums stay in fp32. Without a
    mesh, with rules that do not name the weight's axes, or when the dtypes agree it is a plain `astype`.
    """
    if dtype is None or jnp.dtype(dtype) == w.dtype:
        return w
    sharding = _weight_sharding(w, logical, "weight")
    return w.astype(dtype) if sharding is None else _cast_sharded(w, sharding, jnp.dtype(dtype), w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _cast_sharded(w, sharding, dtype, src_dtype):
    return jax.lax.with_sharding_constraint(w.astype(dtype), sharding)


def _cast_fwd(w, sharding, dtype, src_dtype):
    return _cast_sharded(w, sharding, dtype, src_dtype), None


def _cast_bwd(sharding, dtype, src_dtype, _, g):
    return (jax.lax.with_sharding_constraint(g.astype(src_dtype), sharding),)


_cast_sharded.defvjp(_cast_fwd, _cast_bwd)
