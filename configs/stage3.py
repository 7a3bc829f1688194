"""Stage 3: caption refinement on augmented captions, no EMA (spec §4); sizes in common.py. Starts from the stage-2
workdir (`init_from`; tiny and the demo sizes start from its EMA weights, generation reads stage 3's raw params).

    dualfashion-jax train --config configs/stage3.py:tiny,data=demo_out/data,tokenizer=demo_out/tokenizer,init_from=demo_out/stage2 \
        --workdir demo_out/stage3
    dualfashion-jax train --config configs/stage3.py:demo,out=demo_out --workdir demo_out/stage3  # the demo's stage 3
    dualfashion-jax train --config configs/stage3.py:sd3_medium,data=/data/ifashion_safe,tokenizer=/ckpt/sd3/tokenizer_3,t5=/ckpt/t5_xxl_jax,vae=/ckpt/sd3_vae_jax,init_from=/ckpt/stage2 \
        --workdir /ckpt/stage3
Expected: as stage1.py. sd3_medium: global batch 1, a checkpoint every 2000 steps.
"""
from dualfashion_jax.core import config as cc

common = cc.sibling(__file__, "common")

STEPS = dict(tiny=200, demo=20, demo_quality=20, demo_fast=4, sd3_medium=100000)
BATCH = dict(tiny=8, demo=16, demo_quality=16, demo_fast=8, sd3_medium=1)


def get_config(arg=None):
    size, rest = cc.split_size(arg, common.SIZES)
    c = common.stage(3, size, rest, steps=STEPS[size], batch=BATCH[size], seed=1234, ema=False,
                     init_from="/ckpt/stage2")
    if size == "sd3_medium":
        c.checkpoint.every_steps = 2000
    else:
        c.init_from_ema = True  # start from stage 2's EMA weights
    if size in common.DEMO_MODEL:
        c.optim.lr = 2e-4
    return c
