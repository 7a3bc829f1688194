"""Stage 3 demo: tiny MMDiT + seeded random frozen T5 on the built-in synthetic dataset, CPU, a few minutes.

Run (after `dualfashion-jax data make-demo` and a test tokenizer; `dualfashion-jax demo` does all of it):
    dualfashion-jax train --config configs/stage3_demo.py:data=demo_out/data,tokenizer=demo_out/tokenizer,init_from=demo_out/stage2 \
        --workdir demo_out/stage3
Expected: ~0.1-0.3 s/step on a laptop CPU after a ~20 s compile; the loss falls within the first 100 steps.
The demo uses lr 1e-3 with a 20-step warm-up (the paper's 3e-5 would not move a random tiny model in minutes).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg=None):
    a = common.parse_arg(arg, data="demo_out/data", tokenizer="demo_out/tokenizer", init_from="demo_out/stage2", steps=200,
                         batch=8, max_length=32)
    c = common.base("stage3", total_steps=a.steps, batch_size=a.batch)
    c.seed = 1234
    c.log_every = 10
    c.optim = common.optim(lr=1e-3, warmup_steps=20, ema_decay=None)
    c.checkpoint.update(dict(every_steps=100, keep=2))
    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    c.sharding.rules = "dp"
    common.stage_blocks(c, model="tiny", dtype="float32", t5="tiny", t5_checkpoint="", vae="tiny", vae_checkpoint="",
                        data=a.data, tokenizer=a.tokenizer)
    c.data.max_length = a.max_length
    c.model.vocab_from_tokenizer = True
    c.model.latent_from_data = True  # latent size from the dataset's latents (or image size / VAE factor)
    c.init_from = a.init_from  # stage-2 workdir (params only; new modules keep their init)
    c.init_from_ema = True  # start from stage 2's EMA weights (generation reads stage 3's raw params)
    return c
