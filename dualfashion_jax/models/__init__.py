"""Flax NNX models: the dual MMDiT, the T5 v1.1 encoder and the SD3 VAE (eager sharding is off: see the package)."""
