"""Stage 2 at the paper's scale: SD3-medium MMDiT (24 x 1536), frozen T5-XXL, 512 px (64x64x16 latents).

Run (one host; see launch/ for SLURM / TPU pods):
    dualfashion-jax train --config configs/stage2_sd3_medium.py:data=/data/ifashion_safe,tokenizer=/ckpt/sd3/tokenizer_3,t5=/ckpt/t5_xxl_jax,vae=/ckpt/sd3_vae_jax,init_from=/ckpt/stage1 \
        --workdir /ckpt/stage2
Optimizer as spec §4: AdamW(0.9, 0.999, eps 1e-8), lr 3e-5 (2000 warm-up steps, then constant), wd 1e-2,
clip 2.0, global batch 1 in 1 micro-batch(es) (gradients AVERAGED), fp32 master params/moments, bf16 compute.
total_steps = the released checkpoint's step. The batch is split over data*fsdp devices: on N devices use
--config.batch_size=<multiple of N>. T5/VAE come from `dualfashion-jax convert {t5,vae}` (frozen, not optimized);
the VAE is only used when the dataset has no pre-encoded latents (`dualfashion-jax encode-latents`).
Expected speed: see BENCHMARKS.md (benchmarks/train_step.py --device gpu --config sd3_medium).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg=None):
    a = common.parse_arg(arg, data="", tokenizer="", t5="", vae="", init_from="/ckpt/stage1", steps=57500, batch=1, accum=1)
    c = common.base("stage2", total_steps=a.steps, batch_size=a.batch)
    c.seed = 971011
    c.grad_accum = a.accum
    c.log_every = 10
    c.optim = common.optim(lr=3e-5, warmup_steps=2000, ema_decay=0.9999, ema_start_step=100_000)
    c.checkpoint.update(dict(every_steps=2500, keep=3))
    c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    c.sharding.rules = "fsdp"
    common.stage_blocks(c, model="sd3_medium", dtype="bfloat16", t5="t5_v1_1_xxl", t5_checkpoint=a.t5, vae="sd3",
                        vae_checkpoint=a.vae, data=a.data, tokenizer=a.tokenizer)
    c.model.remat_policy = "dots_with_no_batch_dims"
    c.init_from = a.init_from  # stage-1 workdir (params only; new modules keep their init)
    return c
