"""DVBPR: visually-aware BPR ranking (Kang et al. 2017) on a dataset's users' histories; docs/dvbpr.md.

    dualfashion-jax train --config configs/dvbpr.py:tiny,data=demo_out/data --workdir /tmp/dvbpr_tiny
    dualfashion-jax train --config configs/dvbpr.py:demo,out=demo_out --workdir demo_out/dvbpr
    dualfashion-jax train --config configs/dvbpr.py:ifashion,data=/data/ifashion_safe --workdir /ckpt/dvbpr
Sizes: tiny (tests: a small CNN, a few steps, CPU seconds), demo (the synthetic outfits' 8x8x16 latents, or 32 px
images with data.use_latents=False; ~1k steps), ifashion (iFashion / Polyvore-U converted with latents: a wider CNN,
batch 256, the paper's K = 100 and lambda_theta = 1e-3 scale). Expected (demo, CPU): a few ms per step after a few
seconds of compile; pair_acc (training AUC) rises from 0.5 within the first hundred steps.
"""
import ml_collections as mlc

from dualfashion_jax.core import config as cc

common = cc.sibling(__file__, "common")

SIZES = ("tiny", "demo", "ifashion")


def get_config(arg=None):
    size, rest = cc.split_size(arg, SIZES)
    if size == "tiny":
        a = cc.parse_arg(rest, data="demo_out/data", steps=20, batch=16, use_latents="auto")
        data, steps, batch, use_latents = a.data, a.steps, a.batch, a.use_latents
    elif size == "demo":
        a = cc.parse_arg(rest, out="demo_out", steps=1500, batch=64, use_latents="auto")
        data, steps, batch, use_latents = f"{a.out}/data", a.steps, a.batch, a.use_latents
    else:
        a = cc.parse_arg(rest, data="", steps=100_000, batch=256, use_latents="auto")
        data, steps, batch, use_latents = a.data, a.steps, a.batch, a.use_latents
    c = common.base("dvbpr", total_steps=steps, batch_size=batch)
    c.seed = 0
    c.log_every = 5 if size == "tiny" else 50
    c.optim = common.optim(lr=1e-3 if size != "ifashion" else 3e-4, warmup_steps=min(100, max(1, steps // 10)),
                           ema_decay=None)
    c.optim.weight_decay = 1e-4  # DVBPR's lambda on the CNN, as decoupled decay
    c.checkpoint.update(dict(every_steps=steps if size != "ifashion" else 5000, keep=2))
    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    c.sharding.rules = "dp"
    widths = {"tiny": ([8, 16], 32, 16), "demo": ([32, 64, 128], 128, 32),
              "ifashion": ([64, 128, 256, 256], 512, 100)}[size]
    c.model.update(dict(channels=widths[0], hidden=widths[1], embed_dim=widths[2], dtype="float32"))
    # same_category: share of negatives from the positive's category (0 = DVBPR's uniform; docs/dvbpr.md)
    c.data.update(dict(dir=data, split="train", use_latents=use_latents, seed=0, rounds=1, same_category=0.0,
                       cache_items=4096 if size != "ifashion" else 0))
    c.loss = mlc.ConfigDict(dict(user_l2=1e-3 if size == "ifashion" else 1e-4))
    return c
