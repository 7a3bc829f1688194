"""Optimizer (spec §4): AdamW + linear warm-up then constant lr, global-norm clip, and a parameter EMA.

`optim.decay="cosine"` (not in the original, which keeps the lr constant) anneals the lr after the warm-up to
`lr * final_lr_ratio` at `total_steps`: short runs (the CPU demo) reach a lower loss with it.

Differences from the PyTorch original, on purpose: fp32 master params and fp32 Adam moments (§7.2 item 3),
gradient accumulation averages micro-batch gradients (done in `step.py`, §7.2 item 5), and the EMA is a
copy of the params until `ema_start_step` and then decays every step (§7.2 item 2).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

LR_DECAYS = ("constant", "cosine")


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
    parts.append(optax.adamw(sched, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
                             weight_decay=float(cfg.weight_decay)))
    return optax.chain(*parts), sched


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float, start_step: int) -> Any:
    """EMA after the update that produced `params` at `step` (the 1-based count of finished steps).

    Before `start_step` the EMA tracks the params exactly (a copy), afterwards
    ema <- decay * ema + (1 - decay) * params, computed in fp32.
    """
    active = step > start_step
    d = jnp.where(active, jnp.float32(decay), jnp.float32(0.0))
    return jax.tree.map(lambda e, p: (d * e.astype(jnp.float32) + (1 - d) * p.astype(jnp.float32)).astype(e.dtype),
                        ema, params)
