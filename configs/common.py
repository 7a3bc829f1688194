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
          ema_start_step: int = 100_000, decay: str = "constant") -> mlc.ConfigDict:
    """AdamW as spec §4: b=(0.9, 0.999), eps 1e-8, wd 1e-2 on all params, clip 2.0, linear warm-up, then a
    constant lr (`decay="constant"`, the original) or a cosine to `final_lr_ratio * lr` at the last step.

    Original behaviours kept behind flags (docs/faithfulness.md): `param_dtype` / `state_dtype` "bfloat16" (the
    original's bf16 params and AdamW moments) and `grad_accum_reduce="sum"` (micro-batch gradients summed)."""
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
