"""JSON round trip shared by the model config dataclasses (MMDiT, T5, VAE, pixel autoencoder).

Converted checkpoints and training workdirs store configs as JSON: dtypes go by name, tuples as lists, and an
unknown field is an error naming the file it came from (a config from a newer/older version, or a typo).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import jax.numpy as jnp

_DTYPE_FIELDS = ("dtype", "param_dtype")
C = TypeVar("C")


def to_dict(cfg) -> dict[str, Any]:
    """JSON-able dict of a config dataclass (dtypes by name, tuples as lists)."""
    d = dataclasses.asdict(cfg)
    for k, v in d.items():
        if k in _DTYPE_FIELDS:
            d[k] = jnp.dtype(v).name
        elif isinstance(v, tuple):
            d[k] = list(v)
    return d


def from_dict(cls: type[C], d: Mapping[str, Any], *, source: str = "config") -> C:
    """Inverse of `to_dict`; unknown fields raise a ValueError naming `source` and the known fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(names)}")
    d = {k: (jnp.dtype(v) if k in _DTYPE_FIELDS else v) for k, v in d.items()}
    return cls(**d)
