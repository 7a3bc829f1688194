"""Inception-v3 building blocks (torchvision layout, NHWC), shared by the 50-way classifier and the FID net.

Module and attribute names mirror torchvision's `BasicConv2d`/`InceptionA..E` so that state-dict keys map
one-to-one (`Mixed_5b.branch5x5_1.conv.weight` -> `Mixed_5b/branch5x5_1/conv/kernel`). The TF-FID variant
differs only in its pooling: average pools exclude padding (`count_include_pad=False`) and the last block
(`Mixed_7c`) uses a max pool in its pool branch (pytorch-fid's FIDInceptionA/C/E_1/E_2).
Eval-mode only: batch norm always uses its running statistics.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.sharding import axes

_BN_EPS = 1e-3  # torchvision BasicConv2d and TF batch norm both use 0.001


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _windows(x: jax.Array, window: int, stride: int, padding: int, fill: float):
    """The window*window strided views [B, H', W', C] of `x` padded with `fill` (torch floor-mode output size)."""
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    ho, wo = (x.shape[1] - window) // stride + 1, (x.shape[2] - window) // stride + 1
    for i in range(window):
        for j in range(window):
            yield x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]


# Pools are an elementwise max / sum of the window's strided slices (one fused loop): XLA:CPU's generic
# `reduce_window` ran these 3x3 pools 3-4x slower (benchmarks/fid_features.py, BENCHMARKS.md).
def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """torch `max_pool2d` (floor mode) on NHWC; padded cells never win."""
    out = None
    for v in _windows(x, window, stride, padding, -jnp.inf):
        out = v if out is None else jnp.maximum(out, v)
    return out


def avg_pool(x: jax.Array, window: int, stride: int, padding: int = 0, *,
             count_include_pad: bool = True) -> jax.Array:
    """torch `avg_pool2d` (floor mode) on NHWC; `count_include_pad=False` divides by the valid cells only."""
    total = None
    for v in _windows(x, window, stride, padding, 0.0):
        total = v if total is None else total + v
    if count_include_pad or padding == 0:
        return total / (window * window)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = sum(_windows(ones, window, stride, padding, 0.0))     # [1, H', W', 1], a compile-time constant
    return total / count


def compiler_options() -> dict[str, str]:
    """XLA options for jitting a conv net's forward (Inception, LPIPS-VGG): on CPU, XLA's own (Eigen) convolutions
    instead of YNNPACK's fusions, which ran Inception 1.5x and LPIPS 1.2-1.4x slower on 2 cores (BENCHMARKS.md)."""
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}


class BasicConv2d(nnx.Module):
    """Conv (no bias) -> BatchNorm(eps 1e-3, running stats) -> ReLU, as torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel_size: int | Sequence[int], *, stride: int = 1,
                 padding: int | Sequence[int] = 0, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        ph, pw = _pair(padding)
        self.conv = nnx.Conv(
            cin, cout, _pair(kernel_size), strides=stride, padding=((ph, ph), (pw, pw)), use_bias=False,
            dtype=dtype, param_dtype=jnp.float32,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, axes.CONV_IN, axes.CONV_OUT)),
            rngs=rngs)
        self.bn = nnx.BatchNorm(
            cout, use_running_average=True, epsilon=_BN_EPS, dtype=dtype, param_dtype=jnp.float32,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axes.NORM,)),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes.NORM,)), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, Cin] -> [B, H', W', Cout]
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""

    def __init__(self, cin: int, pool_features: int, *, fid: bool = False, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 64, 1, **kw)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, **kw)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, **kw)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, 35, 35, Cin] -> [B, 35, 35, 224 + pool_features]
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool(x, 3, 1, 1, count_include_pad=not self.fid))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2."""

    def __init__(self, cin: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, 35, 35, Cin] -> [B, 17, 17, 480 + Cin]
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nnx.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 / 7x1)."""

    def __init__(self, cin: int, c7: int, *, fid: bool = False, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 192, 1, **kw)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, **kw)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, **kw)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), **kw)
        self.branch_pool = BasicConv2d(cin, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, 17, 17, Cin] -> [B, 17, 17, 768]
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(avg_pool(x, 3, 1, 1, count_include_pad=not self.fid))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Grid reduction 17 -> 8: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2."""

    def __init__(self, cin: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, **kw)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, **kw)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, **kw)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), **kw)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, 17, 17, 768] -> [B, 8, 8, 1280]
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nnx.Module):
    """8x8 block with expanded 1x3/3x1 filter banks. `pool`: "avg" (torchvision), "avg_valid" / "max" (TF-FID)."""

    def __init__(self, cin: int, *, pool: str = "avg", dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if pool not in ("avg", "avg_valid", "max"):
            raise ValueError(f"InceptionE pool must be 'avg', 'avg_valid' or 'max', got {pool!r}")
        kw = dict(dtype=dtype, rngs=rngs)
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, **kw)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, **kw)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, **kw)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch_pool = BasicConv2d(cin, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, 8, 8, Cin] -> [B, 8, 8, 2048]
        b1 = self.branch1x1(x)
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = max_pool(x, 3, 1, 1)
        else:
            pooled = avg_pool(x, 3, 1, 1, count_include_pad=self.pool == "avg")
        return jnp.concatenate([
            b1, self.branch3x3_2a(a), self.branch3x3_2b(a), self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled)], axis=-1)


class InceptionTrunk(nnx.Module):
    """Stem + Mixed_5b..Mixed_7c, names flat as in torchvision. `fid=True` selects the TF-FID pooling variants."""

    def __init__(self, *, fid: bool = False, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **kw)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **kw)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **kw)
        self.Mixed_5b = InceptionA(192, 32, fid=fid, **kw)
        self.Mixed_5c = InceptionA(256, 64, fid=fid, **kw)
        self.Mixed_5d = InceptionA(288, 64, fid=fid, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, 128, fid=fid, **kw)
        self.Mixed_6c = InceptionC(768, 160, fid=fid, **kw)
        self.Mixed_6d = InceptionC(768, 160, fid=fid, **kw)
        self.Mixed_6e = InceptionC(768, 192, fid=fid, **kw)
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, pool="avg_valid" if fid else "avg", **kw)
        self.Mixed_7c = InceptionE(2048, pool="max" if fid else "avg", **kw)

    def stem_to_6e(self, x: jax.Array) -> jax.Array:
        """[B, 299, 299, 3] -> [B, 17, 17, 768] (the input of the aux head and of Mixed_7a)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 147, 147, 64]
        x = max_pool(x, 3, 2)                                               # [B, 73, 73, 64]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                       # [B, 71, 71, 192]
        x = max_pool(x, 3, 2)                                               # [B, 35, 35, 192]
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        return x                                                            # [B, 17, 17, 768]

    def pool_features(self, x17: jax.Array) -> jax.Array:
        """[B, 17, 17, 768] -> [B, 2048] global-average-pooled Mixed_7c output (pool3)."""
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x17)))                # [B, 8, 8, 2048]
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))                 # [B, 2048]


def check_image_batch(x: jax.Array, name: str) -> None:
    """Raises a ValueError unless `x` is an NHWC RGB batch."""
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} expects NHWC RGB images [B, H, W, 3], got shape {tuple(x.shape)}")
