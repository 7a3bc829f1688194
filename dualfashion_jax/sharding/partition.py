"""Abstract state -> logical specs -> NamedShardings; sharded init; optimizer-state and batch shardings.

The flow (jax_anchors §1.3/§1.4): `nnx.eval_shape` gives the abstract state, `nnx.get_partition_spec` its
logical names, the rules map names to mesh axes, and `jax.jit(init, out_shardings=...)` creates every
parameter directly on its shards (no full copy ever lives on one device).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dualfashion_jax.core import params as core_params
from dualfashion_jax.core.keys import key_str
from dualfashion_jax.sharding import rules as rules_lib

log = logging.getLogger(__name__)
_NOTED: set[tuple] = set()


def mesh_spec(logical: tuple | P | None, shape: tuple[int, ...], mesh: Mesh, rules: rules_lib.Rules,
              name: str = "") -> P:
    """Maps one array's logical names to a PartitionSpec, dropping a mesh axis when the dim isn't divisible.

    A mesh axis is also dropped if an earlier dim already uses it (a spec may name each axis once).
    """
    logical = tuple(logical or ())
    if len(logical) > len(shape):
        raise ValueError(f"{name}: {len(logical)} logical axis names {logical} for an array of shape {shape}")
    used: set[str] = set()
    out = []
    for dim, lname in zip(shape, logical + (None,) * (len(shape) - len(logical))):
        keep = []
        for ax in rules_lib.mesh_axes_for(lname, rules):
            size = mesh.shape[ax]
            if ax in used or size == 1:
                continue
            if dim % (math.prod(mesh.shape[a] for a in keep) * size):
                key = (name, lname, dim, ax)
                if key not in _NOTED:
                    _NOTED.add(key)
                    log.info("sharding: %s dim %s=%d not divisible by mesh axis %r (size %d); kept unsharded",
                             name or "<array>", lname, dim, ax, size)
                continue
            keep.append(ax)
        used.update(keep)
        out.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: rules_lib.Rules) -> nnx.State:
    """NamedSharding for every leaf of an abstract NNX state (same tree structure)."""
    logical = nnx.get_partition_spec(abstract_state)

    def one(path, leaf, spec):
        return NamedSharding(mesh, mesh_spec(spec, leaf.shape, mesh, rules, key_str(path)))

    return jax.tree_util.tree_map_with_path(one, abstract_state, logical)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: rules_lib.Rules) -> Any:
    """Like `state_shardings` for any pytree that may contain NNX states (others leaves are replicated)."""
    def is_state(x):
        return isinstance(x, nnx.State)

    def one(x):
        if isinstance(x, nnx.State):
            return state_shardings(x, mesh, rules)
        return NamedSharding(mesh, P())

    return jax.tree.map(one, abstract_tree, is_leaf=is_state)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any,
                        mesh: Mesh) -> Any:
    """Optimizer-state shardings: moments follow their params, counters are replicated (deps.md gotcha 3)."""
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    return optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                 transform_non_params=lambda _: NamedSharding(mesh, P()))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Every batch array is split over (data, fsdp) on its leading dim and replicated over tensor."""
    return NamedSharding(mesh, P(rules_lib.BATCH))


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str = "config.batch_size") -> None:
    n = math.prod(mesh.shape[a] for a in rules_lib.BATCH)
    if global_batch % n:
        raise ValueError(f"{what}={global_batch} must be divisible by data*fsdp={n} (mesh {dict(mesh.shape)})")


def put_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles global batch arrays from this process's rows (`make_array_from_process_local_data`)."""
    sh = batch_sharding(mesh)
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        if v.ndim == 0:
            raise ValueError(f"batch[{k!r}]: expected a leading batch dimension, got a scalar")
        out[k] = jax.make_array_from_process_local_data(sh, v)
    return out


def put_global(host: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A whole array every process holds in host memory -> a global array on `sharding`; unlike `device_put`,
    also for a multi-process mesh (each process places only its addressable shards)."""
    if jax.process_count() == 1:
        return jax.device_put(host, sharding)
    if jax.dtypes.issubdtype(getattr(host, "dtype", None), jax.dtypes.prng_key):  # typed PRNG keys (nnx.Rngs)
        data = put_global(jax.random.key_data(host), sharding)  # [..., key words]
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(host))
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_global_tree(tree: Any, shardings: Any) -> Any:
    """`put_global` over a pytree (e.g. an `nnx.State`) and the matching tree of shardings."""
    return jax.tree.map(put_global, tree, shardings)


def place_flat(abstract_state: nnx.State, shardings: nnx.State, flat: Mapping[str, np.ndarray],
               source: str) -> nnx.State:
    """Puts converted flat params ({"a/b/kernel": array}) on their shards; keys/shapes validated first."""
    by_key = core_params.flat_view(shardings)
    return core_params.state_from_flat(
        abstract_state, flat, source=source,
        place=lambda key, host, leaf: put_global(np.asarray(host, dtype=leaf.dtype), by_key[key]))


def sharded_init(init_fn: Callable[[], Any], out_shardings: Any) -> Any:
    """Runs `init_fn` under jit with `out_shardings` so parameters are born on their shards."""
    return jax.jit(init_fn, out_shardings=out_shardings)()
