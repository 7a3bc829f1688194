"""The configs package (installed as `dualfashion_jax.configs`; setup.py maps it from this folder).

Files are loaded by path with `get_config(arg)` (ml_collections), e.g. `--config configs/stage2.py:demo`:
  stage1.py, stage2.py, stage3.py  one per training stage; the argument starts with a size (see common.py)
  common.py                        the training config's default blocks and the per-size blocks the stages share
  demo.py                          `dualfashion-jax demo`'s own knobs (dataset, stand-in VAE, tokenizer, generation)
  generate.py                      `dualfashion-jax generate`'s sampling settings per task (pfitb | gor)
  toy_cpu.py                       toy model + synthetic arrays (infrastructure tests)
"""
