"""Small building blocks of the MMDiT: annotated Linear, affine-free LayerNorm, AdaLN modulators, GELU FF.

Each mirrors one diffusers module (names noted) so checkpoints map 1:1; every parameter carries logical
axis names, params are `param_dtype`, matmuls run in the config's compute `dtype`, norms in fp32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as flax_dtypes
from jax.ad_checkpoint import checkpoint_name

from dualfashion_jax.models import custom_grads
from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.sharding import activations as act, axes

# torch.nn.Linear's default init (kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))).
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class _CastBeforeGather:
    """nnx.Linear's `promote_dtype` hook: the kernel and bias reach the compute dtype through
    `activations.cast_weight` (cast while sharded, gathered in bf16); the inputs as flax would cast them."""

    def __init__(self, logical: tuple[str | None, str | None]):
        self.logical = tuple(logical)

    def __eq__(self, other):
        return isinstance(other, _CastBeforeGather) and other.logical == self.logical

    def __hash__(self):
        return hash(self.logical)

    def __call__(self, arrays, dtype=None, inexact=True):
        if dtype is None:
            return flax_dtypes.promote_dtype(arrays, dtype=None, inexact=inexact)
        inputs, kernel, bias = arrays
        inputs = jnp.asarray(inputs, dtype)
        kernel = act.cast_weight(kernel, self.logical, dtype)
        bias = None if bias is None else act.cast_weight(bias, self.logical[1:], dtype)
        return inputs, kernel, bias


def flat_dot_general(x: jax.Array, w: jax.Array, dims, precision=None, preferred_element_type=None,
                     out_sharding=None) -> jax.Array:
    """nnx.Linear's x @ w with x `[..., K]` flattened to `[R, K]`: the same product, which XLA:CPU runs as one
    GEMM (the N-d form cost 14 % of the small CPU step, docs/performance.md §8); XLA's dot canonicalisation
    does the same reshape on GPU."""
    if dims != (((x.ndim - 1,), (0,)), ((), ())) or x.ndim <= 2 or out_sharding is not None:
        return jax.lax.dot_general(x, w, dims, precision=precision, preferred_element_type=preferred_element_type,
                                   out_sharding=out_sharding)
    y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), w, (((1,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=preferred_element_type)  # [R, N]
    return y.reshape(*x.shape[:-1], w.shape[-1])  # [..., N]


def linear(in_features: int, out_features: int, logical: tuple[str | None, str | None], cfg: MMDiTConfig,
           *, rngs: nnx.Rngs, kernel_init=torch_default_init, bias_init=nnx.initializers.zeros_init(),
           preferred_element_type=None) -> nnx.Linear:
    """nnx.Linear (kernel [in, out] + bias [out]) with logical axis names and the config's dtypes."""
    return nnx.Linear(
        in_features, out_features, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nnx.with_partitioning(kernel_init, logical),
        bias_init=nnx.with_partitioning(bias_init, (logical[1],)),
        preferred_element_type=preferred_element_type, promote_dtype=_CastBeforeGather(logical),
        dot_general=flat_dot_general, rngs=rngs)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine params (diffusers `elementwise_affine=False`); statistics in fp32, with
    a hand-written backward (`custom_grads.layer_norm`)."""
    return custom_grads.layer_norm(x, eps)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x * (1 + scale) + shift with per-example shift/scale `[B, D]` broadcast over tokens of x `[B, L, D]`."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class AdaLayerNormZero(nnx.Module):
    """diffusers `AdaLayerNormZero`: SiLU(temb) -> Linear(D -> 6D) -> modulated LN + gates (AdaLN-Zero)."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.linear = linear(d, 6 * d, (axes.EMBED, axes.MOD), cfg, rngs=rngs)

    def __call__(self, x: jax.Array, temb: jax.Array):
        emb = act.constrain_batch(self.linear(jax.nn.silu(temb)))  # [B, 6D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(emb, 6, axis=-1)
        return modulate(layer_norm(x), shift_msa, scale_msa), gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormContinuous(nnx.Module):
    """diffusers `AdaLayerNormContinuous`: Linear(SiLU(temb)) -> (scale, shift) in that order; LN(x)*(1+scale)+shift."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.linear = linear(d, 2 * d, (axes.EMBED, axes.MOD), cfg, rngs=rngs)

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        scale, shift = jnp.split(self.linear(jax.nn.silu(temb)), 2, axis=-1)  # [B, D] each
        return modulate(layer_norm(x), shift, scale)


class FeedForward(nnx.Module):
    """diffusers `FeedForward(activation_fn="gelu-approximate")`: Linear D->4D, tanh-GELU, Linear 4D->D."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.proj_in = linear(d, 4 * d, (axes.EMBED, axes.MLP), cfg, rngs=rngs)    # torch ff.net.0.proj
        self.proj_out = linear(4 * d, d, (axes.MLP, axes.EMBED), cfg, rngs=rngs)   # torch ff.net.2

    def __call__(self, x: jax.Array) -> jax.Array:
        h = act.constrain(custom_grads.gelu_tanh(self.proj_in(x)), act.MLP)  # [B, L, 4D]
        h = checkpoint_name(h, "mlp_hidden")
        return self.proj_out(h)
