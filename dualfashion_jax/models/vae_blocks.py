"""NHWC building blocks of the diffusers-compatible AutoencoderKL: GroupNorm, conv, resnet, resampling, attention.

Parameter names mirror diffusers (`norm1`, `conv1`, `conv_shortcut`, `to_q`, ...) so the converter's key
map is a transpose, not a rename. Norm statistics and attention softmax are computed in fp32.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.sharding import axes

_CONV_AXES = (None, None, axes.CONV_IN, axes.CONV_OUT)  # [kh, kw, C_in, C_out]


class GroupNorm(nnx.Module):
    """torch-style GroupNorm over the channel axis of NHWC (stats in fp32; biased variance, like torch)."""

    def __init__(self, channels: int, groups: int, eps: float, *, dtype: Any, param_dtype: Any):
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible into {groups} groups "
                             "(VAEConfig.norm_num_groups must divide every block_out_channels entry)")
        self.groups, self.eps, self.dtype = groups, eps, dtype
        self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones, (axes.NORM,))(
            jax.random.key(0), (channels,), param_dtype))
        self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, (axes.NORM,))(
            jax.random.key(0), (channels,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H, W, C]
        b, h, w, c = x.shape
        g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)  # [B, H, W, G, C/G]
        mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def conv(c_in: int, c_out: int, k: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs,
         stride: int = 1, padding: Any = "SAME_TORCH") -> nnx.Conv:
    """k x k conv; "SAME_TORCH" pads k//2 on every side (torch `padding=k//2`)."""
    if padding == "SAME_TORCH":
        padding = ((k // 2, k // 2), (k // 2, k // 2))
    return nnx.Conv(c_in, c_out, (k, k), strides=(stride, stride), padding=padding, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs,
                    kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), _CONV_AXES),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes.CONV_OUT,)))


class ResnetBlock2D(nnx.Module):
    """diffusers ResnetBlock2D without time embedding: GN-SiLU-conv twice, 1x1 shortcut when widths differ."""

    def __init__(self, c_in: int, c_out: int, groups: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.norm1 = GroupNorm(c_in, groups, 1e-6, **kw)
        self.conv1 = conv(c_in, c_out, 3, rngs=rngs, **kw)
        self.norm2 = GroupNorm(c_out, groups, 1e-6, **kw)
        self.conv2 = conv(c_out, c_out, 3, rngs=rngs, **kw)
        self.conv_shortcut = conv(c_in, c_out, 1, rngs=rngs, **kw) if c_in != c_out else None

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, Ci] -> [B, H, W, Co]
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return skip + h


class Downsample2D(nnx.Module):
    """Pads right/bottom by one pixel, then a stride-2 3x3 conv with no padding (diffusers encoder)."""

    def __init__(self, c: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.conv = conv(c, c, 3, stride=2, padding="VALID", dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H/2, W/2, C]
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample2D(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        self.conv = conv(c, c, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, 2H, 2W, C]
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _dense(c: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    # a 1x1-conv-like channel mix: same logical names as conv channels
    return nnx.Linear(c, c, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                        (axes.CONV_IN, axes.CONV_OUT)),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes.CONV_OUT,)))


class SpatialAttention(nnx.Module):
    """Mid-block self-attention over all H*W positions: GroupNorm, one head of width C, residual."""

    def __init__(self, c: int, groups: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.group_norm = GroupNorm(c, groups, 1e-6, **kw)
        self.to_q = _dense(c, rngs=rngs, **kw)
        self.to_k = _dense(c, rngs=rngs, **kw)
        self.to_v = _dense(c, rngs=rngs, **kw)
        self.to_out = _dense(c, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H, W, C]
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, 1, c)  # [B, T, 1 head, C]
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        # XLA path: logits and softmax in fp32, scale 1/sqrt(C)
        o = jax.nn.dot_product_attention(q, k, v).reshape(b, h, w, c)
        return x + self.to_out(o)


class MidBlock(nnx.Module):
    """resnet -> (attention) -> resnet at the lowest resolution (diffusers UNetMidBlock2D, no temb)."""

    def __init__(self, c: int, groups: int, add_attention: bool, *, dtype: Any, param_dtype: Any,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResnetBlock2D(c, c, groups, **kw), ResnetBlock2D(c, c, groups, **kw)])
        self.attentions = nnx.List([SpatialAttention(c, groups, **kw)] if add_attention else [])

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H, W, C]
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nnx.Module):
    """`n` resnets, then an optional Downsample2D (absent in the last encoder block)."""

    def __init__(self, c_in: int, c_out: int, n: int, groups: int, add_downsample: bool, *, dtype: Any,
                 param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResnetBlock2D(c_in if i == 0 else c_out, c_out, groups, **kw) for i in range(n)])
        self.downsamplers = nnx.List([Downsample2D(c_out, **kw)] if add_downsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, Ci] -> [B, H/2 (or H), W/2 (or W), Co]
        for r in self.resnets:
            x = r(x)
        for d in self.downsamplers:
            x = d(x)
        return x


class UpDecoderBlock2D(nnx.Module):
    """`n` resnets (layers_per_block + 1), then an optional nearest Upsample2D (absent in the last block)."""

    def __init__(self, c_in: int, c_out: int, n: int, groups: int, add_upsample: bool, *, dtype: Any,
                 param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResnetBlock2D(c_in if i == 0 else c_out, c_out, groups, **kw) for i in range(n)])
        self.upsamplers = nnx.List([Upsample2D(c_out, **kw)] if add_upsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, Ci] -> [B, 2H (or H), 2W (or W), Co]
        for r in self.resnets:
            x = r(x)
        for u in self.upsamplers:
            x = u(x)
        return x
