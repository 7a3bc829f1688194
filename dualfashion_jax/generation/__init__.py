"""Generation (spec §5): PFITB and GOR for every row of a split, and one-request recommendations.

  bundle.py        load a training workdir (EMA by default) or converted checkpoints -> model, T5, VAE, tokenizer
  settings.py      GenSettings (samples, seed, guidance, caption sampler, fixes vs the original) + per-row keys
  conditioning.py  T5 segments with masks, context latents (posterior mean), masked context mean, stage-2 offset
  sampling.py      the jitted, batched, sharded programs: encode context, sample images + captions, decode
  inputs.py        a split's rows -> images, tokens and caption templates (clear errors for missing fields)
  pfitb.py, gor.py the two tasks on a batch of rows
  outputs.py, grid.py   PNGs, per-row grids, done markers, records.json, captions JSON, index.html
  runner.py        every row of a split: resumable, batched, sharded over devices and processes
  cli.py           `dualfashion-jax generate`;   api.py  `recommend(bundle, preference, category, images)`
"""
