"""Build a concrete NNX model straight from converted flat params, without a random init first.

`nnx.eval_shape` gives the model's structure; the converted arrays are placed into it and merged. For
T5-XXL this avoids initialising (and briefly holding twice) 4.7 B random parameters.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from dualfashion_jax.conversion import common


def build_from_flat(factory: Callable[[], Any], params: Mapping[str, np.ndarray], *, source: str):
    """Model from `factory` with every nnx.Param set from `params` (validated first, cast to each param's dtype)."""
    import jax.numpy as jnp
    from flax import nnx

    abstract = nnx.eval_shape(factory)
    graphdef, state = nnx.split(abstract)
    flat = state.flat_state()
    expected = {common._path_str(p): v.get_value() for p, v in flat if isinstance(v, nnx.Param)}
    others = [common._path_str(p) for p, v in flat if not isinstance(v, nnx.Param)]
    if others:
        raise TypeError(f"build_from_flat: model holds non-Param state {others}; cannot materialize from params")
    common.validate(params, expected, source=source)
    for path, var in flat:
        var.set_value(jnp.asarray(params[common._path_str(path)], dtype=var.get_value().dtype))
    return nnx.merge(graphdef, nnx.State.from_flat_path(flat))
