"""Optimizer (spec §4): AdamW + linear warm-up then constant lr, global-norm clip, and a parameter EMA.

`optim.decay="cosine"` (not in the original, which keeps the lr constant) anneals the lr after the warm-up to
`lr * final_lr_ratio` at `total_steps`: short runs (the CPU demo) reach a lower loss with it.

Differences from the PyTorch original, on purpose: fp32 master params and fp32 Adam moments (§7.2 item 3;
the original's bf16 params/moments: `optim.param_dtype` / `optim.state_dtype = "bfloat16"`, updated by
`torch_adamw` with torch's op order and a rounding after every op), gradient accumulation averages micro-batch
gradients (`step.py`, §7.2 item 5; the original's sum: `optim.grad_accum_reduce="sum"`), and the EMA is a
copy of the params until `ema_start_step` and then decays every step (§7.2 item 2).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

LR_DECAYS = ("constant", "cosine")
ACCUM_REDUCES = ("mean", "sum")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def grad_accum_reduce(cfg) -> str:
    """`config.optim.grad_accum_reduce`: "mean" (default) or "sum" (the original, spec §7.2 item 5)."""
    v = str(cfg.get("grad_accum_reduce", "mean"))
    if v not in ACCUM_REDUCES:
        raise ValueError(f"config.optim.grad_accum_reduce: expected one of {ACCUM_REDUCES}, got {v!r}")
    return v


def storage_dtype(cfg, field: str):
    """`config.optim.param_dtype` / `state_dtype`: "float32" (default) or "bfloat16" (the original, §7.2 item 3)."""
    v = str(cfg.get(field, "float32"))
    if v not in DTYPES:
        raise ValueError(f"config.optim.{field}: expected one of {sorted(DTYPES)}, got {v!r}")
    return DTYPES[v]


def lr_schedule(lr: float, warmup_steps: int, decay: str = "constant", total_steps: int = 0,
                final_lr_ratio: float = 0.0) -> optax.Schedule:
    """lr * min(1, (count + 1) / warmup): torch LambdaLR-style warm-up (step 0 already moves), then constant
    (`decay="constant"`, the original) or a cosine from lr at the warm-up's end to lr * final_lr_ratio at
    `total_steps` (`decay="cosine"`)."""
    if lr <= 0:
        raise ValueError(f"config.optim.lr must be > 0, got {lr}")
    if warmup_steps < 0:
        raise ValueError(f"config.optim.warmup_steps must be >= 0, got {warmup_steps}")
    if decay not in LR_DECAYS:
        raise ValueError(f"config.optim.decay: expected one of {LR_DECAYS}, got {decay!r}")
    if decay == "cosine" and total_steps <= warmup_steps:
        raise ValueError(f"config.optim.decay='cosine' needs config.total_steps ({total_steps}) > "
                         f"config.optim.warmup_steps ({warmup_steps})")
    if not 0.0 <= final_lr_ratio <= 1.0:
        raise ValueError(f"config.optim.final_lr_ratio must be in [0, 1], got {final_lr_ratio}")

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = jnp.float32(1.0) if warmup_steps == 0 else jnp.minimum(1.0, (count + 1.0) / warmup_steps)
        if decay == "constant":
            return lr * warm
        frac = jnp.clip((count - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
        cos = final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return lr * warm * cos

    return schedule


def make_optimizer(cfg, total_steps: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds clip(global norm) -> AdamW(b1, b2, eps, wd on all params) from `config.optim`.

    Returns the transformation and its schedule (the step logs `lr` from the schedule).
    """
    sched = lr_schedule(float(cfg.lr), int(cfg.warmup_steps), str(cfg.get("decay", "constant")), int(total_steps),
                        float(cfg.get("final_lr_ratio", 0.0)))
    parts = []
    if cfg.clip_norm is not None and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
    adam = dict(b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps), weight_decay=float(cfg.weight_decay))
    state_dtype = storage_dtype(cfg, "state_dtype")
    if storage_dtype(cfg, "param_dtype") == jnp.float32 and state_dtype == jnp.float32:
        parts.append(optax.adamw(sched, **adam))
    else:  # the original's bf16 storage: torch's AdamW arithmetic, rounded to the storage dtypes
        parts.append(torch_adamw(sched, state_dtype=state_dtype, **adam))
    return optax.chain(*parts), sched


def _round_to(x: jax.Array, dtype) -> jax.Array:
    """fp32 `x` rounded (nearest-even) to `dtype`'s precision, kept fp32: unlike an f32->bf16->f32 convert pair,
    `reduce_precision` is not elided by XLA's excess-precision simplification."""
    if jnp.dtype(dtype) == jnp.float32:
        return x
    fi = jnp.finfo(dtype)
    return jax.lax.reduce_precision(x, exponent_bits=fi.nexp, mantissa_bits=fi.nmant)


class TorchAdamWState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def torch_adamw(learning_rate: optax.Schedule, b1: float, b2: float, eps: float, weight_decay: float,
                state_dtype=jnp.bfloat16) -> optax.GradientTransformation:
    """torch.optim.AdamW (foreach, CUDA) on low-precision tensors: each in-place op computes in fp32 and rounds to
    the dtype of the tensor it writes (params: their dtype, moments: `state_dtype`), in torch's order:
      p = p * (1 - lr wd);  m = m + (1 - b1)(g - m) [lerp];  v = v b2;  v = v + (1 - b2) g g;
      d = sqrt(v);  d = d / sqrt(1 - b2^t);  d = d + eps;  p = p - lr / (1 - b1^t) * (m / d).
    Returns `new_p - p` in fp32, which `optax.apply_updates` adds back to `p` exactly."""
    f32 = jnp.float32

    def init(params):
        zeros = lambda p: jnp.zeros(p.shape, state_dtype)  # noqa: E731
        return TorchAdamWState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(grads, state, params):
        if params is None:
            raise ValueError("torch_adamw needs the params (decoupled weight decay)")
        count = state.count + 1
        lr = jnp.asarray(learning_rate(state.count), f32)
        t = count.astype(f32)
        step_size = lr / (1 - jnp.power(f32(b1), t))
        bc2_sqrt = jnp.sqrt(1 - jnp.power(f32(b2), t))

        def one(g, p, m, v):
            g, pd = g.astype(f32), p.dtype
            rp = lambda x: _round_to(x, pd)  # noqa: E731
            rs = lambda x: _round_to(x, state_dtype)  # noqa: E731
            q = rp(p.astype(f32) * (1 - lr * weight_decay))
            m = m.astype(f32)
            m = rs(m + f32(1 - b1) * (g - m))
            v = rs(v.astype(f32) * f32(b2))
            v = rs(v + f32(1 - b2) * g * g)
            d = rs(rs(rs(jnp.sqrt(v)) / bc2_sqrt) + f32(eps))
            new_p = rp(q - step_size * (m / d))  # addcdiv
            return new_p - p.astype(f32), m.astype(state_dtype), v.astype(state_dtype)

        out = jax.tree.map(one, grads, params, state.mu, state.nu)
        treedef = jax.tree.structure(grads)
        upd, mu, nu = (jax.tree.unflatten(treedef, [leaf[i] for leaf in treedef.flatten_up_to(out)])
                       for i in range(3))
        return upd, TorchAdamWState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float, start_step: int) -> Any:
    """EMA after the update that produced `params` at `step` (the 1-based count of finished steps).

    Before `start_step` the EMA tracks the params exactly (a copy), afterwards
    ema <- decay * ema + (1 - decay) * params, computed in fp32.
    """
    active = step > start_step
    d = jnp.where(active, jnp.float32(decay), jnp.float32(0.0))
    return jax.tree.map(lambda e, p: (d * e.astype(jnp.float32) + (1 - d) * p.astype(jnp.float32)).astype(e.dtype),
                        ema, params)
