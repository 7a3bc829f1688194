"""Oracle metrics for the synthetic dataset: wraps `data/oracle.py` (decode attributes from pixels, then score).

These are the only metrics whose ground truth is known exactly (attributes of every item, each user's latent
favourite colour/material, the outfit rules), so they are the honest check of the offline demo:
  * attribute accuracy of generated images vs the GT item (category/colour/material/style),
  * preference match vs the user's latent favourite (+ chance and lift),
  * caption agreement (generated caption vs what the oracle reads from the same image),
  * rule compatibility of the outfits completed with the generated items.
`data.oracle` is imported lazily (it calibrates its classifiers on first use, about a second).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import numpy as np


def dataset_shapes(data_dir: str | os.PathLike) -> str:
    """The synthetic generator's garment shapes ('procedural' | 'fashion_mnist') from meta.json."""
    meta_path = pathlib.Path(data_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FileNotFoundError(f"{meta_path}: cannot read the dataset's meta.json ({e})") from e
    if meta.get("source") != "synthetic":
        raise ValueError(f"{meta_path}: oracle metrics need a synthetic dataset (source 'synthetic'), "
                         f"got source {meta.get('source')!r}")
    return str(meta.get("generator", {}).get("shapes", "procedural"))


def oracle_metrics(images: np.ndarray, *, data_dir: str | os.PathLike, uids: np.ndarray, categories: np.ndarray,
                   gt_iids: np.ndarray, captions: Sequence[str | None] | None,
                   outfits: np.ndarray, outfit_gen_index: np.ndarray) -> dict[str, float]:
    """images uint8 [N, S, S, 3] (generated), per image: uids, categories, gt_iids [N], captions [N] or None.

    outfits [R, 4]: item ids of the outfits to check, 0 where a generated item sits; outfit_gen_index [R, 4]: index
    into `images` of the generated item at each 0 slot (-1 elsewhere).
    """
    from dualfashion_jax.data import oracle
    from dualfashion_jax.data.synthetic.truth import load_truth

    images = np.asarray(images)
    n = len(images)
    for name, arr in (("uids", uids), ("categories", categories), ("gt_iids", gt_iids)):
        if np.asarray(arr).shape != (n,):
            raise ValueError(f"oracle_metrics: {name} must have one entry per generated image ({n}), "
                             f"got shape {np.asarray(arr).shape}")
    outfits, gidx = np.asarray(outfits, np.int64), np.asarray(outfit_gen_index, np.int64)
    if outfits.shape != gidx.shape or outfits.ndim != 2 or outfits.shape[1] != 4:
        raise ValueError(f"oracle_metrics: outfits {outfits.shape} and outfit_gen_index {gidx.shape} must be [R, 4]")
    if ((outfits == 0) != (gidx >= 0)).any() or gidx.max(initial=-1) >= n:
        raise ValueError("oracle_metrics: outfit_gen_index must point to a generated image exactly at the 0 slots")
    truth = load_truth(data_dir)
    decoded = oracle.decode_attributes(images, shapes=dataset_shapes(data_dir))
    out = {}
    out.update(oracle.attribute_accuracy(decoded, oracle.item_truth(truth, np.asarray(gt_iids))))
    out.update(oracle.preference_match(decoded, np.asarray(uids), np.asarray(categories), truth))
    if captions is not None and all(c is not None for c in captions):
        out.update(oracle.caption_agreement(list(captions), decoded))
    generated = {k: np.where(gidx >= 0, np.asarray(decoded[k])[np.maximum(gidx, 0)], -1)
                 for k in ("category", "colour", "material")}
    out.update(oracle.outfit_compatibility(outfits, generated, truth))
    return {f"oracle_{k}": float(v) for k, v in out.items()}
