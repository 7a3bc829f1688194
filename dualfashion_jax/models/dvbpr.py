"""DVBPR (Kang et al. 2017): a Siamese CNN item encoder Phi and user vectors theta_u, score(u, i) = theta_u . Phi(x_i).

The same CNN embeds the positive and the negative item of a BPR triple (hence "Siamese"). It runs on item images
in [-1, 1] ([B, S, S, 3]) or on VAE latents ([B, h, w, C]); which one is a config choice (`in_channels`). A
scaled-down CNN-F: `len(channels)` 3x3 conv stages (stride 2 while the map is larger than 2x2, ReLU), a global
mean pool, one ReLU hidden layer and a linear map to the K-dim item embedding (DVBPR's K = 100 at full scale).
A conv whose 3x3 kernel is larger than its input map (the last stage on a 2x2 map) runs as one matmul over the
shifted views (`small_map_conv`): XLA:CPU swaps the operands of such a conv into a slow generic loop (7x slower).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.models import config_io
from dualfashion_jax.models.vae_blocks import conv
from dualfashion_jax.sharding import axes

INPUT_KINDS = ("image", "latent")


@dataclasses.dataclass(frozen=True)
class DVBPRConfig:
    """num_users rows of theta; input_kind "image" ([-1, 1] RGB) or "latent" (model-space VAE latents);
    in_channels 3 or the latent channels; input_size = H = W."""

    num_users: int
    input_kind: str = "image"
    in_channels: int = 3
    input_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    hidden: int = 256
    embed_dim: int = 64
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("num_users", "in_channels", "input_size", "hidden", "embed_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"DVBPRConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.channels or any(int(c) <= 0 for c in self.channels):
            raise ValueError(f"DVBPRConfig.channels must be non-empty positive widths, got {self.channels}")
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"DVBPRConfig.input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (saved as <workdir>/model_config.json)."""
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "DVBPRConfig":
        """Inverse of `to_dict`; unknown keys are an error naming `source`."""
        return config_io.from_dict(cls, d, source=source)

    def strides(self) -> tuple[int, ...]:
        """Stride of each conv stage: 2 while the feature map is larger than 2x2, then 1."""
        out, size = [], int(self.input_size)
        for _ in self.channels:
            s = 2 if size > 2 else 1
            out.append(s)
            size = -(-size // s)
        return tuple(out)


def _dense(c_in: int, c_out: int, names: tuple[str | None, str | None], cfg: DVBPRConfig,
           rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(c_in, c_out, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
                      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), names),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros, (names[1],)))


def small_map_conv(x: jax.Array, c: nnx.Conv, stride: int) -> jax.Array:
    """`c(x)` for a SAME_TORCH-padded k x k conv, as the k*k shifted views of x concatenated and one matmul.

    For maps smaller than the kernel, where XLA:CPU's convolution takes a slow path; same values as `c(x)`."""
    kh, kw, c_in, c_out = c.kernel.shape
    _, h, w, _ = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    views = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
             for i in range(kh) for j in range(kw)]  # k*k x [B, Ho, Wo, Ci], (i, j) row-major like the kernel
    cols = jnp.concatenate(views, axis=-1).astype(c.dtype)  # [B, Ho, Wo, kh*kw*Ci]
    kernel = c.kernel[...].astype(c.dtype).reshape(kh * kw * c_in, c_out)
    return cols @ kernel + c.bias[...].astype(c.dtype)  # [B, Ho, Wo, Co]


class ItemEncoder(nnx.Module):
    """Phi: [B, H, W, C] item visuals -> [B, K] embeddings (fp32 out)."""

    def __init__(self, cfg: DVBPRConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        widths = (cfg.in_channels, *cfg.channels)
        self.convs = nnx.List([conv(a, b, 3, stride=s, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
                               for a, b, s in zip(widths[:-1], widths[1:], cfg.strides())])
        self.fc1 = _dense(cfg.channels[-1], cfg.hidden, (axes.CONV_OUT, axes.MLP), cfg, rngs)
        self.fc2 = _dense(cfg.hidden, cfg.embed_dim, (axes.MLP, axes.EMBED), cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"DVBPR item encoder: expected [B, H, W, {self.cfg.in_channels}] NHWC, got {x.shape}")
        h = x.astype(self.cfg.dtype)
        for c, s in zip(self.convs, self.cfg.strides()):
            small = h.shape[1] < c.kernel.shape[0] or h.shape[2] < c.kernel.shape[1]
            h = jax.nn.relu(small_map_conv(h, c, s) if small else c(h))  # [B, H/2^k, W/2^k, C_k]
        h = jnp.mean(h.astype(jnp.float32), axis=(1, 2)).astype(self.cfg.dtype)  # [B, C_last]
        h = jax.nn.relu(self.fc1(h))  # [B, hidden]
        return self.fc2(h).astype(jnp.float32)  # [B, K]


class DVBPR(nnx.Module):
    """theta [U, K] user vectors + the item encoder; `score(uids, x)` = <theta_u, Phi(x)>."""

    def __init__(self, cfg: DVBPRConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.with_partitioning(nnx.initializers.normal(0.01), (None, axes.EMBED))
        self.theta = nnx.Param(init(rngs.params(), (cfg.num_users, cfg.embed_dim), cfg.param_dtype))
        self.encoder = ItemEncoder(cfg, rngs=rngs)

    def users(self, uids: jax.Array) -> jax.Array:
        """[B] int user ids -> [B, K] fp32 user vectors."""
        return jnp.take(self.theta[...], uids, axis=0).astype(jnp.float32)

    def score(self, uids: jax.Array, x: jax.Array) -> jax.Array:
        """[B] uids, [B, H, W, C] visuals -> [B] preference scores."""
        return jnp.sum(self.users(uids) * self.encoder(x), axis=-1)

    def __call__(self, uids: jax.Array, pos: jax.Array, neg: jax.Array) -> tuple[jax.Array, jax.Array]:
        """BPR triple: (score(u, pos), score(u, neg)), both [B]; one encoder pass over the stacked items."""
        emb = self.encoder(jnp.concatenate([pos, neg], axis=0))  # [2B, K]
        e_pos, e_neg = jnp.split(emb, 2, axis=0)
        th = self.users(uids)  # [B, K]
        return jnp.sum(th * e_pos, -1), jnp.sum(th * e_neg, -1)
