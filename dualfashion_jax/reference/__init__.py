"""PyTorch reference implementations used only by parity tests, converters' tests and benchmarks.

Modules here import torch (and diffusers/torchvision) at import time; nothing else in the package imports
them except lazily, so training, generation and converted-checkpoint loading stay torch-free.
"""
