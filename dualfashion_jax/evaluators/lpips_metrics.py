"""LPIPS metrics (difashion_eval.md §2.5): pairwise diversity within a group, and distance to ground truth.

Preprocessing: uint8 pixels / 127.5 - 1 (or float images already in [-1, 1]), full resolution, NHWC;
the network is `nets.lpips_vgg.LPIPSVGG` (LPIPS v0.1, VGG16).
  * diversity (DualFashion): for each row (the K samples of one (user, outfit) blank) the mean LPIPS over
    all K(K-1)/2 unordered pairs; the metric is the mean over all pairs of all rows (`mean_over="pairs"`,
    the original) or over rows (`mean_over="rows"`). A row with < 2 samples is an error, never a silent 0.
  * distance_to_gt (DiFashion): mean LPIPS(generated_i, gt_i).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.evaluators import batched


def _signed(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected NHWC RGB images [K, H, W, 3], got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    images = images.astype(np.float32)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"{name}: float images must be in [-1, 1] (or pass uint8), got [{lo:.3g}, {hi:.3g}]")
    return images


def _pairwise_fn(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def fn(state, images):  # [K, H, W, 3] -> [K, K] LPIPS matrix (upper triangle used)
        m = nnx.merge(graphdef, state)
        feats = m.features(images)
        k = images.shape[0]
        ii, jj = np.triu_indices(k, 1)
        f0 = [f[ii] for f in feats]
        f1 = [f[jj] for f in feats]
        return m.distance_from_features(f0, f1)  # [K(K-1)/2]

    return lambda images: fn(state, images)


def diversity(model, images_by_row: Sequence[np.ndarray], *, mean_over: str = "pairs",
              show_progress: bool = True) -> dict[str, float]:
    """images_by_row: sequence of [K_r, H, W, 3] arrays (uint8 or [-1, 1]).

    Returns {"lpips_diversity": mean, "num_rows": R, "num_pairs": P}. ValueError naming the row if K_r < 2.
    """
    if mean_over not in ("pairs", "rows"):
        raise ValueError(f"diversity: mean_over must be 'pairs' or 'rows', got {mean_over!r}")
    if len(images_by_row) == 0:
        raise ValueError("diversity: no rows given")
    for r, row in enumerate(images_by_row):
        if np.asarray(row).ndim != 4 or len(row) < 2:
            raise ValueError(f"diversity: row {r} has {len(row) if np.ndim(row) == 4 else 'malformed'} samples "
                             f"(shape {np.shape(row)}); LPIPS diversity needs >= 2 samples [K, H, W, 3] per row")
    fn = _pairwise_fn(model)
    per_row = []
    for r, row in batched.progress(list(enumerate(images_by_row)), desc="LPIPS diversity", enabled=show_progress):
        per_row.append(np.asarray(fn(jnp.asarray(_signed(row, f"diversity row {r}")))))
    pairs = np.concatenate(per_row)
    value = pairs.mean() if mean_over == "pairs" else np.mean([d.mean() for d in per_row])
    return {"lpips_diversity": float(value), "num_rows": len(per_row), "num_pairs": int(pairs.shape[0])}


def distance_to_gt(model, generated: np.ndarray, ground_truth: np.ndarray, *, batch_size: int = 8,
                   show_progress: bool = True) -> dict[str, float]:
    """generated, ground_truth [N, H, W, 3] (uint8 or [-1, 1]) -> {"lpips_to_gt": mean LPIPS, "num_images": N}."""
    gen, gt = _signed(generated, "distance_to_gt generated"), _signed(ground_truth, "distance_to_gt ground_truth")
    if gen.shape != gt.shape:
        raise ValueError(f"distance_to_gt: generated {gen.shape} and ground_truth {gt.shape} must have equal shapes")
    graphdef, state = nnx.split(model)

    @jax.jit
    def fn(state, pair):  # pair [b, 2, H, W, 3] -> [b]
        return nnx.merge(graphdef, state)(pair[:, 0], pair[:, 1])

    d = batched.map_batches(lambda p: fn(state, p), np.stack([gen, gt], axis=1), batch_size=batch_size,
                            desc="LPIPS to GT", show_progress=show_progress)
    return {"lpips_to_gt": float(d.mean()), "num_images": int(d.shape[0])}
