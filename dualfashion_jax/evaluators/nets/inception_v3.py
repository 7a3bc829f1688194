"""torchvision Inception-v3 classifier (DiFashion's 50-way fine-tuned IS / IS-acc network) in Flax NNX, NHWC.

Same parameter layout as `torchvision.models.Inception3(num_classes=50, aux_logits=True, transform_input=True)`,
so DiFashion's `Inception-finetune-epoch300` state dict converts key-for-key
(`evaluators/nets/weights.py`). Inference is eval mode: the aux head's weights are carried (they must
convert) but it only runs when asked for (`with_aux=True`). Inputs are images in [-1, 1] at 299x299
(`preprocess.inception_input`); `transform_input` re-maps them to ImageNet normalisation as torchvision does.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.evaluators.nets.inception_blocks import BasicConv2d, InceptionTrunk, avg_pool, check_image_batch
from dualfashion_jax.sharding import axes

# torchvision `_transform_input`: x * (std / 0.5) + (mean - 0.5) / 0.5 per RGB channel.
_TV_MEAN = (0.485, 0.456, 0.406)
_TV_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InceptionV3Config:
    """Classifier config; defaults are DiFashion's fine-tuned 50-category net."""

    num_classes: int = 50
    transform_input: bool = True
    dtype: Any = jnp.float32  # compute dtype; params stay fp32

    def to_json(self) -> dict:
        return {"num_classes": self.num_classes, "transform_input": self.transform_input}


def _linear(din: int, dout: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
                      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (axes.EMBED, None)),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (None,)))


class InceptionAux(nnx.Module):
    """Auxiliary head on Mixed_6e: avgpool 5/3 -> 1x1 conv 128 -> 5x5 conv 768 -> GAP -> fc."""

    def __init__(self, cin: int, num_classes: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.conv0 = BasicConv2d(cin, 128, 1, dtype=dtype, rngs=rngs)
        self.conv1 = BasicConv2d(128, 768, 5, dtype=dtype, rngs=rngs)
        self.fc = _linear(768, num_classes, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, 17, 17, 768] -> [B, num_classes]
        x = self.conv1(self.conv0(avg_pool(x, 5, 3)))   # [B, 1, 1, 768]
        return self.fc(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


class InceptionV3(InceptionTrunk):
    """Inception-v3 classifier: images [B, 299, 299, 3] in [-1, 1] -> logits [B, num_classes] (fp32)."""

    def __init__(self, config: InceptionV3Config = InceptionV3Config(), *, rngs: nnx.Rngs):
        super().__init__(fid=False, dtype=config.dtype, rngs=rngs)
        self.config = config
        self.AuxLogits = InceptionAux(768, config.num_classes, dtype=config.dtype, rngs=rngs)
        self.fc = _linear(2048, config.num_classes, config.dtype, rngs)

    def __call__(self, images: jax.Array, *, with_aux: bool = False):
        """Returns logits [B, C]; with `with_aux=True` returns (logits, aux_logits)."""
        check_image_batch(images, "InceptionV3")
        x = images.astype(jnp.float32)
        if self.config.transform_input:
            mean, std = jnp.asarray(_TV_MEAN), jnp.asarray(_TV_STD)
            x = x * (std / 0.5) + (mean - 0.5) / 0.5                         # [B, H, W, 3]
        x17 = self.stem_to_6e(x.astype(self.config.dtype))                  # [B, 17, 17, 768]
        feats = self.pool_features(x17)                                     # [B, 2048]; dropout is identity in eval
        logits = self.fc(feats.astype(self.config.dtype)).astype(jnp.float32)
        if with_aux:
            return logits, self.AuxLogits(x17)
        return logits

    def probs(self, images: jax.Array) -> jax.Array:
        """Softmax class probabilities [B, C] (fp32), the input of the IS family of metrics."""
        return jax.nn.softmax(self(images), axis=-1)
