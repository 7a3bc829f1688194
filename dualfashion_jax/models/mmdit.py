"""`DualMMDiT`: DualFashion's joint image/text MMDiT (`SD3JointModelFlexible`, spec §1.1) in Flax NNX.

Image stream: patchified NHWC latents (or 8 learned null tokens for text-only input); text stream: T5
hidden states through the context embedder. All blocks are full joint blocks, run with `nnx.scan` over
stacked params (layer axis `LAYERS`) and optional remat. Two heads: velocity (AdaLN-continuous + Linear +
unpatchify) and text logits (LayerNorm + Linear, fp32). The stage-2 add-ons live in `model.stage2`.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.models import embeddings, layers, remat
from dualfashion_jax.models.mmdit_block import JointBlock
from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.models.stage2 import Stage2
from dualfashion_jax.sharding import activations as act, axes

HEADS = ("image", "text")
# x-prediction's velocity divides by sigma = t / 1000; the floor only guards t = 0 (clean-image conditioning)
SAMPLE_SIGMA_FLOOR = 1e-4
# Variables a checkpoint holds: trainable params + the (non-trainable) pos-embed buffer. Optimise only nnx.Param.
WEIGHTS = (nnx.Param, embeddings.PosEmbedBuffer)


def _null_init(dim: int):
    def init(key, shape, dtype):
        return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(dim, dtype))
    return init


def velocity_from_sample(x_in: jax.Array, x0_hat: jax.Array, t: jax.Array) -> jax.Array:
    """(x_in - x0_hat) / sigma, sigma = t / 1000 floored: the velocity whose x0 estimate is x0_hat, fp32 [B, H, W, C]."""
    sigma = jnp.maximum(t.astype(jnp.float32) / 1000.0, SAMPLE_SIGMA_FLOOR).reshape((-1, 1, 1, 1))
    return (x_in.astype(jnp.float32) - x0_hat.astype(jnp.float32)) / sigma


class DualMMDiT(nnx.Module):
    """Joint MMDiT: (x_img NHWC | None, txt [B, L, joint_dim], t [B]) -> (velocity NHWC | null tokens, logits)."""

    def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.config = cfg
        self.patch_embed = embeddings.PatchEmbed(cfg, rngs=rngs)
        self.timestep_embedder = embeddings.TimestepEmbedder(cfg, rngs=rngs)
        self.context_embedder = layers.linear(cfg.joint_attention_dim, d, (axes.COND, axes.EMBED), cfg, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
        def make_blocks(r: nnx.Rngs) -> JointBlock:
            return JointBlock(cfg, rngs=r)

        self.blocks = make_blocks(rngs)  # params stacked on a leading [num_layers] axis
        self.null_image_embd = nnx.Param(nnx.with_partitioning(_null_init(d), (None, None, axes.EMBED))(
            rngs.params(), (1, cfg.num_null_tokens, d), cfg.param_dtype))
        self.image_norm_out = layers.AdaLayerNormContinuous(cfg, rngs=rngs)
        self.image_proj_out = layers.linear(d, cfg.patch_dim, (axes.EMBED, axes.PATCH), cfg, rngs=rngs)
        self.text_proj_out = layers.linear(d, cfg.vocab_size, (axes.EMBED, axes.VOCAB), cfg, rngs=rngs,
                                           preferred_element_type=jnp.float32)
        self.stage2 = Stage2(cfg, rngs=rngs) if cfg.stage2 else None

    # ------------------------------------------------------------------------------------------------------
    def _check_inputs(self, x_img, txt, t) -> None:
        cfg = self.config
        if txt.ndim != 3 or txt.shape[-1] != cfg.joint_attention_dim:
            raise ValueError(f"DualMMDiT: txt must be [B, L, {cfg.joint_attention_dim}] (T5 hidden states), "
                             f"got {tuple(txt.shape)}")
        b = txt.shape[0]
        if t.shape != (b,):
            raise ValueError(f"DualMMDiT: t must be [B]=[{b}] timesteps on the 0..1000 scale, got {tuple(t.shape)}")
        if x_img is not None:
            p = cfg.patch_size
            if x_img.ndim != 4 or x_img.shape[0] != b or x_img.shape[-1] != cfg.in_channels:
                raise ValueError(f"DualMMDiT: x_img must be NHWC [{b}, H, W, {cfg.in_channels}], got {tuple(x_img.shape)}")
            if x_img.shape[1] % p or x_img.shape[2] % p:
                raise ValueError(f"DualMMDiT: latent H, W {x_img.shape[1:3]} must be multiples of patch_size {p}")

    def _trunk(self, img: jax.Array, txt: jax.Array, temb: jax.Array) -> tuple[jax.Array, jax.Array]:
        """All joint blocks under one `nnx.scan` over the stacked params (remat per block per the config)."""
        def block_fn(block: JointBlock, carry, temb_):
            img_, txt_ = block(act.constrain(carry[0], act.RESIDUAL), act.constrain(carry[1], act.RESIDUAL), temb_)
            return act.constrain(img_, act.RESIDUAL), act.constrain(txt_, act.RESIDUAL)  # block boundary

        block_fn = remat.apply(block_fn, self.config.remat_policy, prevent_cse=not self.config.scan_layers)

        # scan_layers=False fully unrolls the loop (same stacked params; no while loop in the HLO).
        @nnx.scan(in_axes=(0, nnx.Carry, None), out_axes=nnx.Carry, unroll=True if not self.config.scan_layers else 1)
        def run(block, carry, temb_):
            return block_fn(block, carry, temb_)

        return run(self.blocks, (img, txt), temb)

    def _image_head(self, img: jax.Array, temb: jax.Array, h: int, w: int) -> jax.Array:
        """[B, h*w, D] -> velocity [B, h*p, w*p, C_out] (torch unpatchify order (h, w, p, q, C))."""
        cfg = self.config
        p, c = cfg.patch_size, cfg.out_channels
        x = act.constrain_batch(self.image_proj_out(self.image_norm_out(img, temb)))  # [B, h*w, p*p*C]
        x = x.reshape(x.shape[0], h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)  # [B, h, p, w, q, C]
        return x.reshape(x.shape[0], h * p, w * p, c)

    def __call__(self, x_img: jax.Array | None, txt: jax.Array, t: jax.Array, *,
                 heads: Sequence[str] = HEADS, text_logits_len: int | None = None):
        """Returns (img_out, logits); a head not in `heads` returns None.

        img_out: velocity [B, H, W, C_out], or the trunk's null tokens [B, 8, D] when x_img is None.
        logits: [B, text_logits_len or L, vocab] float32.
        """
        cfg = self.config
        bad = [h for h in heads if h not in HEADS]
        if bad:
            raise ValueError(f"DualMMDiT: unknown head(s) {bad}; expected a subset of {HEADS}")
        txt, t = jnp.asarray(txt), jnp.asarray(t)
        self._check_inputs(x_img, txt, t)
        dt = cfg.compute_dtype
        temb = act.constrain(self.timestep_embedder(t), act.VECTOR)  # [B, D]
        ctx = act.constrain(self.context_embedder(txt.astype(dt)), act.RESIDUAL)  # [B, Lt, D]
        if x_img is None:
            img = jnp.broadcast_to(self.null_image_embd[...].astype(dt), (txt.shape[0],) + self.null_image_embd.shape[1:])
        else:
            img = self.patch_embed(jnp.asarray(x_img))  # [B, h*w, D]
        img = act.constrain(img.astype(dt), act.RESIDUAL)
        img, ctx = self._trunk(img, ctx.astype(dt), temb.astype(dt))

        img_out = None
        if "image" in heads:
            if x_img is None:
                img_out = img  # [B, 8, D] (the original returns the trunk's null tokens, no head)
            else:
                p = cfg.patch_size
                img_out = self._image_head(img, temb, x_img.shape[1] // p, x_img.shape[2] // p)
                if cfg.prediction == "sample":  # head = x0_hat; return F with x_in - sigma F = x0_hat
                    img_out = velocity_from_sample(jnp.asarray(x_img), img_out, t)
        logits = None
        if "text" in heads:
            if text_logits_len is not None:
                if not 0 < text_logits_len <= ctx.shape[1]:
                    raise ValueError(f"DualMMDiT: text_logits_len {text_logits_len} outside 1..{ctx.shape[1]}")
                ctx = ctx[:, :text_logits_len]
            logits = self.text_proj_out(layers.layer_norm(ctx)).astype(jnp.float32)  # [B, L, vocab]
            logits = act.constrain(logits, act.LOGITS)
        return img_out, logits
