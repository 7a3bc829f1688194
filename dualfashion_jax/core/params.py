"""Flat params <-> NNX modules: the one implementation of reading a module's variables as `{key: array}` and of
building or filling a module from such a dict (validated first; one error names every bad key).

Building from an abstract (`nnx.eval_shape`) module skips the random initialisation: for T5-XXL that avoids
holding 4.7 B random parameters, for the evaluator nets ~20 s of eager conv init on CPU. State other than the
given variable types (RNG streams) is built for real under jit, where the unused weight inits are dropped.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.core.keys import key_str

FlatParams = dict[str, np.ndarray]  # "blocks/attn/to_q/kernel" -> array


class ConversionError(ValueError):
    """Weights do not match the model they are loaded into (names every offending key)."""


def flat_view(tree: Any) -> dict[str, Any]:
    """`{key: leaf}` of any pytree, e.g. an `nnx.State` of arrays, ShapeDtypeStructs or shardings."""
    return {key_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def abstract_params(factory: Callable[[], Any], types: Any = nnx.Param) -> dict[str, Any]:
    """Flat `{key: ShapeDtypeStruct}` of a model's variables of `types`, without allocating it."""
    return flat_view(nnx.state(nnx.eval_shape(factory), types))


def flat_params(model: Any, types: Any = nnx.Param) -> FlatParams:
    """Flat `{key: np.ndarray}` of a concrete model's variables of `types`."""
    return {k: np.asarray(v) for k, v in flat_view(nnx.state(model, types)).items()}


def validate(given: Mapping[str, Any], expected: Mapping[str, Any], *, source: str,
             ignore_missing: Callable[[str], bool] = lambda k: False) -> None:
    """Raises one ConversionError listing every missing, unexpected and mis-shaped key (only `.shape` is read)."""
    missing = sorted(k for k in expected if k not in given and not ignore_missing(k))
    unexpected = sorted(k for k in given if k not in expected)
    bad_shape = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in given if k in expected and tuple(given[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or bad_shape:
        parts = [f"{source} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)):
            if items:
                shown = items[:50] + ([f"... and {len(items) - 50} more"] if len(items) > 50 else [])
                parts.append(f"  {title} ({len(items)}):\n    " + "\n    ".join(shown))
        raise ConversionError("\n".join(parts))


def _to_device(key: str, host: Any, leaf: Any) -> jax.Array:
    return jnp.asarray(host, dtype=leaf.dtype)


def state_from_flat(state: Any, flat: Mapping[str, Any], *, source: str,
                    place: Callable[[str, Any, Any], Any] = _to_device) -> Any:
    """`state` (abstract or concrete) with every leaf replaced by `place(key, flat[key], leaf)` (default: a device
    array cast to the leaf's dtype); `flat` is validated against the state's keys and shapes first."""
    validate(flat, flat_view(state), source=source)
    return jax.tree_util.tree_map_with_path(lambda p, leaf: place(key_str(p), flat[key_str(p)], leaf), state)


def module_from_flat(factory: Callable[[], Any], flat: Mapping[str, Any], *, source: str, types: Any = nnx.Param):
    """`factory()`'s module holding `flat` as its variables of `types`, without a random init of them."""
    graphdef, state, rest = nnx.split(nnx.eval_shape(factory), types, ...)
    state = state_from_flat(state, flat, source=source)
    if jax.tree.leaves(rest):
        rest = jax.jit(lambda: nnx.split(factory(), types, ...)[2])()
    return nnx.merge(graphdef, state, rest)


def load_flat_into(model: Any, flat: Mapping[str, Any], *, source: str, types: Any = nnx.Param) -> None:
    """Writes `flat` into an existing (abstract or concrete) model's variables of `types`, in place."""
    nnx.update(model, state_from_flat(nnx.state(model, types), flat, source=source))
