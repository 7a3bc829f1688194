"""SD3's 16-channel AutoencoderKL in Flax NNX (NHWC), numerically matching diffusers' `AutoencoderKL` (spec §1.4).

Images in [-1, 1] -> `DiagonalGaussian` posterior over unscaled latents (x8 smaller); latents -> images.
SD3 has no quant/post-quant 1x1 convs; `use_quant_conv`/`use_post_quant_conv` add them for SD1/2-style
VAEs. The model-space latent scaling lives in ONE helper pair: `to_model_latents` / `from_model_latents`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from dualfashion_jax.models import config_io, vae_blocks as vb
from dualfashion_jax.sharding import activations as act


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL hyper-parameters (names follow diffusers' config.json)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 16
    norm_num_groups: int = 32
    sample_size: int = 1024
    scaling_factor: float = 1.5305
    shift_factor: float = 0.0609
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32        # compute dtype; params are param_dtype
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(f"VAEConfig.block_out_channels: expected positive widths, got {self.block_out_channels}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"VAEConfig.norm_num_groups={self.norm_num_groups} does not divide block widths {bad}")
        if self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError(f"VAEConfig: layers_per_block ({self.layers_per_block}) and latent_channels "
                             f"({self.latent_channels}) must be >= 1")
        if self.scaling_factor == 0:
            raise ValueError("VAEConfig.scaling_factor must be non-zero")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict:
        """JSON-safe dict (dtypes as names) for converted-checkpoint config files."""
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> "VAEConfig":
        """Inverse of `to_dict`; unknown fields are an error naming `source`."""
        return config_io.from_dict(cls, d, source=source)


_PRESETS = {
    "sd3": dict(),  # dataclass defaults = stabilityai/stable-diffusion-3-medium-diffusers/vae
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, sample_size=32),
}


def get_config(name: str, **overrides) -> VAEConfig:
    """Preset `sd3` (the real SD3 VAE shape) or `tiny` (tests: widths [32, 64], 8 norm groups, 16 latent ch)."""
    if name not in _PRESETS:
        raise ValueError(f"VAE config preset {name!r} unknown; expected one of {sorted(_PRESETS)}")
    return VAEConfig(**{**_PRESETS[name], **overrides})


def to_model_latents(z: jax.Array, cfg: VAEConfig) -> jax.Array:
    """Raw VAE latents -> the MMDiT's latent space: (z - shift) * scale."""
    return (z - cfg.shift_factor) * cfg.scaling_factor


def from_model_latents(z: jax.Array, cfg: VAEConfig) -> jax.Array:
    """Inverse of `to_model_latents`: z / scale + shift."""
    return z / cfg.scaling_factor + cfg.shift_factor


@struct.dataclass
class DiagonalGaussian:
    """VAE posterior N(mean, exp(logvar)) over NHWC latents; logvar already clipped to [-30, 20] (fp32)."""

    mean: jax.Array    # [B, h, w, C_lat]
    logvar: jax.Array  # [B, h, w, C_lat]

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """Splits encoder output [B, h, w, 2 C_lat] into mean | logvar along channels (diffusers' chunk)."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """mean + std * eps, eps ~ N(0, I) from `key`."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean


class Encoder(nnx.Module):
    """conv_in -> down blocks -> mid block -> GroupNorm, SiLU -> conv_out to 2 * latent_channels."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = vb.conv(cfg.in_channels, ch[0], 3, **kw)
        self.down_blocks = nnx.List([
            vb.DownEncoderBlock2D(ch[max(i - 1, 0)], c, cfg.layers_per_block, g, i < len(ch) - 1, **kw)
            for i, c in enumerate(ch)])
        self.mid_block = vb.MidBlock(ch[-1], g, cfg.mid_block_add_attention, **kw)
        self.conv_norm_out = vb.GroupNorm(ch[-1], g, 1e-6, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.conv_out = vb.conv(ch[-1], 2 * cfg.latent_channels, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C_in] -> [B, H/f, W/f, 2 C_lat]
        x = act.constrain_batch_all(self.conv_in(act.constrain_batch_all(x)))  # block boundaries: batch over every mesh axis
        for block in self.down_blocks:
            x = act.constrain_batch_all(block(x))
        x = act.constrain_batch_all(self.mid_block(x))
        return act.constrain_batch_all(self.conv_out(jax.nn.silu(self.conv_norm_out(x))))


class Decoder(nnx.Module):
    """conv_in -> mid block -> up blocks (widths reversed) -> GroupNorm, SiLU -> conv_out."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        rev, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = vb.conv(cfg.latent_channels, rev[0], 3, **kw)
        self.mid_block = vb.MidBlock(rev[0], g, cfg.mid_block_add_attention, **kw)
        self.up_blocks = nnx.List([
            vb.UpDecoderBlock2D(rev[max(i - 1, 0)], c, cfg.layers_per_block + 1, g, i < len(rev) - 1, **kw)
            for i, c in enumerate(rev)])
        self.conv_norm_out = vb.GroupNorm(rev[-1], g, 1e-6, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.conv_out = vb.conv(rev[-1], cfg.out_channels, 3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:  # [B, h, w, C_lat] -> [B, h*f, w*f, C_out]
        x = act.constrain_batch_all(self.mid_block(self.conv_in(act.constrain_batch_all(z))))
        for block in self.up_blocks:
            x = act.constrain_batch_all(block(x))
        return act.constrain_batch_all(self.conv_out(jax.nn.silu(self.conv_norm_out(x))))


class AutoencoderKL(nnx.Module):
    """KL autoencoder: `encode(images [-1, 1] NHWC) -> DiagonalGaussian`, `decode(z unscaled) -> images`."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        lat = cfg.latent_channels
        self.quant_conv = vb.conv(2 * lat, 2 * lat, 1, **kw) if cfg.use_quant_conv else None
        self.post_quant_conv = vb.conv(lat, lat, 1, **kw) if cfg.use_post_quant_conv else None

    def encode(self, images: jax.Array) -> DiagonalGaussian:
        """images [B, H, W, C_in] in [-1, 1] (H, W multiples of the x8 factor) -> posterior over [B, H/8, W/8, C]."""
        check_nhwc(images, self.cfg.in_channels, self.cfg.downsample_factor, "AutoencoderKL.encode: images")
        moments = self.encoder(images.astype(self.cfg.dtype))  # [B, h, w, 2 C_lat]
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: jax.Array) -> jax.Array:
        """z [B, h, w, C_lat] raw (unscaled) latents -> images [B, 8h, 8w, C_out] in ~[-1, 1] (compute dtype)."""
        check_nhwc(z, self.cfg.latent_channels, 1, "AutoencoderKL.decode: latents")
        z = z.astype(self.cfg.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruction: encode, sample (or the mean when key is None), decode."""
        post = self.encode(images)
        return self.decode(post.mode() if key is None else post.sample(key))


def check_nhwc(x: jax.Array, channels: int, multiple: int, what: str, why: str = "the VAE's downsampling") -> None:
    """ValueError naming `what` unless x is [B, H, W, channels] with H, W multiples of `multiple` (`why`)."""
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[-1] != channels:
        hint = " (looks NCHW: transpose to NHWC)" if len(shape) == 4 and shape[1] == channels else ""
        raise ValueError(f"{what}: expected NHWC [B, H, W, {channels}], got shape {shape}{hint}")
    if shape[1] % multiple or shape[2] % multiple:
        raise ValueError(f"{what}: H, W = {shape[1:3]} must be multiples of {multiple} ({why})")


def decode_latents(ae: AutoencoderKL, z: jax.Array) -> jax.Array:
    """Model-space latents [B, h, w, C_lat] -> images NHWC float32 in [0, 1] (clamped; spec §1.4)."""
    x = ae.decode(from_model_latents(z, ae.cfg)).astype(jnp.float32)
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def to_uint8(images01: jax.Array) -> np.ndarray:
    """[0, 1] float images -> uint8 for saving PNGs, rounded like diffusers' `numpy_to_pil`."""
    return np.asarray(jnp.clip(jnp.round(images01 * 255.0), 0, 255)).astype(np.uint8)
