"""dualfashion_jax: DualFashion's dual (image + attribute caption) diffusion recommender in JAX/Flax NNX.

Parameters carry logical axis names and are placed on devices explicitly by `sharding/partition.py`, so Flax's eager
variable sharding (which needs a mesh at construction time) is switched off in `core/flax_options.py`, imported
here so that every submodule import gets it.
"""
from dualfashion_jax.core import flax_options  # noqa: F401  (sets the package's global Flax option)

__version__ = "0.1.0"
