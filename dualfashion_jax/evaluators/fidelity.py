"""Fidelity beside personalization (issue #20): FID against the same-size random-real baseline, and the oracle's
clean re-render agreement, so no one tunes a preference metric at the cost of the images.

* `fid_ratio`: FID(generated, GT) / FID(N random real catalogue items, GT), the same N, the same GT features and
  network in one run; ~1 means "as close to the GT as real items drawn at random" (any category, any user).
* `oracle_fidelity` (synthetic data): the oracle reads (category, colour, material) from each image, the
  generator's renderer draws that item cleanly (every design feature, no jitter; the closest kept), and the mean
  absolute pixel error to the image is reported, beside the same figure on the GT renders (its floor: jitter).
"""
from __future__ import annotations

import numpy as np

from dualfashion_jax.data import oracle
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic.render import render_item
from dualfashion_jax.evaluators import fid as fid_lib
from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.oracle_metrics import dataset_shapes
from dualfashion_jax.evaluators.registry import register

RANDOM_REAL_SEED = 0


def random_real_iids(item_category: np.ndarray, n: int, seed: int = RANDOM_REAL_SEED) -> np.ndarray:
    """n catalogue item ids drawn uniformly without replacement (with, if the catalogue is smaller), seeded."""
    ids = np.flatnonzero(np.asarray(item_category) >= 0)  # id 0 is the blank
    if ids.size == 0:
        raise ValueError("random_real_iids: the catalogue has no items")
    return np.random.default_rng(seed).choice(ids, size=n, replace=ids.size < n)


@register("fid_ratio", networks=["fid"], group="Fidelity",
          headline=[("fid_ratio", "FID/rand-real↓"), ("fid_random_real", "FID rand-real")],
          description="FID(generated, GT) / FID(same number of random real catalogue items, GT), one run")
def run_fid_ratio(ctx: EvalContext) -> dict:
    size = ctx.gt_images().shape[1]
    iids = random_real_iids(ctx.item_category(), len(ctx.entries))
    fid_gen = fid_lib.cached_fid(ctx, "gen", ctx.gen_images, "gt", ctx.gt_images)
    fid_real = fid_lib.cached_fid(ctx, "random_real", lambda: np.stack([ctx.item_image(i, size) for i in iids]),
                                  "gt", ctx.gt_images)
    return {"fid": fid_gen, "fid_random_real": fid_real, "fid_ratio": fid_gen / fid_real, "n": len(ctx.entries)}


def clean_renders(decoded: dict[str, np.ndarray], size: int) -> np.ndarray:
    """uint8 [N, F, S, S, 3]: each decoded (category, colour, material) drawn with every design feature, no jitter
    (an undecodable image, -1, gets white canvases: its error is then its distance from a blank image)."""
    out = np.full((len(decoded["category"]), len(A.FEATURES), size, size, 3), 255, np.uint8)
    cache: dict[tuple[int, int, int], np.ndarray] = {}
    for i, key in enumerate(zip(decoded["category"], decoded["colour"], decoded["material"])):
        key = tuple(int(k) for k in key)
        if min(key) < 0:
            continue
        if key not in cache:
            cache[key] = np.stack([render_item(*key, feature=f, size=size) for f in range(len(A.FEATURES))])
        out[i] = cache[key]
    return out


def render_error(images: np.ndarray, shapes: str = "procedural") -> np.ndarray:
    """float [N]: mean |image - closest clean render of its oracle-read attributes| per pixel and channel (0..255)."""
    images = np.asarray(images)
    if shapes != "procedural":
        raise ValueError(f"oracle fidelity re-renders procedural garments only, this dataset uses {shapes!r} shapes")
    renders = clean_renders(oracle.decode_attributes(images, shapes=shapes), images.shape[1])  # [N, F, S, S, 3]
    err = np.abs(renders.astype(np.float32) - images[:, None].astype(np.float32)).mean(axis=(2, 3, 4))  # [N, F]
    return err.min(axis=1)


@register("oracle_fidelity", group="Fidelity",
          headline=[("oracle_render_err", "Render err↓"), ("oracle_render_err_real", "on GT")],
          description="synthetic data: mean pixel error to a clean re-render of the attributes the oracle reads "
                      "(generated, and the GT renders as the floor)")
def run_oracle_fidelity(ctx: EvalContext) -> dict:
    shapes = dataset_shapes(ctx.data_dir)
    gen, real = render_error(ctx.gen_images(), shapes), render_error(ctx.gt_images(), shapes)
    return {"oracle_render_err": float(gen.mean()), "oracle_render_err_real": float(real.mean()),
            "oracle_render_err_ratio": float(gen.mean() / max(real.mean(), 1e-6))}
