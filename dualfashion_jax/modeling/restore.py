"""A concrete NNX module from a factory and flat "a/b/kernel" params (`core.params`), with checkpoint/config
mismatches reported as `MismatchError`; `build_jitted` builds a module's random init in one compile."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx

from dualfashion_jax.core import params as core_params


class MismatchError(ValueError):
    """A checkpoint, its config and the modules built from it do not fit together (names files and fields)."""


def module_from_flat(factory: Callable[[], nnx.Module], flat: dict[str, np.ndarray], *, source: str,
                     what: str = "model"):
    """factory()'s module holding `flat` nnx.Param values (`core.params.module_from_flat`: validated against
    eval_shape, nothing random initialised); a mismatch names the config as the cause."""
    try:
        return core_params.module_from_flat(factory, flat, source=source)
    except core_params.ConversionError as e:
        raise MismatchError(f"checkpoint/config mismatch (the config builds a different {what}):\n{e}") from None


def build_jitted(factory: Callable[[], nnx.Module]):
    """factory() run under jit (one compile instead of one per initializer op), returned as a concrete module."""
    graphdef, _ = nnx.split(nnx.eval_shape(factory))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(factory())[1])())
