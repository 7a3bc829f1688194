"""A synthetic DualMMDiT train step for perf tools: training's own state spec (`train.build_state_spec`) and
jitted, sharded step (`training/step.py`) on random latents + "T5" states; only the batch is synthetic.

One optimizer update (AdamW, clip 2.0, EMA) on a rectified-flow x0 loss (image head) + cross-entropy over
the text head on the first `text_logits_len` text tokens. Frozen encoders and data are excluded by design
(jax_anchors.md §5.2). `lower_step` lowers/compiles on abstract arrays (no allocation: usable for sd3_medium
on CPU), `run_step` allocates and times it. Used by `memory.py`, the FLOPs cross-check and benchmarks/.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from dualfashion_jax.diffusion import flow, losses, masked_text
from dualfashion_jax.models import mmdit
from dualfashion_jax.models.mmdit_config import MMDiTConfig
from dualfashion_jax.sharding import activations, mesh as mesh_lib, partition, rules as rules_lib
from dualfashion_jax.training import step as step_lib, tasks, train

OPTIM = dict(lr=3e-5, warmup_steps=2000, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, clip_norm=2.0,
             ema_decay=0.9999, ema_start_step=0)


@dataclasses.dataclass(frozen=True)
class StepShape:
    """The per-step workload: global batch, text tokens fed to the trunk, text tokens kept for the text head."""

    batch: int
    txt_len: int = 256
    text_logits_len: int | None = None  # None = all txt_len tokens

    def __post_init__(self):
        if self.batch < 1 or self.txt_len < 1:
            raise ValueError(f"StepShape: batch and txt_len must be >= 1, got {self.batch}, {self.txt_len}")
        if self.text_logits_len is not None and not 0 < self.text_logits_len <= self.txt_len:
            raise ValueError(f"StepShape.text_logits_len {self.text_logits_len} outside 1..{self.txt_len}")

    @property
    def kept(self) -> int:
        return self.txt_len if self.text_logits_len is None else self.text_logits_len


def loss_fn(model, frozen, b, key, *, kept: int):
    """x0-space flow loss on the image head + 0.2 * CE on the first `kept` text logits (both heads run); the
    flow terms are diffusion/'s own (`flow.add_noise`, `losses.flow_x0_loss`)."""
    del frozen
    x0 = b["latents"]  # [B, H, W, C]
    sigma = jax.random.uniform(key, (x0.shape[0],))
    x_in = flow.add_noise(x0, jax.random.normal(jax.random.fold_in(key, 1), x0.shape), sigma)
    v, logits = model(x_in, b["txt"], sigma * 1000.0, text_logits_len=kept)  # logits [B, kept, V]
    l_img = jnp.mean(losses.flow_x0_loss(v, x_in, x0, sigma))
    ce = -jnp.mean(masked_text.pick(jax.nn.log_softmax(logits), b["ids"][:, :kept]))
    return l_img + 0.2 * ce, {}


def _setup(cfg: MMDiTConfig, shape: StepShape, mesh, rules_name: str) -> train.StateSpec:
    """The train state exactly as `training/train.py` builds it (`build_state_spec`) for this model."""
    config = mlc.ConfigDict({"seed": 0, "total_steps": 0, "optim": OPTIM})
    task = tasks.Task(model_factory=lambda rngs: mmdit.DualMMDiT(cfg, rngs=rngs), frozen={},
                      loss_fn=lambda *a: loss_fn(*a, kept=shape.kept), make_data=None, global_batch=shape.batch)
    return train.build_state_spec(config, task, mesh, rules_lib.get(rules_name))


def _batch_shapes(cfg: MMDiTConfig, shape: StepShape) -> dict[str, tuple[tuple[int, ...], Any]]:
    h, w = cfg.latent_hw
    return {"latents": ((shape.batch, h, w, cfg.in_channels), jnp.float32),
            "txt": ((shape.batch, shape.txt_len, cfg.joint_attention_dim), jnp.float32),
            "ids": ((shape.batch, shape.txt_len), jnp.int32)}


def make_mesh(rules_name: str, devices=None):
    """The mesh a rules preset implies over `devices`: dp -> all on `data`, fsdp/fsdp_tp -> all on `fsdp`."""
    return mesh_lib.make_mesh({"data": -1} if rules_name == "dp" else {"fsdp": -1}, devices)


def build(cfg: MMDiTConfig, shape: StepShape, *, rules_name: str = "fsdp", mesh=None):
    """(jitted step, abstract state, abstract batch, init_fn, mesh) for the synthetic step on `mesh`."""
    mesh = mesh if mesh is not None else make_mesh(rules_name)
    partition.check_batch_divisible(shape.batch, mesh, "StepShape.batch")
    spec = _setup(cfg, shape, mesh, rules_name)
    ssh, init = spec.shardings, spec.init
    fn = step_lib.jit_step(
        step_lib.make_step_fn(spec.graphdef, {}, lambda *a: loss_fn(*a, kept=shape.kept), spec.tx, spec.schedule,
                              mlc.ConfigDict(OPTIM), 1, mesh),
        ssh, partition.batch_sharding(mesh), {}, mesh)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), spec.abstract, ssh)
    bsh = partition.batch_sharding(mesh)
    abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=bsh) for k, (s, d) in _batch_shapes(cfg, shape).items()}
    return fn, abstract_state, abstract_batch, lambda: partition.sharded_init(init, ssh), mesh


def lower_step(cfg: MMDiTConfig, shape: StepShape, *, rules_name: str = "fsdp", mesh=None):
    """AOT-compiles the step on abstract arrays: returns `(compiled, compile_seconds)`; nothing is allocated."""
    fn, st, b, _, mesh = build(cfg, shape, rules_name=rules_name, mesh=mesh)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), activations.use_rules(rules_lib.get(rules_name)):
        compiled = fn.lower(st, b, {}).compile()
    return compiled, time.perf_counter() - t0


def run_step(cfg: MMDiTConfig, shape: StepShape, *, rules_name: str = "fsdp", mesh=None, warmup: int = 2,
             iters: int = 5, seed: int = 0) -> dict[str, Any]:
    """Allocates and times the step: {"step_s", "compile_s", "compiled"} (steady state, outputs blocked on)."""
    if iters < 1:
        raise ValueError(f"run_step: iters must be >= 1, got {iters}")
    fn, _, _, init, mesh = build(cfg, shape, rules_name=rules_name, mesh=mesh)
    rng = np.random.default_rng(seed)
    host = {k: (rng.integers(0, cfg.vocab_size, s).astype(np.int32) if d == jnp.int32
                else rng.standard_normal(s).astype(np.float32)) for k, (s, d) in _batch_shapes(cfg, shape).items()}
    with jax.set_mesh(mesh), activations.use_rules(rules_lib.get(rules_name)):
        batch = partition.put_batch(host, mesh)
        state = init()
        t0 = time.perf_counter()
        compiled = fn.lower(state, batch, {}).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(warmup):
            state, m = compiled(state, batch, {})
            jax.block_until_ready(m["loss"])
        t0 = time.perf_counter()
        for _ in range(iters):
            state, m = compiled(state, batch, {})
        jax.block_until_ready(m["loss"])
    return {"step_s": (time.perf_counter() - t0) / iters, "compile_s": compile_s, "compiled": compiled,
            "loss": float(m["loss"])}
