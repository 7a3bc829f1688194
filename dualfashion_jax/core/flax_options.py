"""The one global Flax option of the package, set on import (the package `__init__` imports this module).

Parameters carry logical axis names and are placed on devices explicitly by `sharding/partition.py`, so Flax's
eager variable sharding (which needs a mesh at construction time) is switched off for every user of the library.
"""
from flax import nnx

nnx.use_eager_sharding(False)
