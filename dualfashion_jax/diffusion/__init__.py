"""Diffusion mathematics for training (spec §2): rectified-flow image noising, masked (MDLM/SUBS) text diffusion.

  flow.py          sigma grids (train shift 1.0, SD3 inference shift 3.0), logit-normal t, noising
  masked_text.py   log-linear schedule, antithetic t, label-only masking, SUBS log-probs
  losses.py        per-example image flow (x0-space), MDLM and stage-3 Brier losses
  conditioning.py  text segments, classifier-free / preference / context dropout, stage-2 latent input
  stages.py        stage1_loss / stage2_loss / stage3_loss(key, batch, ...) -> (loss, metrics)
  pure_fn.py       as_pure: an NNX module as a function safe inside lax.cond / fori_loop / grad
"""
