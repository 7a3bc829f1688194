""""Shop the look": the real catalogue items of a category nearest to a generated image.

Items are compared by the cosine of a small pixel embedding (the image area-resized to EMBED_SIDE^2 x 3, centred),
which needs no extra network and ranks colour and pattern first; `evaluators/grounding.py` is the CLIP-space
version used for the offline metrics when CLIP weights are present.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages

EMBED_SIDE = 16


def embed(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> unit vectors [N, EMBED_SIDE * EMBED_SIDE * 3] (float32)."""
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
        raise ValueError(f"embed: expected uint8 [N, S, S, 3] images, got {imgs.dtype} {list(imgs.shape)}")
    small = np.stack([np.asarray(Image.fromarray(im).resize((EMBED_SIDE, EMBED_SIDE), Image.BOX), np.float32)
                      for im in imgs]).reshape(len(imgs), -1) / 255.0  # [N, E]
    small -= small.mean(-1, keepdims=True)
    return small / np.maximum(np.linalg.norm(small, axis=-1, keepdims=True), 1e-6)


class Catalogue:
    """Pixel embeddings of every catalogue item, grouped by category (built once per engine)."""

    def __init__(self, ds: SafeDataset, size: int):
        images = ItemImages(ds, size)
        cat = np.asarray(ds.iid_category)
        self.iids = np.arange(1, ds.num_items + 1)
        self.category = cat[1:]
        self.emb = embed(images.many(self.iids))  # [I, E]

    def nearest(self, image: np.ndarray, category: int, k: int) -> list[tuple[int, float]]:
        """[(item id, cosine)] of the k items of `category` nearest to `image` uint8 [S, S, 3], best first."""
        pool = np.flatnonzero(self.category == int(category))
        if pool.size == 0:
            raise ValueError(f"category {category}: no catalogue item to shop from")
        sims = self.emb[pool] @ embed(np.asarray(image)[None])[0]  # [P]
        top = np.argsort(-sims, kind="stable")[:k]
        return [(int(self.iids[pool[i]]), float(sims[i])) for i in top]
