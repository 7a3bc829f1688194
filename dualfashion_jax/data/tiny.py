"""A minimal random dataset in the safe format, for tests and the loader benchmark (no semantics at all).

Use `dualfashion_jax.data.synthetic` for the demo (a world with learnable structure and oracle truth); this one
only exercises the plumbing: every file of the format, valid ids and categories, odd-sized PNGs to resize.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dualfashion_jax.data.format import SPLITS
from dualfashion_jax.data.writer import DatasetWriter
from dualfashion_jax.text.tokenizer import caption_json

CATEGORY_NAMES = ("dress", "women's shoe", "crossbody bag", "earrings", "women's sweater", "skirt")
VALUES = {"Color": ("red", "navy blue", "black", "white", "beige"),
          "Material": ("cotton", "wool", "leather", "denim"),
          "Design features": ("round neck", "short sleeves, pockets", "zipper", "pleats"),
          "Clothing Fashion Style": ("casual", "elegant", "sporty")}


def _attrs(rng: np.random.Generator) -> dict:
    return {k: str(v[rng.integers(len(v))]) for k, v in VALUES.items()}


def make_tiny_dataset(root: str | os.PathLike, *, num_items: int = 60, num_users: int = 6, rows_per_split: int = 12,
                      image_size: int = 16, stored_size: tuple[int, int] = (20, 24), seed: int = 0) -> Path:
    """Write a tiny random dataset (all files, images stored at `stored_size` = (w, h)) and return its root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    w = DatasetWriter(root)
    n_cat = len(CATEGORY_NAMES)
    cat = np.concatenate([[-1], np.arange(num_items) % n_cat]).astype(np.int32)  # every category has items
    by_cat = {c: np.flatnonzero(cat == c) for c in range(n_cat)}
    w.write_meta(name="tiny", num_items=num_items, num_categories=n_cat, image_size=image_size, source="tiny")
    w.write_categories(dict(enumerate(CATEGORY_NAMES)))
    w.write_items(cat)
    paths = [""] + [f"{c}/{i:04d}.png" for i, c in zip(range(1, num_items + 1), cat[1:])]
    w.write_image_paths(paths)
    for i in range(1, num_items + 1):
        p = w.images_dir / paths[i]
        p.parent.mkdir(parents=True, exist_ok=True)
        px = rng.integers(0, 256, (stored_size[1], stored_size[0], 3), dtype=np.uint8)
        Image.fromarray(px).save(p)
    infos = {i: {"elements": _attrs(rng)} for i in range(1, num_items + 1)}
    w.write_item_info(infos)
    uid_base, oid = 100, 0
    for s in SPLITS:
        uids, oids, outfits, cats = [], [], [], []
        for _ in range(rows_per_split):
            cs = rng.choice(n_cat, 4, replace=False)
            outfits.append([int(rng.choice(by_cat[c])) for c in cs])
            cats.append(cs.tolist())
            uids.append(uid_base + int(rng.integers(num_users)))
            oids.append(oid)
            oid += 1
        outfits, cats = np.asarray(outfits), np.asarray(cats)
        blank = rng.integers(0, 4, len(outfits))
        fitb = outfits.copy()
        fitb[np.arange(len(fitb)), blank] = 0
        cand = np.stack([outfits[np.arange(len(fitb)), blank]] + [rng.integers(1, num_items + 1, len(fitb))
                                                                   for _ in range(4)], 1)
        w.write_split(s, uids, oids, outfits, cats)
        w.write_fitb(s, uids, oids, fitb, cats)
        w.write_candidates(s, uids, oids, cand)
        users = range(uid_base, uid_base + num_users)
        w.write_history(s, {u: {c: rng.choice(by_cat[c], min(10, len(by_cat[c])), replace=False).tolist()
                                for c in range(n_cat)} for u in users})
        w.write_preference(s, {u: {c: {"Frequency": _attrs(rng)} for c in range(n_cat)} for u in users})
    el = {i: infos[i]["elements"] for i in infos}
    w.write_stage1([{"iid": i, "caption": caption_json(el[i]),
                     "re_caption": f"A {el[i]['Color']} {el[i]['Material']} item, {el[i]['Clothing Fashion Style']} style."}
                    for i in range(1, num_items + 1)])
    w.write_augmented({i: [caption_json(_attrs(rng)) for _ in range(3)] for i in range(1, num_items + 1)})
    return root
