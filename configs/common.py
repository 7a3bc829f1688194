"""Shared config pieces: `parse_arg` for `--config file.py:key=val,...` and the default training blocks."""
from __future__ import annotations

import ml_collections as mlc


def parse_arg(arg: str | None, **defaults):
    """'runlocal,steps=10' -> ConfigDict(runlocal=True, steps=10); types follow `defaults` (big_vision)."""
    out = mlc.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        if not item:
            continue
        key, _, val = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config arg {key!r} unknown; expected one of {sorted(defaults)}")
        d = defaults[key]
        if not _:
            out[key] = True
        elif isinstance(d, bool):
            out[key] = val.lower() in ("1", "true", "yes")
        else:
            out[key] = type(d)(val) if d is not None else val
    return out


def optim(lr: float = 3e-5, warmup_steps: int = 2000, ema_decay: float | None = 0.9999,
          ema_start_step: int = 100_000) -> mlc.ConfigDict:
    """AdamW as spec §4: b=(0.9, 0.999), eps 1e-8, wd 1e-2 on all params, clip 2.0, linear warm-up."""
    return mlc.ConfigDict(dict(lr=lr, warmup_steps=warmup_steps, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2,
                               clip_norm=2.0, ema_decay=ema_decay, ema_start_step=ema_start_step))


def base(stage: str, total_steps: int, batch_size: int) -> mlc.ConfigDict:
    """Fields every training config has; stage configs fill `model`, `data` and override the rest."""
    c = mlc.ConfigDict()
    c.stage = stage
    c.seed = 0
    c.total_steps = total_steps
    c.batch_size = batch_size          # global rows per optimizer step
    c.grad_accum = 1                   # micro-batches per step (gradients averaged)
    c.log_every = 1
    c.tensorboard = True
    c.progress_bar = True
    c.init_from = ""                   # previous stage's workdir (params only); "" = from scratch
    c.init_from_ema = False
    c.debug_step_delay_s = 0.0
    c.optim = optim()
    c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = mlc.ConfigDict(dict(rules="fsdp", overrides={}))
    c.checkpoint = mlc.ConfigDict(dict(every_steps=2500, keep=3, async_save=True))
    c.model = mlc.ConfigDict()
    c.data = mlc.ConfigDict()
    return c
