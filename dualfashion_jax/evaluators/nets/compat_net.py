"""DiFashion's outfit compatibility network (`FashionEvaluator`, after OutfitGAN) in Flax NNX.

4 item features [B, 4, F] (OpenCLIP ViT-H-14 image embeddings, UNnormalised, F = 1024) -> `feat_layer` Linear F->1024
per item -> the 6 unordered slot pairs (01,02,03,12,13,23) concatenated [B, 6, 2048] -> shared `emb_layer`
(Linear -> LN -> ReLU -> Dropout(0.35), widths 2048->512->512->256->256) -> mean over pairs [B, 256] -> `eval_layer`
(256->128->128->32 with LN/ReLU/Dropout, then Linear 32->1) -> logit [B]. Evaluation applies a sigmoid.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualfashion_jax.sharding import axes

OUTFIT_SIZE = 4
PAIRS = tuple(itertools.combinations(range(OUTFIT_SIZE), 2))  # slot order, as DiFashion's combinations()


@dataclasses.dataclass(frozen=True)
class CompatConfig:
    feat_dim: int = 1024                   # input item-feature width (`cnn_feat_dim`)
    item_dim: int = 1024                   # feat_layer output
    emb_widths: tuple[int, ...] = (512, 512, 256, 256)
    eval_widths: tuple[int, ...] = (128, 128, 32)
    dropout: float = 0.35
    dtype: Any = jnp.float32

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["dtype"] = jnp.dtype(self.dtype).name
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CompatConfig":
        d = dict(d)
        d["dtype"] = jnp.dtype(d.get("dtype", "float32"))
        d["emb_widths"], d["eval_widths"] = tuple(d["emb_widths"]), tuple(d["eval_widths"])
        return cls(**d)


PRESETS = {"difashion": CompatConfig(), "tiny": CompatConfig(16, 32, (32, 16), (8,))}


def _linear(din: int, dout: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    # DiFashion initialises with xavier_normal_ weights and zero biases.
    return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
                      kernel_init=nnx.with_partitioning(nnx.initializers.xavier_normal(), (axes.EMBED, axes.MLP)),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes.MLP,)))


class Block(nnx.Module):
    """Linear -> LayerNorm -> ReLU -> Dropout (one `nn.Sequential` group of the original)."""

    def __init__(self, din: int, dout: int, dropout: float, dtype: Any, *, rngs: nnx.Rngs):
        self.linear = _linear(din, dout, dtype, rngs)
        self.norm = nnx.LayerNorm(dout, epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs,
                                  scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axes.NORM,)),
                                  bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes.NORM,)))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm(self.linear(x).astype(jnp.float32))
        return self.dropout(jax.nn.relu(y)).astype(x.dtype)


class FashionEvaluator(nnx.Module):
    """`model(feats [B, 4, F]) -> logits [B]`; `model.score(feats)` -> sigmoid probabilities [B]."""

    def __init__(self, config: CompatConfig = CompatConfig(), *, rngs: nnx.Rngs):
        c = self.config = config
        self.feat_layer = _linear(c.feat_dim, c.item_dim, c.dtype, rngs)
        widths = (2 * c.item_dim,) + c.emb_widths
        self.emb_layer = nnx.List([Block(a, b, c.dropout, c.dtype, rngs=rngs) for a, b in zip(widths, widths[1:])])
        widths = (c.emb_widths[-1],) + c.eval_widths
        self.eval_layer = nnx.List([Block(a, b, c.dropout, c.dtype, rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.head = _linear(c.eval_widths[-1], 1, c.dtype, rngs)

    def __call__(self, feats: jax.Array) -> jax.Array:
        c = self.config
        if feats.ndim != 3 or feats.shape[1:] != (OUTFIT_SIZE, c.feat_dim):
            raise ValueError(f"FashionEvaluator: expected item features [B, {OUTFIT_SIZE}, {c.feat_dim}], "
                             f"got {tuple(feats.shape)}")
        f = self.feat_layer(feats.astype(c.dtype))                                     # [B, 4, D]
        i, j = zip(*PAIRS)
        x = jnp.concatenate([f[:, list(i)], f[:, list(j)]], axis=-1)                  # [B, 6, 2D]
        for block in self.emb_layer:
            x = block(x)
        x = jnp.mean(x.astype(jnp.float32), axis=1).astype(c.dtype)                    # [B, 256]
        for block in self.eval_layer:
            x = block(x)
        return self.head(x)[:, 0].astype(jnp.float32)                                  # [B]

    def score(self, feats: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self(feats))
