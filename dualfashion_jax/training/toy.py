"""A toy MMDiT-shaped model, loss and deterministic synthetic data: train infrastructure testable on its own.

Same parameter layout conventions as the real model (stacked LAYERS axis first, EMBED/HEADS/MLP/VOCAB
logical names), a key-dependent loss (noise + a classification head), and a data iterator whose state is
just the step, so checkpoint/resume, sharding and multi-host tests do not depend on other parts.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.data import keys as K
from dualfashion_jax.sharding import axes
from dualfashion_jax.training.tasks import Task


def _p(rngs, init, shape, names):
    return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, jnp.float32))


class ToyModel(nnx.Module):
    """in-proj -> L residual (qkv-like, MLP) layers with stacked params -> vector + logits heads."""

    def __init__(self, features: int, width: int, layers: int, vocab: int, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        lecun, zeros = nnx.initializers.lecun_normal(), nnx.initializers.zeros_init()
        self.dtype = dtype
        self.in_proj = _p(rngs, lecun, (features, width), (axes.PATCH, axes.EMBED))
        self.qkv = _p(rngs, lecun, (layers, width, 3 * width), (axes.LAYERS, axes.EMBED, axes.HEADS))
        self.out = _p(rngs, lecun, (layers, 3 * width, width), (axes.LAYERS, axes.HEADS, axes.EMBED))
        self.mlp_in = _p(rngs, lecun, (layers, width, 4 * width), (axes.LAYERS, axes.EMBED, axes.MLP))
        self.mlp_out = _p(rngs, lecun, (layers, 4 * width, width), (axes.LAYERS, axes.MLP, axes.EMBED))
        self.norm = _p(rngs, nnx.initializers.ones_init(), (width,), (axes.NORM,))
        self.vec_head = _p(rngs, lecun, (width, features), (axes.EMBED, axes.PATCH))
        self.txt_head = _p(rngs, lecun, (width, vocab), (axes.EMBED, axes.VOCAB))
        self.txt_bias = _p(rngs, zeros, (vocab,), (axes.VOCAB,))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = lambda w: w[...].astype(self.dtype)  # noqa: E731  (bf16 compute, fp32 master params)
        h = x.astype(self.dtype) @ c(self.in_proj)  # [B, D]

        def layer(h, ws):
            qkv, out, mi, mo = ws
            h = h + jnp.tanh(h @ qkv) @ out  # [B, D]
            return h + jax.nn.gelu(h @ mi) @ mo, None

        h, _ = jax.lax.scan(layer, h, (c(self.qkv), c(self.out), c(self.mlp_in), c(self.mlp_out)))
        h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h.astype(jnp.float32)), -1, keepdims=True) + 1e-6).astype(h.dtype)
        h = h * c(self.norm)
        vec = (h @ c(self.vec_head)).astype(jnp.float32)  # [B, F]
        logits = (h @ c(self.txt_head)).astype(jnp.float32) + self.txt_bias[...]  # [B, V]
        return vec, logits


def toy_loss(model: ToyModel, frozen: Mapping[str, Any], batch: Mapping[str, jax.Array], key: jax.Array):
    """Noisy regression (flow-matching-like) + cross-entropy; uses `key`, so RNG threading is exercised."""
    x, y, label = batch["x"], batch["y"], batch["label"]
    noise = jax.random.normal(key, x.shape, jnp.float32)  # [B, F]
    vec, logits = model(x + 0.1 * noise)
    mse = jnp.mean(jnp.square(vec - y))
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), label[:, None], axis=-1))
    return mse + 0.2 * ce, {"loss_vec": mse, "loss_txt": ce}


class ToyData:
    """Deterministic synthetic batches: batch k is a pure function of (seed, k); this host's rows only.

    State = {"step": k}, so a restored iterator continues exactly where the checkpoint was taken.
    `nan_at_step` injects a NaN into that batch (for the NaN-guard test).
    """

    def __init__(self, global_batch: int, features: int, vocab: int, seed: int, process_index: int = 0,
                 process_count: int = 1, nan_at_step: int = -1):
        if global_batch % process_count:
            raise ValueError(f"config.batch_size={global_batch} not divisible by {process_count} processes")
        self.b, self.f, self.v, self.seed = global_batch, features, vocab, seed
        self.lo = process_index * global_batch // process_count
        self.hi = (process_index + 1) * global_batch // process_count
        self.nan_at_step = nan_at_step
        self.k = 0

    def get_state(self) -> dict:
        return {"step": self.k}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if "step" not in state:
            raise ValueError(f"toy data iterator state {dict(state)} has no 'step'")
        self.k = int(state["step"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        r = np.random.default_rng([self.seed, self.k])
        x = r.standard_normal((self.b, self.f), dtype=np.float32)
        y = np.sin(x[:, ::-1]).astype(np.float32)
        label = (np.abs(x).argmax(-1) % self.v).astype(np.int32)
        if self.k == self.nan_at_step:
            x[self.b // 2, 0] = np.nan
        ids = np.arange(self.k * self.b, (self.k + 1) * self.b, dtype=np.int64)
        self.k += 1
        s = slice(self.lo, self.hi)
        return {"x": x[s], "y": y[s], "label": label[s], K.IDS: ids[s]}


def build(config) -> Task:
    """The toy Task of `configs/toy_cpu.py` (config.model: features, width, layers, vocab, dtype)."""
    m = config.model
    dtype = {"float32": "float32", "bfloat16": "bfloat16"}[m.dtype]
    return Task(
        model_factory=lambda rngs: ToyModel(m.features, m.width, m.layers, m.vocab, dtype=dtype, rngs=rngs),
        frozen={},
        loss_fn=toy_loss,
        make_data=lambda pi, pc: ToyData(config.batch_size, m.features, m.vocab, config.data.seed, pi, pc,
                                         nan_at_step=config.data.get("nan_at_step", -1)),
        global_batch=config.batch_size,
    )
