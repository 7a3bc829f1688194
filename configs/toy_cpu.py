"""Toy model + synthetic arrays: exercises the whole train loop in seconds on CPU (used by the tests).

    dualfashion-jax train --config configs/toy_cpu.py --workdir /tmp/toy [--config.total_steps=20]
Expected: ~1 s/step after a ~5 s compile on a laptop CPU; the loss falls from ~2.3.
"""
from dualfashion_jax.core import config as cc

common = cc.sibling(__file__, "common")


def get_config(arg=None):
    a = cc.parse_arg(arg, steps=6, batch=16)
    c = common.base("toy", total_steps=a.steps, batch_size=a.batch)
    c.optim = common.optim(lr=1e-3, warmup_steps=2, ema_decay=0.9, ema_start_step=2)
    c.model.update(dict(features=8, width=32, layers=2, vocab=16, dtype="float32"))
    c.data.update(dict(seed=0, nan_at_step=-1))
    c.checkpoint.update(dict(every_steps=3, keep=3))
    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    return c
