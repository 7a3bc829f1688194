"""The joint MMDiT block (diffusers `JointTransformerBlock`, full form on both streams, spec §1.1).

Image and text streams keep separate weights (q/k/v/out, AdaLN-Zero, FF) but attend jointly over the
concatenated sequence [image tokens; text tokens], with no mask. Tensors worth saving under remat are
tagged with `checkpoint_name`: qkv_img, qkv_txt, attn_out, mlp_hidden (see models/remat.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from dualfashion_jax.models import layers
from dualfashion_jax.models.attention import attention
from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.sharding import activations as act, axes


class JointAttention(nnx.Module):
    """Per-stream q/k/v/out projections around one joint attention call (torch `attn.*`)."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.backend = cfg.attention_backend

        def proj(i, o, logical):
            return layers.linear(i, o, logical, cfg, rngs=rngs)

        qkv_axes, out_axes = (axes.EMBED, axes.HEADS), (axes.HEADS, axes.EMBED)
        self.to_q, self.to_k, self.to_v = (proj(d, d, qkv_axes) for _ in range(3))              # image stream
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (proj(d, d, qkv_axes) for _ in range(3))  # text
        self.to_out = proj(d, d, out_axes)       # torch attn.to_out.0
        self.to_add_out = proj(d, d, out_axes)   # torch attn.to_add_out

    def _heads(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim)  # [B, L, H, Dh]
        return act.constrain(x, act.HEADS)

    def __call__(self, img: jax.Array, txt: jax.Array) -> tuple[jax.Array, jax.Array]:
        n_img = img.shape[1]
        qkv_i = checkpoint_name(jnp.stack([self.to_q(img), self.to_k(img), self.to_v(img)]), "qkv_img")
        qkv_t = checkpoint_name(
            jnp.stack([self.add_q_proj(txt), self.add_k_proj(txt), self.add_v_proj(txt)]), "qkv_txt")
        q, k, v = (self._heads(jnp.concatenate([qkv_i[j], qkv_t[j]], axis=1)) for j in range(3))  # [B, Li+Lt, H, Dh]
        out = attention(q, k, v, backend=self.backend)  # scale 1/sqrt(Dh)
        out = act.constrain(out.reshape(out.shape[0], out.shape[1], -1), act.HEADS_FLAT)
        out = checkpoint_name(out, "attn_out")  # [B, Li+Lt, D]
        return self.to_out(out[:, :n_img]), self.to_add_out(out[:, n_img:])


class JointBlock(nnx.Module):
    """One MMDiT block: AdaLN-Zero (both streams driven by the same temb), joint attention, gated GELU FF."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        self.norm1 = layers.AdaLayerNormZero(cfg, rngs=rngs)
        self.norm1_context = layers.AdaLayerNormZero(cfg, rngs=rngs)
        self.attn = JointAttention(cfg, rngs=rngs)
        self.ff = layers.FeedForward(cfg, rngs=rngs)
        self.ff_context = layers.FeedForward(cfg, rngs=rngs)

    def __call__(self, img: jax.Array, txt: jax.Array, temb: jax.Array) -> tuple[jax.Array, jax.Array]:
        """img [B, Li, D], txt [B, Lt, D], temb [B, D] -> updated (img, txt)."""
        x_i, gate_i, shift_mlp_i, scale_mlp_i, gate_mlp_i = self.norm1(img, temb)
        x_t, gate_t, shift_mlp_t, scale_mlp_t, gate_mlp_t = self.norm1_context(txt, temb)
        attn_i, attn_t = self.attn(x_i, x_t)
        img = img + gate_i[:, None] * attn_i
        txt = txt + gate_t[:, None] * attn_t
        img = img + gate_mlp_i[:, None] * self.ff(layers.modulate(layers.layer_norm(img), shift_mlp_i, scale_mlp_i))
        txt = txt + gate_mlp_t[:, None] * self.ff_context(layers.modulate(layers.layer_norm(txt), shift_mlp_t, scale_mlp_t))
        return img, txt
