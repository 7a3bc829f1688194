"""Stage-2 add-on modules (spec §1.2): latent role embeddings and the context -> offset network.

`mlp` (the training script): offset = MatchingMLP(mean ctx + r_c). `gor_projector` (GOR inference):
offset = r_t + sigmoid(gate) * Conv1x1(mean ctx + r_c). Latents are NHWC; the MLP flattens in torch's
NCHW order so converted weights apply unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.models import layers
from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.sharding import activations as act, axes


def _role_init(key, shape, dtype):
    return 0.01 * jax.random.normal(key, shape, dtype)


class MatchingMLP(nnx.Module):
    """Flatten (C,H,W) -> Linear -> LeakyReLU(0.01) -> Dropout -> Linear -> tanh -> reshape (torch `MatchingMLP`)."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        h, w = cfg.latent_hw
        self.shape = (h, w, cfg.in_channels)
        n = h * w * cfg.in_channels
        xavier = nnx.initializers.xavier_uniform()
        self.hidden_layer = layers.linear(n, cfg.matching_hidden, (axes.LATENT, axes.MLP), cfg, rngs=rngs,
                                          kernel_init=xavier)
        self.output_layer = layers.linear(cfg.matching_hidden, n, (axes.MLP, axes.LATENT), cfg, rngs=rngs,
                                          kernel_init=xavier)
        self.dropout = nnx.Dropout(cfg.matching_dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        if x.shape[1:] != self.shape:
            raise ValueError(f"MatchingMLP: expected latents [B, {', '.join(map(str, self.shape))}] (NHWC, the "
                             f"config's latent_size x in_channels), got {tuple(x.shape)}")
        b = x.shape[0]
        flat = act.constrain_batch(x.transpose(0, 3, 1, 2).reshape(b, -1))  # [B, C*H*W] torch's NCHW order
        hid = jax.nn.leaky_relu(self.hidden_layer(flat), negative_slope=0.01)  # [B, hidden]
        hid = act.constrain(hid, (axes.ACT_BATCH, axes.ACT_MLP))
        hid = self.dropout(hid, deterministic=deterministic, rngs=rngs)
        out = act.constrain_batch(jnp.tanh(self.output_layer(hid)))  # [B, C*H*W]
        h, w, c = self.shape
        return out.reshape(b, c, h, w).transpose(0, 2, 3, 1)  # [B, H, W, C]


class Stage2(nnx.Module):
    """Role embeddings r_t, r_c ([1, 1, 1, C], NHWC of torch's (1, C, 1, 1)) and the offset network."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        c = cfg.in_channels
        self.variant = cfg.stage2_variant
        self.dtype = cfg.dtype
        role = nnx.with_partitioning(_role_init, (None, None, None, None))
        self.target_role = nnx.Param(role(rngs.params(), (1, 1, 1, c), cfg.param_dtype))
        self.context_role = nnx.Param(role(rngs.params(), (1, 1, 1, c), cfg.param_dtype))
        if self.variant == "mlp":
            self.matching_mlp = MatchingMLP(cfg, rngs=rngs)
        else:  # "gor_projector": zero-init 1x1 conv (HWIO kernel) + scalar gate (init 0 -> sigmoid 0.5)
            zeros = nnx.initializers.zeros_init()
            self.context_projector = nnx.Param(nnx.with_partitioning(zeros, (None, None, axes.CONV_IN, axes.CONV_OUT))(
                rngs.params(), (1, 1, c, c), cfg.param_dtype))
            self.context_projector_bias = nnx.Param(nnx.with_partitioning(zeros, (axes.CONV_OUT,))(
                rngs.params(), (c,), cfg.param_dtype))
            self.context_gate = nnx.Param(nnx.with_partitioning(zeros, ())(rngs.params(), (), cfg.param_dtype))

    def offset(self, ctx_mean: jax.Array, deterministic: bool = True,
               rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        """Context offset c from the mean context latent `[B, H, W, C]` (dropout only when not deterministic).

        The dropout key comes from `rngs` (an nnx.Rngs or a PRNG key) or, when None, the module's own stream.
        """
        if ctx_mean.ndim != 4 or ctx_mean.shape[-1] != self.target_role.shape[-1]:
            raise ValueError(f"Stage2.offset: expected ctx_mean [B, H, W, {self.target_role.shape[-1]}] (NHWC), "
                             f"got {tuple(ctx_mean.shape)}")
        x = ctx_mean.astype(self.dtype) + self.context_role[...].astype(self.dtype)
        if self.variant == "mlp":
            return self.matching_mlp(x, deterministic=deterministic, rngs=rngs)
        kernel = self.context_projector[...][0, 0].astype(self.dtype)  # [C_in, C_out]
        proj = jnp.einsum("bhwc,cd->bhwd", x, kernel) + self.context_projector_bias[...].astype(self.dtype)
        gate = jax.nn.sigmoid(self.context_gate[...].astype(jnp.float32)).astype(self.dtype)
        return act.constrain_batch(self.target_role[...].astype(self.dtype) + gate * proj)  # [B, H, W, C]
