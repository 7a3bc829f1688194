"""OpenCLIP text tower and the two-tower `CLIP` model (image + text + logit_scale) in Flax NNX.

Text tower = open_clip `CLIP.encode_text` with default flags: token embedding + learned positional embedding ->
causal pre-LN residual blocks -> `ln_final` -> pool the EOT position (argmax token id, CLIP's EOT has the largest
id) -> `text_projection`. Presets: "vit_h_14" (OpenCLIP ViT-H-14, embed 1024) and "tiny" (tests, demo stand-ins).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.evaluators.nets.clip_vit import CLIPVisionConfig, LayerNorm, Transformer, VisionTransformer
from dualfashion_jax.sharding import axes


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    output_dim: int = 1024
    dtype: Any = jnp.float32


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    vision: CLIPVisionConfig
    text: CLIPTextConfig

    @property
    def embed_dim(self) -> int:
        return self.vision.output_dim

    def to_json(self) -> dict:
        out = {}
        for name in ("vision", "text"):
            d = dataclasses.asdict(getattr(self, name))
            d["dtype"] = jnp.dtype(d["dtype"]).name
            out[name] = d
        return out

    @classmethod
    def from_json(cls, d: dict) -> "CLIPConfig":
        try:
            return cls(vision=CLIPVisionConfig(**{**d["vision"], "dtype": jnp.dtype(d["vision"].get("dtype", "float32"))}),
                       text=CLIPTextConfig(**{**d["text"], "dtype": jnp.dtype(d["text"].get("dtype", "float32"))}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"CLIP config JSON is malformed ({e}); expected {{'vision': {{...}}, 'text': {{...}}}}") from e

    def with_dtype(self, dtype: Any) -> "CLIPConfig":
        return CLIPConfig(dataclasses.replace(self.vision, dtype=dtype), dataclasses.replace(self.text, dtype=dtype))


PRESETS = {
    # open_clip model_configs/ViT-H-14.json: vision head_width 80 -> 16 heads; mlp_ratio 4.
    "vit_h_14": CLIPConfig(CLIPVisionConfig(224, 14, 1280, 32, 16, 5120, 1024), CLIPTextConfig(77, 49408, 1024, 24, 16, 4096, 1024)),
    # Small but not tiny (benchmark): ViT-B/16-like widths with fewer layers.
    "small": CLIPConfig(CLIPVisionConfig(224, 16, 384, 6, 6, 1536, 256), CLIPTextConfig(77, 49408, 256, 4, 4, 1024, 256)),
    # Tests and random-weight stand-ins; the real CLIP vocab so the real tokenizer works with it.
    "tiny": CLIPConfig(CLIPVisionConfig(32, 8, 32, 2, 2, 64, 16), CLIPTextConfig(77, 49408, 32, 2, 2, 64, 16)),
}


def get_config(name: str) -> CLIPConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


class TextTransformer(nnx.Module):
    """`model(ids)`: int token ids [B, L<=context] -> UNnormalised text embeddings [B, output_dim] (fp32)."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.token_embedding = nnx.Embed(c.vocab_size, c.width, dtype=c.dtype, param_dtype=jnp.float32, rngs=rngs,
                                         embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02),
                                                                              (axes.VOCAB, axes.EMBED)))
        k1, k2 = jax.random.split(rngs.params())
        self.positional_embedding = nnx.Param(0.01 * jax.random.normal(k1, (c.context_length, c.width)),
                                              out_sharding=(None, axes.EMBED))
        self.transformer = Transformer(c.width, c.layers, c.heads, c.mlp_dim, c.dtype, rngs=rngs)
        self.ln_final = LayerNorm(c.width, c.dtype, rngs=rngs)
        self.text_projection = nnx.Param(c.width ** -0.5 * jax.random.normal(k2, (c.width, c.output_dim)),
                                         out_sharding=(axes.EMBED, None))

    def __call__(self, ids: jax.Array) -> jax.Array:
        c = self.config
        if ids.ndim != 2 or ids.shape[1] > c.context_length:
            raise ValueError(f"TextTransformer: expected token ids [B, L<={c.context_length}], got {tuple(ids.shape)}")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"TextTransformer: token ids must be integers, got {ids.dtype}")
        b, l = ids.shape
        x = self.token_embedding(ids) + self.positional_embedding[...][:l].astype(c.dtype)   # [B, L, D]
        causal = jnp.tril(jnp.ones((l, l), bool))[None, None]                                 # [1, 1, L, L]
        x = self.ln_final(self.transformer(x, causal))
        eot = jnp.argmax(ids, axis=-1)                                                        # [B]
        pooled = x[jnp.arange(b), eot].astype(jnp.float32)                                    # [B, D]
        return jnp.dot(pooled, self.text_projection[...])                                     # [B, E]


class CLIP(nnx.Module):
    """Two towers: `encode_image(pixels)` and `encode_text(ids)` (both UNnormalised, fp32) + `logit_scale`."""

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        if config.vision.output_dim != config.text.output_dim:
            raise ValueError(f"CLIPConfig: image embed dim {config.vision.output_dim} != text embed dim "
                             f"{config.text.output_dim}")
        self.config = config
        self.visual = VisionTransformer(config.vision, rngs=rngs)
        self.text = TextTransformer(config.text, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(np.log(1 / 0.07), jnp.float32), out_sharding=())

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        return self.visual(pixels)

    def encode_text(self, ids: jax.Array) -> jax.Array:
        return self.text(ids)
