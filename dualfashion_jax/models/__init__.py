"""Flax NNX models: the dual MMDiT, the T5 v1.1 encoder and the SD3 VAE.

Parameters carry logical axis names; they are placed on devices explicitly by `sharding/partition.py`,
so Flax's eager variable sharding (which needs a mesh at construction time) is switched off here.
"""
from flax import nnx as _nnx

_nnx.use_eager_sharding(False)
