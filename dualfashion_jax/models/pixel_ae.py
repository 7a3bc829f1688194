"""`PixelAutoencoder`: the offline demo's stand-in for SD3's VAE -- an exactly invertible space-to-depth pixel
autoencoder with the `AutoencoderKL` interface (encode -> DiagonalGaussian, decode, cfg shift/scale, 16 channels).

Why: the demo cannot download SD3's VAE and a random conv VAE would hide the images behind noise. Here
images [B, S, S, 3] in [-1, 1] are folded factor x factor into channels ([B, S/f, S/f, f*f*3]) and mapped by
a fixed, seeded matrix W [f*f*3, latent_channels] with orthonormal ROWS (W W^T = I) into 16 channels, so
decode(encode(x).mode()) == x up to float rounding, and a generated latent decodes to its projection onto
the image subspace. The posterior is (nearly) a point mass: logvar = `posterior_logvar` (default -30).
`shift_factor`/`scaling_factor` play SD3's roles; `fit_scaling` sets them from the demo images (mean 0, std 1).
Saved like a converted VAE (kind "vae", config with architecture "pixel_s2d"); `conversion.vae.load` and
`data.encode_latents.load_vae` dispatch on that field, so encode-latents/training/generation share one path.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.models.vae import DiagonalGaussian
from dualfashion_jax.models import config_io
from dualfashion_jax.sharding import axes

ARCHITECTURE = "pixel_s2d"


@dataclasses.dataclass(frozen=True)
class PixelAEConfig:
    """Space-to-depth autoencoder settings; `downsample_factor`, shift/scale and channels as in `VAEConfig`."""

    architecture: str = ARCHITECTURE
    in_channels: int = 3
    out_channels: int = 3
    factor: int = 2                 # space-to-depth block: S x S x C -> S/f x S/f x f*f*C
    latent_channels: int = 16
    sample_size: int = 32
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    posterior_logvar: float = -30.0  # the (constant) posterior log-variance: a near point mass
    seed: int = 0                   # seed of the orthonormal projection
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"PixelAEConfig.architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if self.in_channels != self.out_channels:
            raise ValueError(f"PixelAEConfig: in_channels ({self.in_channels}) must equal out_channels "
                             f"({self.out_channels}) for an invertible autoencoder")
        if self.factor < 1 or self.factor * self.factor * self.in_channels > self.latent_channels:
            raise ValueError(f"PixelAEConfig: factor={self.factor} gives {self.factor ** 2 * self.in_channels} "
                             f"channels per latent pixel, more than latent_channels={self.latent_channels} "
                             "(not invertible); use a smaller factor or more latent channels")
        if self.scaling_factor == 0:
            raise ValueError("PixelAEConfig.scaling_factor must be non-zero")
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))

    @property
    def downsample_factor(self) -> int:
        return self.factor

    @property
    def pixel_channels(self) -> int:
        """Channels after space-to-depth, f*f*C."""
        return self.factor * self.factor * self.in_channels

    def to_dict(self) -> dict:
        """JSON-safe dict (dtypes as names) for the converted-VAE config file."""
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> "PixelAEConfig":
        """Inverse of `to_dict`; unknown fields are an error naming `source`."""
        return config_io.from_dict(cls, d, source=source)


def is_pixel_config(d: dict | None) -> bool:
    """True when a saved VAE config dict describes a `PixelAutoencoder` (its `architecture` field)."""
    return isinstance(d, dict) and d.get("architecture") == ARCHITECTURE


def orthonormal_rows(n_in: int, n_out: int, seed: int) -> np.ndarray:
    """Seeded W [n_in, n_out], n_in <= n_out, with W @ W.T = I (QR of a Gaussian matrix, signs fixed)."""
    g = np.random.default_rng(seed).standard_normal((n_out, n_in))
    q, r = np.linalg.qr(g)  # q [n_out, n_in], orthonormal columns
    q = q * np.sign(np.diag(r))[None, :]
    return np.ascontiguousarray(q.T).astype(np.float32)


def space_to_depth(x: jax.Array, f: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/f, W/f, f*f*C] (row-major within each f x f block)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // f, f, w // f, f, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // f, w // f, f * f * c)


def depth_to_space(x: jax.Array, f: int) -> jax.Array:
    """Inverse of `space_to_depth`: [B, h, w, f*f*C] -> [B, h*f, w*f, C]."""
    b, h, w, d = x.shape
    c = d // (f * f)
    x = x.reshape(b, h, w, f, f, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * f, w * f, c)


class PixelAutoencoder(nnx.Module):
    """`encode(images [-1, 1] NHWC) -> DiagonalGaussian`, `decode(z unscaled) -> images`: exactly invertible."""

    def __init__(self, cfg: PixelAEConfig, *, rngs: nnx.Rngs | None = None):
        del rngs  # deterministic: the projection comes from cfg.seed (the argument keeps AutoencoderKL's signature)
        self.cfg = cfg
        w = orthonormal_rows(cfg.pixel_channels, cfg.latent_channels, cfg.seed)
        # [f*f*C, C_lat]; frozen like every demo encoder, kept a Param so it saves/loads as a converted VAE
        init = lambda key, shape, dtype: jnp.asarray(w, dtype)  # noqa: E731  (a constant initializer)
        self.proj = nnx.Param(nnx.with_partitioning(init, (axes.CONV_IN, axes.CONV_OUT))(
            None, w.shape, cfg.param_dtype))

    def encode(self, images: jax.Array) -> DiagonalGaussian:
        """images [B, H, W, C_in] in [-1, 1] (H, W multiples of factor) -> posterior over [B, H/f, W/f, C_lat]."""
        _check(images, self.cfg.in_channels, self.cfg.factor, "PixelAutoencoder.encode: images")
        x = space_to_depth(images.astype(self.cfg.dtype), self.cfg.factor)  # [B, h, w, f*f*C]
        mean = jnp.einsum("bhwd,dc->bhwc", x, self.proj[...].astype(self.cfg.dtype)).astype(jnp.float32)
        return DiagonalGaussian(mean=mean, logvar=jnp.full_like(mean, self.cfg.posterior_logvar))

    def decode(self, z: jax.Array) -> jax.Array:
        """z [B, h, w, C_lat] raw latents -> images [B, h*f, w*f, C_out] (projection onto the image subspace)."""
        _check(z, self.cfg.latent_channels, 1, "PixelAutoencoder.decode: latents")
        x = jnp.einsum("bhwc,dc->bhwd", z.astype(self.cfg.dtype), self.proj[...].astype(self.cfg.dtype))
        return depth_to_space(x, self.cfg.factor)  # [B, H, W, C]

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruction: encode, sample (or the mean when key is None), decode."""
        post = self.encode(images)
        return self.decode(post.mode() if key is None else post.sample(key))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, dtype: Any = jnp.float32,
                        param_dtype: Any = jnp.float32) -> "PixelAutoencoder":
        return load(folder, dtype=dtype, param_dtype=param_dtype)


def _check(x: jax.Array, channels: int, multiple: int, what: str) -> None:
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[-1] != channels:
        hint = " (looks NCHW: transpose to NHWC)" if len(shape) == 4 and shape[1] == channels else ""
        raise ValueError(f"{what}: expected NHWC [B, H, W, {channels}], got shape {shape}{hint}")
    if shape[1] % multiple or shape[2] % multiple:
        raise ValueError(f"{what}: H, W = {shape[1:3]} must be multiples of {multiple} (the space-to-depth factor)")


def fit_scaling(cfg: PixelAEConfig, images_uint8: np.ndarray) -> PixelAEConfig:
    """cfg with shift/scale such that the model-space latents of `images_uint8` [N, S, S, 3] have mean 0, std 1."""
    if images_uint8.ndim != 4 or images_uint8.dtype != np.uint8:
        raise ValueError(f"fit_scaling: expected uint8 images [N, S, S, 3], got {images_uint8.dtype} "
                         f"{images_uint8.shape}")
    if float(images_uint8.std()) == 0.0:
        raise ValueError("fit_scaling: the images are constant; no shift/scale can be fitted")
    ae = PixelAutoencoder(dataclasses.replace(cfg, shift_factor=0.0, scaling_factor=1.0))
    z = np.asarray(ae.encode(jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0).mode())
    std = float(z.std())
    if not np.isfinite(std) or std < 1e-6:
        raise ValueError(f"fit_scaling: latents have std {std}; cannot scale them to unit variance")
    return dataclasses.replace(cfg, shift_factor=float(z.mean()), scaling_factor=1.0 / std)


def save(ae: PixelAutoencoder, out_dir: str | os.PathLike) -> None:
    """Writes `out_dir` as a converted VAE checkpoint (kind "vae", `conversion.common` format)."""
    from dualfashion_jax.conversion import common

    common.save_converted(out_dir, kind="vae", config=ae.cfg.to_dict(), params=common.flat_params(ae),
                          extra={"note": "space-to-depth pixel autoencoder (demo stand-in for the SD3 VAE)"})


def load(folder: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> PixelAutoencoder:
    """Reads a checkpoint written by `save`; the projection is checked against the config's seed."""
    import pathlib

    from dualfashion_jax.conversion import common

    meta, flat = common.load_converted(folder, kind="vae")
    src = str(pathlib.Path(folder) / "config.json")
    cfg = PixelAEConfig.from_dict({**meta["config"], "dtype": jnp.dtype(dtype or jnp.float32).name,
                                   "param_dtype": jnp.dtype(param_dtype or jnp.float32).name}, source=src)
    ae = PixelAutoencoder(cfg)
    common.validate(flat, common.abstract_params(lambda: PixelAutoencoder(cfg)), source=str(folder))
    if not np.allclose(np.asarray(flat["proj"], np.float32), np.asarray(ae.proj[...], np.float32), atol=1e-6):
        raise ValueError(f"{folder}: params/proj differs from the projection of seed {cfg.seed} in {src}")
    common.load_flat_into(ae, flat)
    return ae
