"""T5 v1.1 decoder + LM head (Flax NNX) and the encoder-decoder used to pretrain the demo's stand-in text encoder.

The decoder reuses `models/t5.py`'s blocks: pre-norm causal self-attention with a unidirectional bucketed
relative-position bias (layer 0's table, shared by every layer), cross-attention over the encoder output (no
position bias), the gated-GELU FFN; the input embedding is the encoder's `shared` table and the LM head is untied
(v1.1). Only the encoder is kept after pretraining (`training/t5_pretrain.py`), in the converted-T5 format.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.models import t5
from dualfashion_jax.sharding import axes


def causal_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> jax.Array:
    """Unidirectional T5 bucket of how far back each key is from its query, [q_len, k_len] int32 (future keys
    share bucket 0 with the query itself; the causal mask removes them)."""
    back = jnp.maximum(jnp.arange(q_len)[:, None] - jnp.arange(k_len)[None, :], 0)  # [Q, K] >= 0
    max_exact = num_buckets // 2
    large = max_exact + (jnp.log(jnp.maximum(back, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    return jnp.where(back < max_exact, back, jnp.minimum(large, num_buckets - 1))


class T5CrossAttention(nnx.Module):
    """Multi-head attention of decoder states over the encoder output (T5: unscaled scores, no biases)."""

    def __init__(self, cfg: t5.T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        names_in, names_out = (axes.EMBED, axes.HEADS), (axes.HEADS, axes.EMBED)
        self.q = t5._linear(cfg.d_model, cfg.inner_dim, names_in, cfg, rngs, (cfg.d_model * cfg.d_kv) ** -0.5)
        self.k = t5._linear(cfg.d_model, cfg.inner_dim, names_in, cfg, rngs, cfg.d_model ** -0.5)
        self.v = t5._linear(cfg.d_model, cfg.inner_dim, names_in, cfg, rngs, cfg.d_model ** -0.5)
        self.o = t5._linear(cfg.inner_dim, cfg.d_model, names_out, cfg, rngs, cfg.inner_dim ** -0.5)

    def __call__(self, x: jax.Array, memory: jax.Array, bias: jax.Array) -> jax.Array:
        """x [B, T, D]; memory [B, S, D]; bias [B, 1, 1, S] fp32 (key padding) -> [B, T, D]."""
        (b, t, _), s = x.shape, memory.shape[1]
        h, dk = self.cfg.num_heads, self.cfg.d_kv
        q = self.q(x).reshape(b, t, h, dk)  # [B, T, H, Dk]
        k = self.k(memory).reshape(b, s, h, dk)  # [B, S, H, Dk]
        v = self.v(memory).reshape(b, s, h, dk)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)  # [B, H, T, S]
        probs = jax.nn.softmax(scores + bias, axis=-1).astype(v.dtype)
        return self.o(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h * dk))


class T5DecoderBlock(nnx.Module):
    """One pre-norm decoder layer: causal self-attention, cross-attention, gated-GELU FFN, each residual."""

    def __init__(self, cfg: t5.T5Config, *, rngs: nnx.Rngs):
        norm = dict(eps=cfg.layer_norm_epsilon, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.self_norm = t5.T5RMSNorm(cfg.d_model, **norm)
        self.self_attn = t5.T5SelfAttention(cfg, rngs=rngs)
        self.cross_norm = t5.T5RMSNorm(cfg.d_model, **norm)
        self.cross_attn = T5CrossAttention(cfg, rngs=rngs)
        self.ffn_norm = t5.T5RMSNorm(cfg.d_model, **norm)
        self.ffn = t5.T5GatedFFN(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, self_bias: jax.Array, cross_bias: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.self_norm(x), self_bias)  # [B, T, D]
        x = x + self.cross_attn(self.cross_norm(x), memory, cross_bias)
        return x + self.ffn(self.ffn_norm(x))


class T5Decoder(nnx.Module):
    """Decoder stack + untied LM head: `(embedding [V, D], ids [B, T], memory [B, S, D], memory_mask [B, S])
    -> logits [B, T, V]` fp32."""

    def __init__(self, cfg: t5.T5Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.relative_attention_bias = nnx.Param(nnx.with_partitioning(
            nnx.initializers.normal(cfg.d_model ** -0.5), (axes.REL_BUCKETS, None))(
                rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.param_dtype))

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
        def make_blocks(r: nnx.Rngs) -> T5DecoderBlock:
            return T5DecoderBlock(cfg, rngs=r)

        self.blocks = make_blocks(rngs)
        self.final_norm = t5.T5RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                                       param_dtype=cfg.param_dtype)
        self.lm_head = t5._linear(cfg.d_model, cfg.vocab_size, (axes.EMBED, axes.VOCAB), cfg, rngs,
                                  cfg.d_model ** -0.5)

    def __call__(self, embedding: jax.Array, ids: jax.Array, memory: jax.Array, memory_mask: jax.Array) -> jax.Array:
        t = ids.shape[1]
        buckets = causal_position_buckets(t, t, self.cfg.relative_attention_num_buckets,
                                          self.cfg.relative_attention_max_distance)  # [T, T]
        causal = jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, t5._MASK_VALUE)  # [T, T]
        table = self.relative_attention_bias[...].astype(jnp.float32)  # [NB, H]
        self_bias = (jnp.transpose(table[buckets], (2, 0, 1)) + causal)[None]  # [1, H, T, T]
        cross_bias = jnp.where(memory_mask.astype(bool), 0.0, t5._MASK_VALUE)[:, None, None, :]  # [B, 1, 1, S]
        x = jnp.take(embedding, ids.astype(jnp.int32), axis=0).astype(self.cfg.dtype)  # [B, T, D]

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
        def run(h, block):
            return block(h, memory, self_bias, cross_bias)

        x = self.final_norm(run(x, self.blocks))
        return self.lm_head(x).astype(jnp.float32)  # [B, T, V]


class T5EncoderDecoder(nnx.Module):
    """T5 v1.1 encoder-decoder for span-corruption pretraining: `encoder` is a plain `models.t5.T5Encoder`."""

    def __init__(self, cfg: t5.T5Config, *, rngs: nnx.Rngs):
        self.encoder = t5.T5Encoder(cfg, rngs=rngs)
        self.decoder = T5Decoder(cfg, rngs=rngs)

    def __call__(self, inputs: jax.Array, input_mask: jax.Array, decoder_ids: jax.Array) -> jax.Array:
        """inputs / input_mask [B, S], decoder_ids [B, T] (targets shifted right) -> logits [B, T, V] fp32."""
        memory = self.encoder(inputs, input_mask)  # [B, S, D]
        return self.decoder(self.encoder.shared.embedding[...], decoder_ids, memory, input_mask)


def shift_right(targets: jax.Array, start_id: int = 0) -> jax.Array:
    """Decoder inputs [B, T]: the targets one step late, starting with T5's decoder start id (pad, 0)."""
    return jnp.concatenate([jnp.full_like(targets[:, :1], start_id), targets[:, :-1]], axis=1)
