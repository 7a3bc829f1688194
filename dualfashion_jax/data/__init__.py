"""Datasets: the safe npz/json format (`format`), real iFashion/Polyvore-U conversion (`difashion`), validation,
stage examples and task rows (`examples`), the grain batch pipeline (`pipeline`), latents (`encode_latents`),
the built-in synthetic world (`synthetic`) and the `dualfashion-jax data` CLI (`cli`). See docs/data.md."""
