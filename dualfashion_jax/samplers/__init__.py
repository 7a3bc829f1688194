"""Samplers (spec §5.1-5.2): the SD3 Euler flow sampler with 4-way guidance and the masked caption sampler.

  flow_euler.py      GuidanceConfig, initial_noise(seed, uid, oid, idx), sample_images (one batched forward/step)
  masked_caption.py  caption_prior, caption_logits_fn, sample_caption (MDLM ddpm_cache as a fori_loop)
  templates.py       caption templates: GT-free per-attribute length budget (default) or the original GT template
"""
