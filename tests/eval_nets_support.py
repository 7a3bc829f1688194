"""Shared helpers of the evaluator-net tests: skip reasons for absent test material, Fashion-MNIST batches."""
from __future__ import annotations

import numpy as np
import pytest


def upstream_modules():
    """torchvision/pytorch-fid/lpips upstream modules through the shim, or skip with the reason."""
    pytest.importorskip("torch")
    from dualfashion_jax.reference import torchvision_shim

    try:
        return torchvision_shim.load()
    except torchvision_shim.TorchvisionUnavailable as e:
        pytest.skip(str(e))
    except ImportError as e:  # pytorch-fid / lpips not installed
        pytest.skip(f"{e}; run `bash scripts/test_material.sh` to install the evaluator test material")


def fashion_mnist_rgb(start: int, count: int) -> np.ndarray:
    """Real Fashion-MNIST test images as uint8 RGB [count, 28, 28, 3], or skip."""
    from dualfashion_jax.reference import fashion_mnist

    try:
        images, _ = fashion_mnist.load("t10k")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return np.repeat(images[start:start + count, :, :, None], 3, axis=-1)


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Non-trivial BN statistics/affine on a torch model (defaults 0/1 would hide layout bugs)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
