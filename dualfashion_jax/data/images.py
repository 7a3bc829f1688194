"""Item images and precomputed latents: uint8 HWC loading with DualFashion's preprocessing (spec §1.4).

Preprocessing: RGB; resize the short side to the dataset resolution (bicubic); centre crop to a square.
Scaling to [-1, 1] happens on device (`to_model_range`), so host batches stay uint8 (4x smaller).
The blank item (iid 0) is an all-white image, as in DiFashion's image list (a white "empty image").
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dualfashion_jax.data.format import FormatError, SafeDataset


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """PIL image -> uint8 [size, size, 3]: RGB, bicubic short-side resize, centre crop."""
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, np.uint8)  # [S, S, 3]


def load_image(path: Path, size: int, *, iid: int | None = None) -> np.ndarray:
    """Read and preprocess one image file; errors name the item and the file."""
    who = f"item {iid} " if iid is not None else ""
    try:
        with Image.open(path) as img:
            return preprocess(img, size)
    except FileNotFoundError:
        raise FileNotFoundError(f"{who}image {path} not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{who}image {path} cannot be decoded (truncated or not an image): {e}") from None


def blank_image(size: int) -> np.ndarray:
    """The blank item's image: white uint8 [size, size, 3]."""
    return np.full((size, size, 3), 255, np.uint8)


def to_model_range(images) -> "np.ndarray":
    """uint8 [..., 3] -> float32 in [-1, 1] (works on numpy and jax arrays)."""
    return images.astype("float32") / 127.5 - 1.0


class ItemImages:
    """Random access to item images of a safe-format dataset at a fixed resolution (blank -> white)."""

    def __init__(self, ds: SafeDataset, size: int | None = None, *, cache_items: int = 0):
        """`cache_items` > 0 keeps that many decoded images in memory (LRU); worth it for small datasets."""
        size = size or ds.image_size
        if not size:
            raise FormatError(f"{ds.root / 'meta.json'}: image_size is not set; pass an explicit size")
        if not ds.has_image_paths:
            raise FormatError(f"{ds.root}: image_paths.json absent; this dataset has no images "
                              "(convert with an image root, or run encode-latents on one that has)")
        self.ds, self.size = ds, int(size)
        if cache_items > 0:
            self._load = functools.lru_cache(maxsize=int(cache_items))(self._load)

    def __call__(self, iid: int) -> np.ndarray:
        return self._load(int(iid))

    def _load(self, iid: int) -> np.ndarray:
        if int(iid) <= 0:
            return blank_image(self.size)
        if int(iid) > self.ds.num_items:
            raise IndexError(f"item id {iid} out of range 0..{self.ds.num_items} ({self.ds.root / 'meta.json'})")
        p = self.ds.image_file(int(iid))
        if p is None:
            raise FileNotFoundError(f"item {iid} has no image path in {self.ds.root / 'image_paths.json'}")
        return load_image(p, self.size, iid=int(iid))

    def many(self, iids) -> np.ndarray:
        return np.stack([self(i) for i in iids])  # [K, S, S, 3]


class ItemLatents:
    """Random access to precomputed VAE latents (`latents/latents.npy` [num_items+1, h, w, C], memory-mapped)."""

    def __init__(self, ds: SafeDataset):
        d = ds.latents_dir
        p, mp = d / "latents.npy", d / "meta.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found; run `dualfashion-jax encode-latents --data {ds.root}` first")
        try:
            self.array = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise FormatError(f"{p}: cannot read latents (truncated or corrupt?): {e}") from None
        if self.array.ndim != 4 or self.array.shape[0] != ds.num_items + 1:
            raise FormatError(f"{p}: expected [num_items+1={ds.num_items + 1}, h, w, C], got {list(self.array.shape)}")
        self.meta = json.loads(mp.read_text()) if mp.is_file() else {}

    def __call__(self, iid: int) -> np.ndarray:
        return np.asarray(self.array[max(int(iid), 0)], np.float32)  # [h, w, C]; index 0 = blank

    def many(self, iids) -> np.ndarray:
        return np.asarray(self.array[np.maximum(np.asarray(iids, np.int64), 0)], np.float32)  # [K, h, w, C]


def item_visuals(ds: SafeDataset, use_latents: str | bool = "auto", size: int | None = None, cache_items: int = 0):
    """(loader, kind): precomputed latents when `latents/` exists (or is required), else images."""
    if use_latents == "auto":
        use_latents = (ds.latents_dir / "latents.npy").is_file()
    return (ItemLatents(ds), "latent") if use_latents else (ItemImages(ds, size, cache_items=cache_items), "image")
