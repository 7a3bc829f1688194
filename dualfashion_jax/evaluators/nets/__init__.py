"""Evaluator networks (Flax NNX, NHWC): Inception-v3 classifier (IS family), TF-FID Inception, LPIPS-VGG16, CLIP,
the compatibility net, and their torch-weight converters (`weights.py`, `clip_weights.py`, `compat_weights.py`)."""
