"""`PixelAutoencoder`: the offline demo's stand-in for SD3's VAE -- a linear space-to-depth pixel autoencoder
with the `AutoencoderKL` interface (encode -> DiagonalGaussian, decode, cfg shift/scale, 16 channels).

Why: the demo cannot download SD3's VAE and a random conv VAE would hide the images behind noise. Here
images [B, S, S, 3] in [-1, 1] are folded factor x factor into channels ([B, S/f, S/f, f*f*3] = d) and mapped by
a matrix W [d, latent_channels]: encode z = x W, decode x = z W^T. Two bases:
  "orthonormal" (d <= 16, e.g. f = 2): a fixed, seeded W with orthonormal ROWS (W W^T = I), so
      decode(encode(x).mode()) == x up to float rounding (a generated latent decodes to its projection);
  "pca" (d >= 16, e.g. f = 4): whitened PCA, the best rank-16 linear autoencoder of the data (`fit_pca`):
      W = V diag(1/s), V the top-16 right singular vectors of the images' f x f blocks, s the std of each
      coefficient, so every latent channel has unit variance; decode applies the pseudo-inverse diag(s) V^T.
      On the demo images at f = 4 it keeps 99.3 % of the variance and the oracle decodes the same
      category/colour/material from the reconstructions. Each latent pixel carries 16 numbers, not 64, which
      a 64-wide demo MMDiT can denoise at patch size 1, and a generator's error in a minor component is
      scaled down by that component's small s when decoded.
  "pca_unwhitened": the same top-16 directions without the whitening, W = V (orthonormal columns): a latent
      channel keeps its component's pixel energy, so the flow loss weighs an error as the decoded image does
      and the noise drowns the fine components before the block means (coarse-to-fine, as in pixel space).
Optional learned decoder head (`refiner_width` > 0): `models/pixel_refiner.PixelRefiner` corrects the linear
decode from the latent (fitted by `training/pixel_refiner.py`; an untrained one is the identity), as SD3's conv
decoder maps a latent near the data onto a plausible image. Encode stays linear.
The posterior is (nearly) a point mass: logvar = `posterior_logvar` (default -30).
`shift_factor`/`scaling_factor` play SD3's roles; `fit_scaling` sets them from the demo images (mean 0, std 1).
Saved like a converted VAE (kind "vae", config with architecture "pixel_s2d"); `modeling.vae` (the one VAE loader)
dispatches on that field, so encode-latents/training/generation share one path.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.core import converted, params as core_params
from dualfashion_jax.models import config_io
from dualfashion_jax.models.pixel_refiner import PixelRefiner
from dualfashion_jax.models.vae import DiagonalGaussian, check_nhwc, to_model_latents
from dualfashion_jax.sharding import axes

ARCHITECTURE = "pixel_s2d"
BASES = ("orthonormal", "pca", "pca_unwhitened")
FITTED_BASES = ("pca", "pca_unwhitened")  # fitted to the images by `fit_pca`


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
    basis: str = "orthonormal"      # "orthonormal" (seeded, exact; f*f*C <= latent_channels) | FITTED_BASES
    refiner_width: int = 0          # learned decoder head (`PixelRefiner`) channels; 0 = the linear decoder only
    refiner_depth: int = 0          # its residual 3x3 convs
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"PixelAEConfig.architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if self.in_channels != self.out_channels:
            raise ValueError(f"PixelAEConfig: in_channels ({self.in_channels}) must equal out_channels "
                             f"({self.out_channels}) for an invertible autoencoder")
        if self.basis not in BASES:
            raise ValueError(f"PixelAEConfig.basis must be one of {BASES}, got {self.basis!r}")
        d = self.factor * self.factor * self.in_channels
        if self.factor < 1 or (self.basis == "orthonormal" and d > self.latent_channels):
            raise ValueError(f"PixelAEConfig: factor={self.factor} gives {d} channels per latent pixel, more than "
                             f"latent_channels={self.latent_channels} (not invertible); use a smaller factor, more "
                             "latent channels, or basis='pca' (a fitted lossy projection)")
        if self.basis in FITTED_BASES and d < self.latent_channels:
            raise ValueError(f"PixelAEConfig: basis={self.basis!r} needs factor^2 * in_channels = {d} >= latent_channels="
                             f"{self.latent_channels}; use basis='orthonormal' (exact) for this factor")
        if self.scaling_factor == 0:
            raise ValueError("PixelAEConfig.scaling_factor must be non-zero")
        if self.refiner_width < 0 or self.refiner_depth < 0 or (self.refiner_depth and not self.refiner_width):
            raise ValueError(f"PixelAEConfig: refiner_width={self.refiner_width}, refiner_depth={self.refiner_depth}: "
                             "expected refiner_width > 0 with refiner_depth >= 0, or both 0 (no refiner)")
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


def fit_pca(cfg: PixelAEConfig, images_uint8: np.ndarray) -> np.ndarray:
    """W [f*f*C, latent_channels] = V diag(1/s): the top right singular vectors V of the images' (uncentred)
    f x f blocks, each divided by the std s of its coefficient over the blocks (whitening); W = V for
    basis "pca_unwhitened".

    Uncentred because encode/decode have no bias: x V V^T is then the best rank-C reconstruction of the blocks.
    Column signs are fixed (largest entry positive), so the basis is a deterministic function of the images.
    """
    _check_uint8(images_uint8, "fit_pca")
    x = space_to_depth(jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0, cfg.factor)
    blocks = np.asarray(x, np.float64).reshape(-1, cfg.pixel_channels)  # [N*h*w, d]
    _, _, vt = np.linalg.svd(blocks, full_matrices=False)
    w = vt[: cfg.latent_channels].T  # [d, C]
    w = w * np.sign(w[np.abs(w).argmax(0), np.arange(w.shape[1])])[None, :]
    if cfg.basis == "pca_unwhitened":
        return np.ascontiguousarray(w).astype(np.float32)
    std = np.maximum((blocks @ w).std(0), 1e-3)  # [C] (a constant direction keeps a finite scale)
    return np.ascontiguousarray(w / std[None, :]).astype(np.float32)


def _decode_matrix(w: jax.Array, basis: str) -> jax.Array:
    """The [f*f*C, C_lat] matrix decode multiplies by: W itself (orthonormal rows: W^T is the inverse on the image
    subspace) or W's pseudo-inverse for orthogonal columns, W diag(1/|w_k|^2) ("pca": V diag(s))."""
    return w if basis == "orthonormal" else w / jnp.sum(w * w, axis=0, keepdims=True)


class PixelAutoencoder(nnx.Module):
    """`encode(images [-1, 1] NHWC) -> DiagonalGaussian`, `decode(z unscaled) -> images` (linear, + the refiner if
    the config has one; see module doc).

    `proj` is the basis W [f*f*C, latent_channels]: required for the FITTED_BASES (from `fit_pca`, or the loader's
    placeholder before the checkpoint's values are copied in); for "orthonormal" it is built from cfg.seed.
    """

    def __init__(self, cfg: PixelAEConfig, *, proj: np.ndarray | None = None, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        want = (cfg.pixel_channels, cfg.latent_channels)
        if cfg.basis == "orthonormal":
            if proj is not None:
                raise ValueError("PixelAutoencoder: basis 'orthonormal' is built from cfg.seed; do not pass proj")
            w = orthonormal_rows(cfg.pixel_channels, cfg.latent_channels, cfg.seed)
        elif proj is None or tuple(np.shape(proj)) != want:
            raise ValueError(f"PixelAutoencoder: basis {cfg.basis!r} needs proj of shape {list(want)} (from fit_pca), got "
                             f"{None if proj is None else list(np.shape(proj))}")
        else:
            w = np.asarray(proj, np.float32)
        # [f*f*C, C_lat]; frozen like every demo encoder, kept a Param so it saves/loads as a converted VAE
        init = lambda key, shape, dtype: jnp.asarray(w, dtype)  # noqa: E731  (a constant initializer)
        self.proj = nnx.Param(nnx.with_partitioning(init, (axes.CONV_IN, axes.CONV_OUT))(
            None, w.shape, cfg.param_dtype))
        # the refiner's initial weights are seeded (its output conv is zero: the identity until fitted or loaded)
        self.refiner = PixelRefiner(cfg.latent_channels, cfg.factor, cfg.refiner_width, cfg.refiner_depth,
                                    dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                    rngs=rngs or nnx.Rngs(cfg.seed)) if cfg.refiner_width else None

    def encode(self, images: jax.Array) -> DiagonalGaussian:
        """images [B, H, W, C_in] in [-1, 1] (H, W multiples of factor) -> posterior over [B, H/f, W/f, C_lat]."""
        check_nhwc(images, self.cfg.in_channels, self.cfg.factor, "PixelAutoencoder.encode: images",
                   "the space-to-depth factor")
        x = space_to_depth(images.astype(self.cfg.dtype), self.cfg.factor)  # [B, h, w, f*f*C]
        mean = jnp.einsum("bhwd,dc->bhwc", x, self.proj[...].astype(self.cfg.dtype)).astype(jnp.float32)
        return DiagonalGaussian(mean=mean, logvar=jnp.full_like(mean, self.cfg.posterior_logvar))

    def decode_linear(self, z: jax.Array) -> jax.Array:
        """z [B, h, w, C_lat] raw latents -> images [B, h*f, w*f, C_out] (projection onto the image subspace)."""
        check_nhwc(z, self.cfg.latent_channels, 1, "PixelAutoencoder.decode: latents")
        dec = _decode_matrix(self.proj[...].astype(jnp.float32), self.cfg.basis).astype(self.cfg.dtype)
        x = jnp.einsum("bhwc,dc->bhwd", z.astype(self.cfg.dtype), dec)
        return depth_to_space(x, self.cfg.factor)  # [B, H, W, C]

    def decode(self, z: jax.Array) -> jax.Array:
        """z [B, h, w, C_lat] raw latents -> images [B, H, W, C_out]: the linear decode, corrected by the refiner
        (which reads the model-space latent, (z - shift) * scale) when the config has one."""
        x = self.decode_linear(z)
        if self.refiner is None:
            return x
        return self.refiner(x, to_model_latents(z.astype(self.cfg.dtype), self.cfg))

    def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Reconstruction: encode, sample (or the mean when key is None), decode."""
        post = self.encode(images)
        return self.decode(post.mode() if key is None else post.sample(key))


def _check_uint8(images_uint8: np.ndarray, what: str) -> None:
    if images_uint8.ndim != 4 or images_uint8.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 images [N, S, S, 3], got {images_uint8.dtype} "
                         f"{images_uint8.shape}")
    if float(images_uint8.std()) == 0.0:
        raise ValueError(f"{what}: the images are constant; nothing can be fitted")


def fit_scaling(cfg: PixelAEConfig, images_uint8: np.ndarray, proj: np.ndarray | None = None) -> PixelAEConfig:
    """cfg with shift/scale such that the model-space latents of `images_uint8` [N, S, S, 3] have mean 0, std 1."""
    _check_uint8(images_uint8, "fit_scaling")
    ae = PixelAutoencoder(dataclasses.replace(cfg, shift_factor=0.0, scaling_factor=1.0, refiner_width=0,
                                              refiner_depth=0), proj=proj)
    z = np.asarray(ae.encode(jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0).mode())
    std = float(z.std())
    if not np.isfinite(std) or std < 1e-6:
        raise ValueError(f"fit_scaling: latents have std {std}; cannot scale them to unit variance")
    return dataclasses.replace(cfg, shift_factor=float(z.mean()), scaling_factor=1.0 / std)


def fit(cfg: PixelAEConfig, images_uint8: np.ndarray) -> PixelAutoencoder:
    """The autoencoder for `images_uint8` [N, S, S, 3]: its basis (fitted for "pca") and shift/scale (mean 0, std 1);
    a refiner in cfg starts as the identity (`training.pixel_refiner.fit_refiner` fits it)."""
    proj = fit_pca(cfg, images_uint8) if cfg.basis in FITTED_BASES else None
    cfg = fit_scaling(cfg, images_uint8, proj)
    # one jitted init program: eagerly, each conv's truncated-normal init compiles its own ops (6.5 s vs 3 s on CPU)
    return nnx.jit(lambda: PixelAutoencoder(cfg, proj=proj))()


def save(ae: PixelAutoencoder, out_dir: str | os.PathLike) -> None:
    """Writes `out_dir` as a converted VAE checkpoint (kind "vae", `core.converted` format)."""
    converted.save_converted(out_dir, kind="vae", config=ae.cfg.to_dict(), params=core_params.flat_params(ae),
                             extra={"note": f"space-to-depth pixel autoencoder, {ae.cfg.basis} basis"
                                            + (", learned refiner" if ae.refiner is not None else "")
                                            + " (demo stand-in for the SD3 VAE)"})


def load(folder: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> PixelAutoencoder:
    """Reads a checkpoint written by `save`; the projection is checked against the config's seed."""
    meta, flat = converted.load_converted(folder, kind="vae")
    src = str(pathlib.Path(folder) / "config.json")
    cfg = PixelAEConfig.from_dict({**meta["config"], "dtype": jnp.dtype(dtype or jnp.float32).name,
                                   "param_dtype": jnp.dtype(param_dtype or jnp.float32).name}, source=src)
    placeholder = None if cfg.basis == "orthonormal" else np.zeros((cfg.pixel_channels, cfg.latent_channels))
    # built abstractly and filled (keys and shapes validated first): no random init of the refiner (6.5 s on CPU)
    ae = core_params.module_from_flat(lambda: PixelAutoencoder(cfg, proj=placeholder), flat, source=str(folder))
    w = np.asarray(flat["proj"], np.float32)
    if cfg.basis == "orthonormal":  # the seed's projection as the init stores it (param_dtype)
        seeded = jnp.asarray(orthonormal_rows(cfg.pixel_channels, cfg.latent_channels, cfg.seed), cfg.param_dtype)
        if not np.allclose(w, np.asarray(seeded, np.float32), atol=1e-6):
            raise ValueError(f"{folder}: params/proj differs from the projection of seed {cfg.seed} in {src}")
    gram = w.T.astype(np.float64) @ w
    if cfg.basis in FITTED_BASES and not np.allclose(gram, np.diag(np.diag(gram)), atol=1e-4 * np.abs(gram).max()):
        raise ValueError(f"{folder}: params/proj of a 'pca' basis must have orthogonal columns (W^T W diagonal)")
    return ae
