"""LPIPS v0.1 with a VGG16 trunk (`lpips.LPIPS(net='vgg', version='0.1')`) in Flax NNX, NHWC.

Images in [-1, 1] (any size >= 16 px; full resolution as DiFashion uses it) -> the ScalingLayer
((x - shift) / scale) -> VGG16 `features` taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 -> unit-normalise each
tap over channels (eps 1e-10 on the norm) -> squared difference -> per-layer 1x1 linear head (no bias) -> spatial
mean -> sum over the 5 layers. `features()` and `distance_from_features()` are split so that pairwise
diversity needs one trunk pass per image.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.evaluators.nets.inception_blocks import check_image_batch, max_pool
from dualfashion_jax.sharding import axes

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# VGG16 `features` conv widths; a 2x2 max pool precedes stage k > 0. Taps after the last conv of each stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TAP_CHANNELS = tuple(stage[-1] for stage in VGG16_STAGES)  # (64, 128, 256, 512, 512)
GEMM_MAX_SIDE = 2  # maps this small or smaller run their 3x3 convs as one GEMM (`conv3x3`)


def conv3x3(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a 3x3 'same' conv; on maps of side <= GEMM_MAX_SIDE one GEMM over the 9 shifted copies, as XLA:CPU
    ran those convolutions at ~1 GFLOP/s (32 x 2² x 512 -> 512: 461 ms vs 8 ms; BENCHMARKS.md, LPIPS)."""
    b, h, w, c = x.shape                                                             # [B, H, W, Cin]
    if min(h, w) > GEMM_MAX_SIDE:
        return conv(x)
    dtype = conv.dtype or x.dtype
    xp = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)  # [B, H, W, 9 Cin]
    y = cols @ conv.kernel[...].astype(dtype).reshape(9 * c, -1)                                   # [B, H, W, Cout]
    return y + conv.bias[...].astype(dtype) if conv.bias is not None else y


@dataclasses.dataclass(frozen=True)
class LPIPSConfig:
    dtype: Any = jnp.float32  # compute dtype of the VGG trunk; normalisation and heads run in fp32

    def to_json(self) -> dict:
        return {}


class LPIPSVGG(nnx.Module):
    """LPIPS-VGG16 v0.1 distance: `model(x0, x1)` -> [B] (fp32)."""

    def __init__(self, config: LPIPSConfig = LPIPSConfig(), *, rngs: nnx.Rngs):
        self.config = config
        convs, cin = [], 3
        for stage in VGG16_STAGES:
            for cout in stage:
                convs.append(nnx.Conv(
                    cin, cout, (3, 3), padding=((1, 1), (1, 1)), dtype=config.dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                      (None, None, axes.CONV_IN, axes.CONV_OUT)),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes.CONV_OUT,)), rngs=rngs))
                cin = cout
        self.convs = nnx.List(convs)
        # lpips NetLinLayer: 1x1 conv C -> 1 without bias == a linear map over the channel axis.
        self.lins = nnx.List([
            nnx.Linear(c, 1, use_bias=False, param_dtype=jnp.float32, rngs=rngs,
                       kernel_init=nnx.with_partitioning(nnx.initializers.uniform(0.1), (axes.CONV_IN, None)))
            for c in TAP_CHANNELS])

    def features(self, images: jax.Array) -> list[jax.Array]:
        """images [B, H, W, 3] in [-1, 1] -> 5 channel-normalised taps [B, H/2^k, W/2^k, C_k] (fp32)."""
        check_image_batch(images, "LPIPSVGG")
        x = (images.astype(jnp.float32) - jnp.asarray(_SHIFT)) / jnp.asarray(_SCALE)
        x = x.astype(self.config.dtype)
        taps, i = [], 0
        for k, stage in enumerate(VGG16_STAGES):
            if k > 0:
                x = max_pool(x, 2, 2)
            for _ in stage:
                x = jax.nn.relu(conv3x3(self.convs[i], x))
                i += 1
            f = x.astype(jnp.float32)
            norm = jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True))
            taps.append(f / (norm + 1e-10))
        return taps

    def distance_from_features(self, f0: list[jax.Array], f1: list[jax.Array]) -> jax.Array:
        """LPIPS from two lists of normalised taps (broadcasting over leading dims) -> [B]."""
        total = 0.0
        for lin, a, b in zip(self.lins, f0, f1):
            d = (a - b) ** 2                                                # [B, h, w, C]
            total = total + jnp.mean(lin(d)[..., 0], axis=(-2, -1))         # [B]
        return total

    def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
        if x0.shape != x1.shape:
            raise ValueError(f"LPIPSVGG compares images of equal shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        return self.distance_from_features(self.features(x0), self.features(x1))
