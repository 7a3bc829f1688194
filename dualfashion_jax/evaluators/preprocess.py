"""Image preprocessing of the evaluator metrics (NHWC), matching the PyTorch originals exactly.

Per metric (difashion_eval.md §1, §2):
  * FID (TF-FID Inception) and IS (50-way Inception): [0, 1] images -> bilinear resize to 299x299 with
    `F.interpolate(mode="bilinear", align_corners=False)` semantics (no antialiasing) -> 2x - 1 in [-1, 1].
    `inception_input` does both. The IS net then applies torchvision's `transform_input` itself.
  * LPIPS: uint8 / 127.5 - 1 at full resolution (`lpips_input`); no resize.
  * GOR collages (CLIP image score, LPIPS): 4 slot images on one white 2x2 canvas (`collage_2x2`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

INCEPTION_SIZE = 299
COLLAGE_SIZE = 1024  # GOR 2x2 collages (CLIP image score, LPIPS): the original's canvas


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] interpolation weights of torch's bilinear, align_corners=False (1-D, half-pixel centres)."""
    # fp32 arithmetic on purpose: torch computes the scale and source coordinates in float for float images.
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))           # torch clamps negative source coordinates to 0
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, H, W, C] -> [B, h, w, C] like torch `F.interpolate(..., mode='bilinear', align_corners=False)`.

    Separable: two small matmuls with precomputed weight matrices (exact torch semantics, also when
    downsampling, where `jax.image.resize` would antialias).
    """
    if images.ndim != 4:
        raise ValueError(f"resize_bilinear expects NHWC images [B, H, W, C], got shape {tuple(images.shape)}")
    h, w = int(size[0]), int(size[1])
    if (images.shape[1], images.shape[2]) == (h, w):
        return images
    mh = jnp.asarray(_bilinear_matrix(images.shape[1], h))               # [h, H]
    mw = jnp.asarray(_bilinear_matrix(images.shape[2], w))               # [w, W]
    x = images.astype(jnp.float32)
    x = jnp.einsum("hH,bHWc->bhWc", mh, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("wW,bhWc->bhwc", mw, x, precision=jax.lax.Precision.HIGHEST)  # [B, h, w, C]


def to_signed(images01: jax.Array) -> jax.Array:
    """[0, 1] -> [-1, 1]."""
    return images01 * 2.0 - 1.0


def inception_input(images01: jax.Array, size: int = INCEPTION_SIZE) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> [B, 299, 299, 3] in [-1, 1] (FID and IS preprocessing)."""
    if images01.ndim != 4 or images01.shape[-1] != 3:
        raise ValueError(f"inception_input expects NHWC RGB images [B, H, W, 3] in [0, 1], got {tuple(images01.shape)}")
    return to_signed(resize_bilinear(images01.astype(jnp.float32), (size, size)))


def uint8_to_unit(images: np.ndarray | jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1] (torchvision ToTensor)."""
    return jnp.asarray(images, jnp.float32) / 255.0


def lpips_input(images_uint8: np.ndarray | jax.Array) -> jax.Array:
    """uint8 [B, H, W, 3] -> float32 in [-1, 1] (pixels / 127.5 - 1), full resolution."""
    return jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0


def gray_to_rgb(images: np.ndarray | jax.Array) -> jax.Array:
    """[B, H, W] or [B, H, W, 1] grayscale -> [B, H, W, 3] (e.g. Fashion-MNIST)."""
    x = jnp.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"gray_to_rgb expects [B, H, W] or [B, H, W, 1], got {tuple(x.shape)}")
    return jnp.repeat(x, 3, axis=-1)


def collage_2x2(images: np.ndarray, size: int = COLLAGE_SIZE) -> np.ndarray:
    """4 images [4, H, W, 3] uint8 -> one size x size white-canvas collage, slots row-major (DiFashion GOR CIS)."""
    images = np.asarray(images)
    if images.shape[0] != 4 or images.ndim != 4:
        raise ValueError(f"collage_2x2: expected 4 images [4, H, W, 3], got {images.shape}")
    half = size // 2
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    for k, img in enumerate(images):
        tile = Image.fromarray(np.asarray(img, np.uint8)).resize((half, half), Image.BILINEAR)
        canvas.paste(tile, ((k % 2) * half, (k // 2) * half))
    return np.asarray(canvas)
