"""Reads real Fashion-MNIST images (Debian `dataset-fashion-mnist`) as test material for the evaluator nets."""
from __future__ import annotations

import gzip
import pathlib

import numpy as np

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def load(split: str = "t10k", *, root: pathlib.Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, 28, 28], labels uint8 [N]) from the idx .gz files."""
    if split not in ("t10k", "train"):
        raise ValueError(f"Fashion-MNIST split must be 't10k' or 'train', got {split!r}")
    img_path, lbl_path = root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; install it with `apt-get install dataset-fashion-mnist` "
                                    "(or run scripts/test_material.sh)")
    with gzip.open(img_path, "rb") as f:
        raw = f.read()
    magic, n, h, w = np.frombuffer(raw[:16], ">u4")
    if magic != 2051:
        raise ValueError(f"{img_path}: bad idx magic {magic} (expected 2051 for images)")
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(int(n), int(h), int(w))
    with gzip.open(lbl_path, "rb") as f:
        raw = f.read()
    labels = np.frombuffer(raw, np.uint8, offset=8)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lbl_path}: {labels.shape[0]} labels for {images.shape[0]} images")
    return images, labels
