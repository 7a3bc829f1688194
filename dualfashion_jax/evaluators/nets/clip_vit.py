"""OpenCLIP image tower (ViT, e.g. ViT-H-14) in Flax NNX, NHWC, plus CLIP's eval preprocessing in JAX.

Architecture = open_clip `VisionTransformer` with default flags: patchify conv (no bias) -> [class token; patches] +
learned positional embedding -> `ln_pre` -> pre-LN residual blocks (LN -> MHA -> +, LN -> MLP(exact GELU) -> +) ->
`ln_post` on the class token -> `proj`. The residual block and the block stack are shared with the text tower.
Parameter names mirror open_clip's state dict so the converter is a rename + transpose.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.sharding import axes

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    heads: int = 16
    mlp_dim: int = 5120
    output_dim: int = 1024
    dtype: Any = jnp.float32  # compute dtype; params are fp32, LN/softmax statistics fp32

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def _normal(std: float, names: tuple):
    return nnx.with_partitioning(nnx.initializers.normal(std), names)


def _zeros(names: tuple):
    return nnx.with_partitioning(nnx.initializers.zeros_init(), names)


def _ones(names: tuple):
    return nnx.with_partitioning(nnx.initializers.ones_init(), names)


class LayerNorm(nnx.Module):
    """LayerNorm computed in fp32 (eps 1e-5), output cast to the compute dtype."""

    def __init__(self, dim: int, dtype: Any, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32,
                                  scale_init=_ones((axes.NORM,)), bias_init=_zeros((axes.NORM,)), rngs=rngs)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(x.astype(jnp.float32)).astype(self.dtype)


def _linear(din: int, dout: int, names: tuple, std: float, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32, kernel_init=_normal(std, names),
                      bias_init=_zeros((names[1],)), rngs=rngs)


class MultiheadAttention(nnx.Module):
    """torch.nn.MultiheadAttention semantics: fused in_proj [D, 3D] (q|k|v), scale 1/sqrt(head_dim), out_proj."""

    def __init__(self, width: int, heads: int, dtype: Any, *, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"CLIP attention: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj = _linear(width, 3 * width, (axes.EMBED, axes.HEADS), width ** -0.5, dtype, rngs)
        self.out_proj = _linear(width, width, (axes.HEADS, axes.EMBED), width ** -0.5, dtype, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        b, l, d = x.shape
        qkv = self.in_proj(x).reshape(b, l, 3, self.heads, d // self.heads)      # [B, L, 3, H, Dh]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]                          # [B, L, H, Dh]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits * (d // self.heads) ** -0.5                                 # [B, H, L, L] fp32
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, d)             # [B, L, D]
        return self.out_proj(out)


class MLP(nnx.Module):
    def __init__(self, width: int, hidden: int, layers: int, dtype: Any, *, rngs: nnx.Rngs):
        self.c_fc = _linear(width, hidden, (axes.EMBED, axes.MLP), (2 * width) ** -0.5, dtype, rngs)
        self.c_proj = _linear(hidden, width, (axes.MLP, axes.EMBED), width ** -0.5 * (2 * layers) ** -0.5, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=False))


class ResidualAttentionBlock(nnx.Module):
    """open_clip pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_dim: int, layers: int, dtype: Any, *, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(width, dtype, rngs=rngs)
        self.attn = MultiheadAttention(width, heads, dtype, rngs=rngs)
        self.ln_2 = LayerNorm(width, dtype, rngs=rngs)
        self.mlp = MLP(width, mlp_dim, layers, dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """A stack of `layers` residual blocks (`resblocks`, as in open_clip)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_dim: int, dtype: Any, *, rngs: nnx.Rngs):
        self.resblocks = nnx.List([ResidualAttentionBlock(width, heads, mlp_dim, layers, dtype, rngs=rngs)
                                   for _ in range(layers)])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nnx.Module):
    """`model(pixels)`: CLIP-normalised pixels [B, S, S, 3] -> UNnormalised image embeddings [B, output_dim] (fp32)."""

    def __init__(self, config: CLIPVisionConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        if c.image_size % c.patch_size:
            raise ValueError(f"CLIPVisionConfig: image_size {c.image_size} is not a multiple of patch_size {c.patch_size}")
        scale = c.width ** -0.5
        self.conv1 = nnx.Conv(3, c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                              padding="VALID", use_bias=False, dtype=c.dtype, param_dtype=jnp.float32,
                              kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                                (None, None, axes.CONV_IN, axes.EMBED)), rngs=rngs)
        key = rngs.params()
        k1, k2, k3 = jax.random.split(key, 3)
        self.class_embedding = nnx.Param(scale * jax.random.normal(k1, (c.width,)), out_sharding=(axes.EMBED,))
        self.positional_embedding = nnx.Param(scale * jax.random.normal(k2, (c.grid * c.grid + 1, c.width)),
                                              out_sharding=(None, axes.EMBED))
        self.ln_pre = LayerNorm(c.width, c.dtype, rngs=rngs)
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_dim, c.dtype, rngs=rngs)
        self.ln_post = LayerNorm(c.width, c.dtype, rngs=rngs)
        self.proj = nnx.Param(scale * jax.random.normal(k3, (c.width, c.output_dim)), out_sharding=(axes.EMBED, None))

    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        if pixels.ndim != 4 or pixels.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(f"VisionTransformer: expected pixels [B, {c.image_size}, {c.image_size}, 3] (NHWC, "
                             f"CLIP-normalised; use clip_vit.preprocess), got {tuple(pixels.shape)}")
        b = pixels.shape[0]
        x = self.conv1(pixels.astype(c.dtype)).reshape(b, c.grid * c.grid, c.width)   # [B, N, D]
        cls = jnp.broadcast_to(self.class_embedding[...].astype(c.dtype), (b, 1, c.width))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(c.dtype)  # [B, N+1, D]
        x = self.transformer(self.ln_pre(x))
        pooled = self.ln_post(x[:, 0])                                                  # [B, D]
        return jnp.dot(pooled.astype(jnp.float32), self.proj[...])                     # [B, E] fp32


def preprocess(images: jax.Array, image_size: int = 224) -> jax.Array:
    """uint8 (or [0,1] float) NHWC images -> CLIP eval view [B, S, S, 3]: resize shorter side to S (bicubic),
    centre crop S x S, normalise by CLIP mean/std. Matches open_clip's eval transform up to the resampling kernel
    (PIL's antialiased bicubic vs jax.image's Keys cubic with antialias on downscale)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"clip preprocess: expected images [B, H, W, 3] NHWC, got {tuple(images.shape)}")
    x = images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.integer):
        x = x / 255.0
    b, h, w, _ = x.shape
    # torchvision Resize(int): short side -> S, long side -> int(S * long / short); CenterCrop rounds the offset.
    if h <= w:
        nh, nw = image_size, int(image_size * w / h)
    else:
        nh, nw = int(image_size * h / w), image_size
    if (nh, nw) != (h, w):
        x = jax.image.resize(x, (b, nh, nw, 3), method="bicubic", antialias=True)
    top, left = int(round((nh - image_size) / 2.0)), int(round((nw - image_size) / 2.0))
    x = jnp.clip(x[:, top:top + image_size, left:left + image_size], 0.0, 1.0)
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
