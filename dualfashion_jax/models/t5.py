"""T5 v1.1 encoder in Flax NNX: SD3's frozen `text_encoder_3` (spec §1.3), numerically matching transformers.

Pre-norm blocks (RMSNorm -> self-attention -> residual, RMSNorm -> gated-GELU FFN -> residual), a bucketed
bidirectional relative-position bias computed once from layer 0's table and shared by every layer, no
1/sqrt(d) attention scaling, no biases. The layers are stacked on a leading `LAYERS` axis and run with
`nnx.scan`, so compile time does not grow with depth.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.models import config_io
from dualfashion_jax.sharding import activations as act, axes

_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 v1.1 encoder (names follow transformers' `T5Config`)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: Any = jnp.float32        # compute dtype (bf16 for speed); params are always param_dtype
    param_dtype: Any = jnp.float32
    scan_layers: bool = True        # stacked params under nnx.scan (False: a Python loop over the same stack)
    # random init only: std of the relative-position bias table (0 = T5's d_model ** -0.5). With T5's init a
    # small random encoder's attention is almost uniform, so repeated tokens (the caption template's MASKs) get
    # the same output; std 3 keeps them apart (docs/demo.md: better demo captions, weaker image preference).
    relative_bias_init_std: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"T5Config.{name}: expected a positive int, got {v!r}")
        if not self.relative_bias_init_std >= 0:
            raise ValueError(f"T5Config.relative_bias_init_std: expected >= 0, got {self.relative_bias_init_std!r}")
        if self.relative_attention_num_buckets % 2:
            raise ValueError("T5Config.relative_attention_num_buckets: must be even (bidirectional buckets), "
                             f"got {self.relative_attention_num_buckets}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def to_dict(self) -> dict:
        """JSON-safe dict (dtypes as names) for converted-checkpoint config files."""
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> "T5Config":
        """Inverse of `to_dict`; unknown fields are an error naming `source`."""
        return config_io.from_dict(cls, d, source=source)


_PRESETS = {
    "tiny": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16),
    # The demo's frozen random encoder (T5's own init; see relative_bias_init_std and docs/demo.md).
    "small_demo": dict(vocab_size=32128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    "t5_v1_1_xxl": dict(),  # the dataclass defaults are T5-v1.1-XXL (SD3 text_encoder_3)
}


def get_config(name: str, **overrides) -> T5Config:
    """Preset `tiny` (tests), `small_demo` (demo's frozen random encoder; pass `vocab_size=`) or `t5_v1_1_xxl`."""
    if name not in _PRESETS:
        raise ValueError(f"T5 config preset {name!r} unknown; expected one of {sorted(_PRESETS)}")
    return T5Config(**{**_PRESETS[name], **overrides})


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> jax.Array:
    """Bidirectional T5 bucket index of (key - query) offsets, [q_len, k_len] int32 (mesh-tensorflow scheme)."""
    rel = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]  # [Q, K] memory - query
    half = num_buckets // 2
    buckets = (rel > 0).astype(jnp.int32) * half
    rel = jnp.abs(rel)
    max_exact = half // 2
    is_small = rel < max_exact
    # log-spaced buckets beyond max_exact; float32 like transformers, truncated toward zero by astype
    large = max_exact + (jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (half - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return buckets + jnp.where(is_small, rel, large)


class T5RMSNorm(nnx.Module):
    """T5 LayerNorm: scale-only RMS norm whose variance is computed in fp32 whatever the compute dtype."""

    def __init__(self, dim: int, eps: float, *, dtype: Any, param_dtype: Any):
        self.eps = eps
        self.dtype = dtype
        self.weight = nnx.Param(nnx.with_partitioning(nnx.initializers.ones, (axes.NORM,))(
            jax.random.key(0), (dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        return (self.weight[...].astype(jnp.float32) * y).astype(self.dtype)


def _linear(d_in: int, d_out: int, names: tuple, cfg: T5Config, rngs: nnx.Rngs, std: float) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), names), rngs=rngs)


class T5SelfAttention(nnx.Module):
    """Multi-head self-attention without scaling; adds the shared position bias and the key-padding mask."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        std_q = (cfg.d_model * cfg.d_kv) ** -0.5  # T5's init (q absorbs the missing 1/sqrt(d_kv))
        self.q = _linear(cfg.d_model, cfg.inner_dim, (axes.EMBED, axes.HEADS), cfg, rngs, std_q)
        self.k = _linear(cfg.d_model, cfg.inner_dim, (axes.EMBED, axes.HEADS), cfg, rngs, cfg.d_model ** -0.5)
        self.v = _linear(cfg.d_model, cfg.inner_dim, (axes.EMBED, axes.HEADS), cfg, rngs, cfg.d_model ** -0.5)
        self.o = _linear(cfg.inner_dim, cfg.d_model, (axes.HEADS, axes.EMBED), cfg, rngs, cfg.inner_dim ** -0.5)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x [B, L, D]; bias [B or 1, H, L, L] fp32 (position bias + mask) -> [B, L, D]."""
        b, l, _ = x.shape
        h, dk = self.cfg.num_heads, self.cfg.d_kv
        q = act.constrain(self.q(x).reshape(b, l, h, dk), act.HEADS)  # [B, L, H, Dk]
        k = act.constrain(self.k(x).reshape(b, l, h, dk), act.HEADS)
        v = act.constrain(self.v(x).reshape(b, l, h, dk), act.HEADS)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)  # [B, H, L, L]
        probs = jax.nn.softmax(scores + bias, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, h * dk)  # [B, L, H*Dk]
        out = act.constrain(out, act.HEADS_FLAT)
        return self.o(out)


class T5GatedFFN(nnx.Module):
    """Gated-GELU feed-forward (`gelu_new`, tanh approximation): wo(gelu(wi_0 x) * wi_1 x)."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.wi_0 = _linear(cfg.d_model, cfg.d_ff, (axes.EMBED, axes.MLP), cfg, rngs, cfg.d_model ** -0.5)
        self.wi_1 = _linear(cfg.d_model, cfg.d_ff, (axes.EMBED, axes.MLP), cfg, rngs, cfg.d_model ** -0.5)
        self.wo = _linear(cfg.d_ff, cfg.d_model, (axes.MLP, axes.EMBED), cfg, rngs, cfg.d_ff ** -0.5)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, L, D] -> [B, L, D]
        inner = act.constrain(jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x), act.MLP)  # [B, L, F]
        return self.wo(inner)


class T5Block(nnx.Module):
    """One pre-norm encoder layer: attention sub-layer then feed-forward sub-layer, each residual."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        norm = dict(eps=cfg.layer_norm_epsilon, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.attn_norm = T5RMSNorm(cfg.d_model, **norm)
        self.attn = T5SelfAttention(cfg, rngs=rngs)
        self.ffn_norm = T5RMSNorm(cfg.d_model, **norm)
        self.ffn = T5GatedFFN(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:  # [B, L, D] -> [B, L, D]
        x = act.constrain(x, act.RESIDUAL)  # layer boundary: batch over (data, fsdp)
        x = x + self.attn(self.attn_norm(x), bias)
        return act.constrain(x + self.ffn(self.ffn_norm(x)), act.RESIDUAL)


class T5Encoder(nnx.Module):
    """T5 v1.1 encoder stack: `(input_ids [B, L], attention_mask [B, L] | None) -> hidden states [B, L, D]`."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.shared = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0),
                                                                     (axes.VOCAB, axes.EMBED)), rngs=rngs)
        # [num_buckets, H]; the heads dim is tiny and kept replicated (no logical name for a bare head count)
        self.relative_attention_bias = nnx.Param(nnx.with_partitioning(
            nnx.initializers.normal(cfg.relative_bias_init_std or cfg.d_model ** -0.5), (axes.REL_BUCKETS, None))(
                rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.param_dtype))

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
        def make_blocks(r: nnx.Rngs) -> T5Block:
            return T5Block(cfg, rngs=r)

        self.blocks = make_blocks(rngs)  # every param gets a leading [num_layers] axis
        self.final_norm = T5RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                                    param_dtype=cfg.param_dtype)

    def position_bias(self, length: int) -> jax.Array:
        """Relative-position bias shared by all layers, [1, H, L, L] fp32."""
        buckets = relative_position_buckets(length, length, self.cfg.relative_attention_num_buckets,
                                            self.cfg.relative_attention_max_distance)  # [L, L]
        table = self.relative_attention_bias[...].astype(jnp.float32)  # [NB, H]
        return jnp.transpose(table[buckets], (2, 0, 1))[None]

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids [B, L] int; attention_mask [B, L] (1 = attend, 0 = padding) or None -> [B, L, D]."""
        if input_ids.ndim != 2:
            raise ValueError(f"T5Encoder: input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"T5Encoder: input_ids must be integer token ids, got dtype {input_ids.dtype}")
        b, l = input_ids.shape
        bias = self.position_bias(l)  # [1, H, L, L]
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (b, l):
                raise ValueError(f"T5Encoder: attention_mask shape {tuple(attention_mask.shape)} must equal "
                                 f"input_ids shape {(b, l)}")
            keep = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, L] key padding
            bias = bias + jnp.where(keep, 0.0, _MASK_VALUE)  # [B, H, L, L]
        # the table gathered over fsdp (vocab stays split over tensor) so each device looks up only its rows
        table = act.constrain_weight(self.shared.embedding[...], (axes.VOCAB, None), "t5.shared")  # [V, D]
        ids = act.constrain_batch(input_ids.astype(jnp.int32))
        x = act.constrain(jnp.take(table, ids, axis=0).astype(self.cfg.dtype), act.RESIDUAL)  # [B, L, D]

        if self.cfg.scan_layers:
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                      transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
            def run(h, block):
                return block(h, bias)

            x = run(x, self.blocks)
        else:
            for i in range(self.cfg.num_layers):
                x = _layer(self.blocks, i)(x, bias)
        return act.constrain(self.final_norm(x), act.RESIDUAL)


def _layer(blocks: T5Block, i: int) -> T5Block:
    """Layer i of the stacked blocks as an unstacked module (for `scan_layers=False` debugging)."""
    graphdef, state = nnx.split(blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
