"""A concrete NNX module from a factory and flat "a/b/kernel" params, with nothing random initialised first.

Unlike `conversion.materialize.build_from_flat` (Param-only models), the factory's non-Param state (pos-embed
buffer, RNG streams) is kept, computed under jit.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.conversion import common


class MismatchError(ValueError):
    """A checkpoint, its config and the modules built from it do not fit together (names files and fields)."""


def module_from_flat(factory: Callable[[], nnx.Module], flat: dict[str, np.ndarray], *, source: str,
                     what: str = "model"):
    """factory()'s module holding `flat` nnx.Param values (validated against eval_shape; nothing random is
    initialised); non-Param state (pos-embed buffer, RNG streams) is computed under jit."""
    abstract = nnx.eval_shape(factory)
    graphdef, pstate, rest = nnx.split(abstract, nnx.Param, ...)
    expected = {"/".join(map(str, path)): v.get_value() for path, v in pstate.flat_state()}
    try:
        common.validate(flat, expected, source=source)
    except common.ConversionError as e:
        raise MismatchError(f"checkpoint/config mismatch (the config builds a different {what}):\n{e}") from None
    if jax.tree.leaves(rest):
        rest = jax.jit(lambda: nnx.split(factory(), nnx.Param, ...)[2])()
    fs = pstate.flat_state()
    for path, var in fs:
        var.set_value(jnp.asarray(flat["/".join(map(str, path))], dtype=var.get_value().dtype))
    return nnx.merge(graphdef, nnx.State.from_flat_path(fs), rest)


def build_jitted(factory: Callable[[], nnx.Module]):
    """factory() run under jit (one compile instead of one per initializer op), returned as a concrete module."""
    graphdef, _ = nnx.split(nnx.eval_shape(factory))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(factory())[1])())
