"""What the stage configs share: the training config's default blocks (`base`, `optim`, `stage_blocks`) and the
per-size blocks (`stage`) that `stage1.py` / `stage2.py` / `stage3.py` build on with their own numbers.

Sizes (the argument after the colon: `--config configs/stage2.py:demo[,key=value...]`):
  tiny          tiny MMDiT + tiny random frozen T5 on a synthetic dataset, CPU, a few minutes (tests, smoke runs);
                args data, tokenizer, init_from, steps, batch, max_length. lr 1e-3 with a 20-step warm-up (the
                paper's 3e-5 would not move a random tiny model in minutes); EMA 0.99 from the first step.
  demo          what `dualfashion-jax demo` trains (docs/demo.md): tiny's blocks, 4 x (2 heads x 32) MMDiT with
                patch 1, the frozen random `small_demo` T5, 24-token texts, batch 16, the stand-in VAE; arg
                out=OUT (the demo folder: OUT/data, OUT/tokenizer, OUT/vae, OUT/stage<n-1>), steps, batch.
  demo_quality  `demo --quality`: the demo with longer stages 1 and 2.
  demo_fast     `demo --fast`: the test-sized demo (2 x (2 heads x 16), a few steps, batch 8).
  sd3_medium    the paper's scale: SD3-medium MMDiT (24 x 1536), frozen T5-XXL, 512 px (64x64x16 latents),
                spec §4 optimizer; args data, tokenizer, t5, vae, init_from, steps, batch, accum.
"""
import os

import ml_collections as mlc

from dualfashion_jax.core import config as cc
from dualfashion_jax.models import t5 as t5_lib

SIZES = ("tiny", "demo", "demo_quality", "demo_fast", "sd3_medium")
DEMO_T5 = "small_demo"  # frozen random T5 (d_model 64)
# the stand-in VAE (configs/demo.py `vae`): 32 px folded VAE_FACTOR x VAE_FACTOR, projected on the top
# DEMO_LATENT_CHANNELS principal directions of those blocks; the MMDiT's in/out channels follow it
DEMO_VAE_FACTOR = 4
DEMO_LATENT_CHANNELS = 16
# demo MMDiT: 64 wide, 2 heads x 32 run ~1.3x faster than 4 x 16 on CPU; patch 1 on the 8 x 8 latents = 64 tokens.
# The layer loop stays scanned: unrolled, the step is 5-12 % faster but each program compiles 5-10 s longer, and
# whole stage runs came out level within their noise (docs/performance.md §8, fourth pass)
_LATENT = dict(patch_size=1, in_channels=DEMO_LATENT_CHANNELS, out_channels=DEMO_LATENT_CHANNELS)
DEMO_MODEL = {"demo": dict(num_layers=4, num_heads=2, head_dim=32, matching_hidden=64, **_LATENT),
              "demo_quality": dict(num_layers=4, num_heads=2, head_dim=32, matching_hidden=64, **_LATENT),
              "demo_fast": dict(num_layers=2, num_heads=2, head_dim=16, matching_hidden=32, **_LATENT)}
DEMO_MAX_LENGTH = 24  # tokens per text segment (4-key captions and preferences <= 23)


def optim(lr: float = 3e-5, warmup_steps: int = 2000, ema_decay: float | None = 0.9999,
          ema_start_step: int = 100_000, decay: str = "constant") -> mlc.ConfigDict:
    """AdamW as spec §4: b=(0.9, 0.999), eps 1e-8, wd 1e-2 on all params, clip 2.0, linear warm-up, then a
    constant lr (`decay="constant"`, the original) or a cosine to `final_lr_ratio * lr` at the last step.

    Original behaviours kept behind flags (docs/faithfulness.md): `param_dtype` / `state_dtype` "bfloat16" (the
    original's bf16 params and AdamW moments) and `grad_accum_reduce="sum"` (micro-batch gradients summed)."""
    # no EMA: None typed as a float (`placeholder`), so `--config.optim.ema_decay=0.999` can still switch it on
    ema_decay = mlc.config_dict.placeholder(float) if ema_decay is None else ema_decay
    return mlc.ConfigDict(dict(lr=lr, warmup_steps=warmup_steps, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2,
                               clip_norm=2.0, ema_decay=ema_decay, ema_start_step=ema_start_step, decay=decay,
                               final_lr_ratio=0.0, param_dtype="float32", state_dtype="float32",
                               grad_accum_reduce="mean"))


def base(stage: str, total_steps: int, batch_size: int) -> mlc.ConfigDict:
    """Fields every training config has; stage configs fill `model`, `data` and override the rest."""
    c = mlc.ConfigDict()
    c.stage = stage
    c.seed = 0
    c.total_steps = total_steps
    c.batch_size = batch_size          # global rows per optimizer step
    c.grad_accum = 1                   # micro-batches per step (gradients averaged; optim.grad_accum_reduce)
    c.log_every = 1
    c.tensorboard = True
    c.progress_bar = True
    c.init_from = ""                   # previous stage's workdir (params only); "" = from scratch
    c.init_from_ema = False
    c.debug_step_delay_s = 0.0
    c.optim = optim()
    c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))  # dcn_data: slices/nodes over `data`
    c.sharding = mlc.ConfigDict(dict(rules="fsdp", overrides={}))
    c.checkpoint = mlc.ConfigDict(dict(every_steps=2500, keep=3, async_save=True))
    c.model = mlc.ConfigDict()
    c.data = mlc.ConfigDict()
    return c


def stage_blocks(c: mlc.ConfigDict, *, model: str, dtype: str, t5: str, t5_checkpoint: str, vae: str,
                 vae_checkpoint: str, data: str, tokenizer: str) -> mlc.ConfigDict:
    """The real-model blocks shared by stage configs: model, frozen T5/VAE, data, loss (LossConfig defaults)."""
    c.model = mlc.ConfigDict(dict(preset=model, dtype=dtype, attention_backend="xla", remat_policy="none",
                                  vocab_from_tokenizer=False, latent_from_data=False,
                                  stage3_drop_stage2=False,  # True: the original's stage 3 (no r_t/r_c/MLP)
                                  overrides={}))
    # frozen encoders: stored in the compute dtype (the original loads T5/VAE in bf16); never optimized
    c.t5 = mlc.ConfigDict(dict(preset=t5, checkpoint=t5_checkpoint, dtype=dtype, param_dtype=dtype, seed=0,
                               overrides={}))
    c.vae = mlc.ConfigDict(dict(preset=vae, checkpoint=vae_checkpoint, dtype=dtype, param_dtype=dtype, seed=0,
                                overrides={}))
    c.data = mlc.ConfigDict(dict(dir=data, tokenizer=tokenizer, max_length=256, use_latents="auto", seed=0,
                                 split="train", n_aug=0))
    c.loss = mlc.ConfigDict(dict(caption_weight=0.2, text_dropout=0.1, matching_lambda=0.1, context_dropout=0.5,
                                 preference_dropout=0.5, preference_dropout_mode="per_sample",
                                 text_loss_norm="batch_len", stage3_loss="brier",
                                 real_caption_ratio=-1.0))  # stage-1 t2i: P(structured caption), -1 = never
    return c


def stage(stage: int, size: str, arg: str, *, steps: int, batch: int, seed: int, ema: bool, accum: int = 1,
          init_from: str = "") -> mlc.ConfigDict:
    """Stage `stage`'s config at `size` with its default `steps` / `batch` (see the module docstring); `ema`:
    whether the stage keeps an EMA (stage 3 does not); `init_from`: the sd3_medium run's previous stage."""
    if size == "sd3_medium":
        return _sd3_medium(stage, arg, steps=steps, batch=batch, seed=seed, ema=ema, accum=accum, init_from=init_from)
    prev = f"stage{stage - 1}" if stage > 1 else ""
    if size == "tiny":
        a = cc.parse_arg(arg, data="demo_out/data", tokenizer="demo_out/tokenizer",
                         init_from=f"demo_out/{prev}" if prev else "", steps=steps, batch=batch, max_length=32)
        return _tiny(stage, a, seed=seed, ema=ema)
    a = cc.parse_arg(arg, out="demo_out", steps=steps, batch=batch)
    t = mlc.ConfigDict(dict(data=os.path.join(a.out, "data"), tokenizer=os.path.join(a.out, "tokenizer"),
                            init_from=os.path.join(a.out, prev) if prev else "", steps=a.steps, batch=a.batch,
                            max_length=DEMO_MAX_LENGTH))
    c = _tiny(stage, t, seed=seed, ema=ema)
    c.optim.warmup_steps = min(int(c.optim.warmup_steps), max(1, a.steps // 10))
    if ema:
        c.optim.ema_start_step = min(int(c.optim.ema_start_step), a.steps // 2)
    c.checkpoint.every_steps = a.steps  # one checkpoint, at the end (and on SIGTERM)
    c.log_every = 1 if a.steps <= 100 else int(c.log_every)
    c.t5.preset = DEMO_T5
    if size == "demo_fast":  # configs/demo.py: the fast plan pretrains the stand-in T5 into OUT/t5 (phase `t5`)
        c.t5.checkpoint = os.path.join(a.out, "t5")
    c.vae.checkpoint = os.path.join(a.out, "vae")  # generation decodes with the stand-in VAE (training reads latents)
    # Stages 1-2 (hundreds of steps) unroll the layer loop: a ~13 % faster step for ~3 s more compile; stage 3 (the
    # sampler's config, 20 steps) and the fast plan keep the scan, whose programs compile faster (docs/demo.md).
    c.model.overrides = dict(DEMO_MODEL[size], joint_attention_dim=t5_lib.get_config(DEMO_T5).d_model,
                             scan_layers=not (stage in (1, 2) and size != "demo_fast"))
    return c


def _tiny(stage: int, a: mlc.ConfigDict, *, seed: int, ema: bool) -> mlc.ConfigDict:
    c = base(f"stage{stage}", total_steps=a.steps, batch_size=a.batch)
    c.seed = seed
    c.log_every = 10
    # EMA 0.99 from the first step: a ~100-step average, short enough for a run of a few hundred steps
    c.optim = optim(lr=1e-3, warmup_steps=20, ema_decay=0.99, ema_start_step=0) if ema else \
        optim(lr=1e-3, warmup_steps=20, ema_decay=None)
    c.checkpoint.update(dict(every_steps=100, keep=2))
    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    c.sharding.rules = "dp"
    stage_blocks(c, model="tiny", dtype="float32", t5="tiny", t5_checkpoint="", vae="tiny", vae_checkpoint="",
                 data=a.data, tokenizer=a.tokenizer)
    c.data.max_length = a.max_length
    c.model.vocab_from_tokenizer = True
    c.model.latent_from_data = True  # latent size from the dataset's latents (or image size / VAE factor)
    c.init_from = a.init_from  # previous stage's workdir (params only; new modules keep their init)
    return c


def _sd3_medium(stage: int, arg: str, *, steps: int, batch: int, seed: int, ema: bool, accum: int,
                init_from: str) -> mlc.ConfigDict:
    """AdamW(0.9, 0.999, eps 1e-8), lr 3e-5 (2000 warm-up steps, then constant), wd 1e-2, clip 2.0, gradients of
    `accum` micro-batches AVERAGED, fp32 master params/moments, bf16 compute, FSDP over every device."""
    a = cc.parse_arg(arg, data="", tokenizer="", t5="", vae="", init_from=init_from, steps=steps, batch=batch,
                     accum=accum)
    c = base(f"stage{stage}", total_steps=a.steps, batch_size=a.batch)
    c.seed = seed
    c.grad_accum = a.accum
    c.log_every = 10
    c.optim = optim(lr=3e-5, warmup_steps=2000, ema_decay=0.9999, ema_start_step=100_000) if ema else \
        optim(lr=3e-5, warmup_steps=2000, ema_decay=None)
    c.checkpoint.update(dict(every_steps=2500, keep=3))
    c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    c.sharding.rules = "fsdp"
    stage_blocks(c, model="sd3_medium", dtype="bfloat16", t5="t5_v1_1_xxl", t5_checkpoint=a.t5, vae="sd3",
                 vae_checkpoint=a.vae, data=a.data, tokenizer=a.tokenizer)
    c.model.remat_policy = "dots_with_no_batch_dims"
    c.init_from = a.init_from
    return c
