"""Rectified-flow noise schedule: the 1000-step sigma grid, logit-normal timesteps, noising, SD3 shift.

Training (spec §2.1) uses a fresh diffusers `FlowMatchEulerDiscreteScheduler()` (shift 1.0): sigma_k =
(1000-k)/1000, k = floor(1000 u), u ~ sigmoid(N(0, 1)). Inference (spec §5.1) uses the SD3 schedule with
shift 3.0, reproduced here exactly as diffusers builds it (including its double application of the shift to
the end point), so the sampler is a drop-in replacement for the original loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ValueError(f"flow schedule: shift must be > 0, got {shift!r}")


def shift_sigma(sigma, shift: float):
    """SD3 timestep shift sigma' = s*sigma / (1 + (s-1)*sigma); identity for s = 1 (works on np or jnp)."""
    _check_shift(shift)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def train_sigma_grid(shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The training grid sigma_k, k = 0..N-1 (descending, 1.0 -> 1/N before the shift), float32 [N]."""
    _check_shift(shift)
    if num_train_timesteps < 1:
        raise ValueError(f"flow schedule: num_train_timesteps must be >= 1, got {num_train_timesteps}")
    # diffusers: timesteps = linspace(1, N, N)[::-1] in float32, sigmas = timesteps / N, then the shift.
    timesteps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    sigmas = timesteps / np.float32(num_train_timesteps)
    return np.asarray(shift_sigma(sigmas, np.float32(shift)), dtype=np.float32)


def sample_logit_normal(key: jax.Array, batch: int, mean: float = 0.0, std: float = 1.0) -> jax.Array:
    """u = sigmoid(mean + std * N(0, 1)), float32 [B]: SD3's logit-normal timestep density."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), jnp.float32))


def sigmas_from_uniform(u: jax.Array, shift: float = 1.0,
                        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> jax.Array:
    """Maps u in [0, 1] to the grid: k = clip(floor(N u), 0, N-1), sigma = sigma_k. float32 [B]."""
    grid = jnp.asarray(train_sigma_grid(shift, num_train_timesteps))  # [N]
    k = jnp.clip(jnp.floor(u * num_train_timesteps).astype(jnp.int32), 0, num_train_timesteps - 1)
    return grid[k]


def sample_train_sigmas(key: jax.Array, batch: int, *, shift: float = 1.0, logit_mean: float = 0.0,
                        logit_std: float = 1.0,
                        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[jax.Array, jax.Array]:
    """Draws training noise levels: (sigma [B], model timestep 1000*sigma [B]), both float32."""
    u = sample_logit_normal(key, batch, logit_mean, logit_std)
    sigma = sigmas_from_uniform(u, shift, num_train_timesteps)
    return sigma, sigma * num_train_timesteps


def expand_like(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example [B] vector to broadcast against x [B, ...]."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def add_noise(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """x_t = (1 - sigma) x0 + sigma eps (rectified-flow interpolation), sigma [B] broadcast over x0 [B, ...]."""
    if x0.shape != noise.shape:
        raise ValueError(f"add_noise: x0 {x0.shape} and noise {noise.shape} must have the same shape")
    s = expand_like(sigma.astype(jnp.float32), x0)
    return (1.0 - s) * x0.astype(jnp.float32) + s * noise.astype(jnp.float32)


def inference_sigmas(num_steps: int, shift: float = 3.0,
                     num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Sampling sigmas, float32 [num_steps + 1] ending in 0, exactly as diffusers' `set_timesteps(n)`.

    diffusers first shifts the training grid (so sigma_min = shift(1/N)), then takes a linspace between
    the shifted end points and shifts it again; the model timestep is 1000 * sigma[i].
    """
    if num_steps < 1:
        raise ValueError(f"inference_sigmas: num_steps must be >= 1, got {num_steps}")
    grid = train_sigma_grid(shift, num_train_timesteps)  # shifted, float32
    sigma_max, sigma_min = float(grid[0]), float(grid[-1])
    ts = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)  # float64
    sigmas = shift_sigma(ts / num_train_timesteps, shift).astype(np.float32)
    return np.concatenate([sigmas, np.zeros(1, np.float32)])
