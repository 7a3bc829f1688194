"""Evaluator networks (Flax NNX, NHWC): Inception-v3 classifier (IS family), TF-FID Inception, LPIPS-VGG16."""
