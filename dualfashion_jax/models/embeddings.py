"""Input embeddings of the MMDiT: patch embedding + cropped 2D sincos positions, and the timestep MLP.

The position grid is computed exactly like diffusers' `get_2d_sincos_pos_embed` (float64 frequencies,
stored fp32) and kept in a `PosEmbedBuffer` variable -- not a trainable Param -- that the converter
overwrites with the checkpoint's `pos_embed.pos_embed` buffer.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.models import layers
from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.sharding import activations as act, axes


class PosEmbedBuffer(nnx.Variable):
    """A persistent, non-trainable buffer (the torch `register_buffer(..., persistent=True)` analogue)."""


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, embed_dim] as [sin | cos] with omega_k = 10000^(-k / (embed_dim/2)) (float64)."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)  # [M, D/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@functools.lru_cache(maxsize=8)
def sincos_2d_pos_embed(embed_dim: int, grid_size: int, *, base_size: int,
                        interpolation_scale: float = 1.0) -> np.ndarray:
    """diffusers `get_2d_sincos_pos_embed`: [grid_size**2, embed_dim] float32, row-major (row, col) tokens.

    The first half of the channels encodes the column coordinate, the second half the row coordinate.
    Cached (read-only result): the SD3 grid is 192*192 x 1536 and every model construction needs it.
    """
    coords = np.arange(grid_size, dtype=np.float32) / np.float32(grid_size / base_size) / np.float32(interpolation_scale)
    col, row = np.meshgrid(coords, coords, indexing="xy")  # [G, G] each; col varies along axis 1
    emb = np.concatenate([sincos_1d(embed_dim // 2, col), sincos_1d(embed_dim // 2, row)], axis=1)
    emb = emb.astype(np.float32)
    emb.flags.writeable = False
    return emb


# torch's CPU float32 exp (SLEEF, ~1 ulp) rounds these entries of the 256-feature table one ulp above the
# correctly rounded value; keeping them makes t * freq bit-identical to diffusers (at t ~ 1000 one ulp of a
# frequency moves the feature by ~1e-5, which a trained trunk amplifies ~10x, see tests/test_float64_parity.py).
_TORCH_EXP_ULP = {(256, 10000.0): {12: 1, 106: 1}}


@functools.lru_cache(maxsize=8)
def timestep_frequencies(dim: int, max_period: float = 10000.0) -> np.ndarray:
    """diffusers' float32 frequency table exp(-ln(max_period) * i / (dim/2)), i < dim/2, as torch computes it."""
    half = dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)  # fp32 ops
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)  # correctly rounded fp32 exp
    bits = freqs.view(np.int32).copy()
    for i, ulps in _TORCH_EXP_ULP.get((dim, float(max_period)), {}).items():
        bits[i] += ulps
    out = bits.view(np.float32)
    out.flags.writeable = False
    return out


def timestep_features(t: jax.Array, dim: int, *, max_period: float = 10000.0) -> jax.Array:
    """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: t [B] -> [cos | sin] [B, dim] fp32.

    The frequencies are a constant table equal to torch's (XLA's float32 exp differs in 17 of 128 entries).
    """
    freqs = jnp.asarray(timestep_frequencies(dim, float(max_period)))  # [dim/2]
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, dim/2] fp32 product, as diffusers
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class PatchEmbed(nnx.Module):
    """diffusers `PatchEmbed` (SD3 cropping form): stride-p conv as a matmul over patches + centre-cropped pos-embed."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        p, c, d = cfg.patch_size, cfg.in_channels, cfg.hidden_size
        self.patch_size = p
        self.max_size = cfg.pos_embed_max_size
        self.dtype = cfg.dtype
        # HWIO conv kernel [p, p, C, D]; torch's default conv init (fan_in = p*p*C).
        kinit = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 1, 2), out_axis=3)
        self.kernel = nnx.Param(nnx.with_partitioning(kinit, (None, None, axes.CONV_IN, axes.EMBED))(
            rngs.params(), (p, p, c, d), cfg.param_dtype))
        self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), (axes.EMBED,))(
            rngs.params(), (d,), cfg.param_dtype))
        grid = sincos_2d_pos_embed(d, cfg.pos_embed_max_size, base_size=cfg.sample_size // p,
                                   interpolation_scale=cfg.interpolation_scale)
        self.pos_embed = PosEmbedBuffer(jnp.asarray(grid, dtype=cfg.param_dtype), out_sharding=(None, axes.EMBED))

    def cropped_pos_embed(self, h: int, w: int) -> jax.Array:
        """The centred h x w window of the stored grid, flattened row-major: [h*w, D]."""
        m = self.max_size
        if h > m or w > m:
            raise ValueError(f"latent grid {h}x{w} patches exceeds pos_embed_max_size {m} "
                             f"(latent side must be <= {m * self.patch_size})")
        top, left = (m - h) // 2, (m - w) // 2
        grid = self.pos_embed[...].reshape(m, m, -1)[top:top + h, left:left + w]  # [h, w, D]
        return grid.reshape(h * w, -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape  # [B, H, W, C] NHWC
        p = self.patch_size
        h, w = hh // p, ww // p
        patches = x.reshape(b, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * w, p * p * c)  # [B, N, p*p*C]
        patches = act.constrain_batch(patches)
        kernel = self.kernel[...].reshape(p * p * c, -1).astype(self.dtype)  # (kh, kw, C) order == patch order
        tokens = jnp.einsum("bnk,kd->bnd", patches.astype(self.dtype), kernel) + self.bias[...].astype(self.dtype)
        return act.constrain(tokens + self.cropped_pos_embed(h, w).astype(self.dtype)[None], act.RESIDUAL)  # [B, N, D]


# Partial sums of the timestep MLP's 256-feature contraction (16 x 16: RMS rounding error ~1e-7 x std vs ~3e-7
# for one XLA CPU dot and ~2e-7 for torch's sgemm, tests/test_float64_parity.py).
_TEMB_PARTIALS = 16


class TimestepEmbedder(nnx.Module):
    """DualFashion `TimestepProjEmbeddings`: 256-d sinusoid of t (0..1000) -> Linear, SiLU, Linear -> temb [B, D]."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_features = cfg.timestep_features
        self.linear_1 = layers.linear(cfg.timestep_features, d, (axes.COND, axes.EMBED), cfg, rngs=rngs)
        self.linear_2 = layers.linear(d, d, (None, axes.EMBED), cfg, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        feats = timestep_features(t, self.num_features)  # [B, 256] fp32
        return self.linear_2(jax.nn.silu(self._linear_1(feats)))  # [B, D]

    def _linear_1(self, feats: jax.Array) -> jax.Array:
        """linear_1 as _TEMB_PARTIALS fp32 partial dots summed after: one XLA CPU dot rounds the 256-feature sum
        ~1.5x worse than torch's sgemm, and every AdaLN shift/scale/gate amplifies temb's error (issue #16)."""
        lin, c = self.linear_1, _TEMB_PARTIALS
        if jnp.dtype(lin.dtype or feats.dtype) != jnp.float32 or feats.shape[-1] % c or act.under_mesh():
            return lin(feats)  # bf16: its rounding dominates; under a mesh: one sharded dot (partitioning tests)
        x, kernel, bias = lin.promote_dtype((feats, lin.kernel[...], lin.bias[...]), dtype=lin.dtype)
        part = jnp.einsum("bck,ckd->bcd", x.reshape(x.shape[0], c, -1), kernel.reshape(c, -1, kernel.shape[-1]),
                          preferred_element_type=jnp.float32)  # [B, c, D]
        return part.sum(axis=1) + bias  # [B, D]
