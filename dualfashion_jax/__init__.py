"""dualfashion_jax: DualFashion's dual (image + attribute caption) diffusion recommender in JAX/Flax NNX.

Parameters carry logical axis names and are placed on devices explicitly by `sharding/partition.py`, so Flax's eager
variable sharding (which needs a mesh at construction time) is switched off here, for every submodule import.
"""
from flax import nnx as _nnx

_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
