"""Optional real garment silhouettes from Fashion-MNIST (Debian package `dataset-fashion-mnist`).

With shapes="fashion_mnist" each synthetic item is drawn from one Fashion-MNIST image of a class mapped to its
category (`attributes.FASHION_MNIST_CLASSES`): the 28x28 grey image becomes a coverage mask that the renderer
tints and patterns exactly like a procedural silhouette. Install with `apt-get install dataset-fashion-mnist`.
"""
from __future__ import annotations

import functools
import gzip
import os
import pathlib

import numpy as np

from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic.render import SilhouetteFn

DEFAULT_ROOT = pathlib.Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
_FILES = {"t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
          "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")}
MARGIN = 0.08  # the 28x28 item fills the central 84 % of the output image
COVERAGE_LEVEL = 40.0  # grey level (0..255) at which a Fashion-MNIST pixel counts as fully garment


def available(root: str | os.PathLike | None = None) -> bool:
    """True when the t10k files of Fashion-MNIST are present under `root`."""
    base = pathlib.Path(root) if root is not None else DEFAULT_ROOT
    return all((base / f).is_file() for f in _FILES["t10k"])


def _read_idx(path: pathlib.Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one gzip'd IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    head = np.frombuffer(data[: 4 * (1 + ndim)], dtype=">u4")
    if head[0] != magic:
        raise ValueError(f"{path}: bad IDX magic {int(head[0]):#x}, expected {magic:#x}")
    shape = tuple(int(d) for d in head[1:])
    body = np.frombuffer(data[4 * (1 + ndim):], dtype=np.uint8)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {body.size} bytes of data, header says shape {shape}")
    return body.reshape(shape)


@functools.lru_cache(maxsize=2)
def load(split: str = "t10k", root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 [N, 28, 28] (white garment on black) and labels int64 [N]."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split {split!r} unknown; expected one of {sorted(_FILES)}")
    base = pathlib.Path(root) if root is not None else DEFAULT_ROOT
    img_f, lab_f = (base / f for f in _FILES[split])
    for f in (img_f, lab_f):
        if not f.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {f} not found; install it with "
                                    "`apt-get install dataset-fashion-mnist` or set FASHION_MNIST_DIR")
    images = _read_idx(img_f, 0x803, 3)
    labels = _read_idx(lab_f, 0x801, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_f}: images {images.shape} do not match labels {labels.shape}")
    return images, labels


def pool_by_category(labels: np.ndarray) -> list[np.ndarray]:
    """For each synthetic category, the Fashion-MNIST indices whose class maps to it (sorted)."""
    return [np.flatnonzero(np.isin(labels, classes)) for classes in A.FASHION_MNIST_CLASSES]


def silhouette(image: np.ndarray) -> SilhouetteFn:
    """Coverage function (u, v) -> [H, W] float in [0, 1], bilinearly sampled from a 28x28 grey image."""
    if image.shape != (28, 28):
        raise ValueError(f"Fashion-MNIST image must be [28, 28], got {image.shape}")
    cov = np.clip(image.astype(np.float32) / COVERAGE_LEVEL, 0.0, 1.0)
    cov = np.pad(cov, 1)  # [30, 30], zero border so samples outside the item are background

    def fn(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        px = (u - MARGIN) / (1.0 - 2 * MARGIN) * 28.0 - 0.5 + 1.0  # continuous index into the padded grid
        py = (v - MARGIN) / (1.0 - 2 * MARGIN) * 28.0 - 0.5 + 1.0
        px, py = np.clip(px, 0.0, 28.999), np.clip(py, 0.0, 28.999)
        x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
        fx, fy = px - x0, py - y0
        top = cov[y0, x0] * (1 - fx) + cov[y0, x0 + 1] * fx
        bot = cov[y0 + 1, x0] * (1 - fx) + cov[y0 + 1, x0 + 1] * fx
        return (top * (1 - fy) + bot * fy).astype(np.float32)

    return fn
