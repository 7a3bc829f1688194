"""Outfit compatibility metric (DiFashion §2.7) on CLIP item features, and a trainer for the evaluator network.

PFITB: outfit = the 3 visible GT items + the generated item at the blank slot, one outfit per generated sample.
GOR: outfit = the 4 generated items of THAT outfit (images 4k..4k+3 for outfit k). DiFashion's released
`evaluate_gor.py` instead gives all four slots of outfit k generated image k (an image of outfit k//4);
`original_gor_indexing=True` reproduces that bug for comparison with published numbers only.
Grd compatibility = the same score on the GT outfits. Score = mean over outfits of sigmoid(logit).
The original evaluator checkpoints are not public: `train_compat_evaluator` trains one per dataset (positives =
real outfits, negatives = outfits with 1-2 items swapped for random catalogue items), so our compatibility numbers
are not comparable to the papers'. Also the `compatibility` runner and its network (`compat_net`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dualfashion_jax.evaluators.nets.compat_weights import load_compat
from dualfashion_jax.evaluators.context import RANDOM, REAL, TRAINED, EvalContext, NetworkInfo
from dualfashion_jax.evaluators.nets.compat_net import OUTFIT_SIZE, CompatConfig, FashionEvaluator
from dualfashion_jax.evaluators.registry import register


def _check_ids(outfits: np.ndarray, num_items: int, what: str) -> np.ndarray:
    outfits = np.asarray(outfits)
    if outfits.ndim != 2 or outfits.shape[1] != OUTFIT_SIZE:
        raise ValueError(f"{what}: expected item ids [N, {OUTFIT_SIZE}], got {outfits.shape}")
    if outfits.size and (outfits.min() < 0 or outfits.max() >= num_items):
        raise ValueError(f"{what}: item ids must lie in [0, {num_items}) (rows of the catalogue feature table), "
                         f"got range [{outfits.min()}, {outfits.max()}]")
    return outfits


def pfitb_outfit_features(outfits: np.ndarray, blank_slots: np.ndarray, gen_feats: np.ndarray,
                          catalogue: np.ndarray) -> np.ndarray:
    """outfits [N, 4] GT ids, blank_slots [N], gen_feats [N, F], catalogue [I, F] -> outfit features [N, 4, F]."""
    catalogue = np.asarray(catalogue, np.float32)
    outfits = _check_ids(outfits, catalogue.shape[0], "pfitb compatibility outfits")
    gen_feats, blank_slots = np.asarray(gen_feats, np.float32), np.asarray(blank_slots)
    if gen_feats.shape != (outfits.shape[0], catalogue.shape[1]) or blank_slots.shape != (outfits.shape[0],):
        raise ValueError(f"pfitb compatibility: gen_feats {gen_feats.shape} / blank_slots {blank_slots.shape} do not "
                         f"match {outfits.shape[0]} outfits of feature width {catalogue.shape[1]}")
    feats = catalogue[outfits].copy()                                  # [N, 4, F]
    feats[np.arange(len(outfits)), blank_slots] = gen_feats
    return feats


def gor_outfit_features(gen_feats: np.ndarray, *, original_gor_indexing: bool = False) -> np.ndarray:
    """gen_feats [4N, F] (outfit k's images at 4k..4k+3, slot order) -> [N, 4, F].

    `original_gor_indexing=True` reproduces DiFashion's bug: outfit k = 4 copies of generated image k.
    """
    gen_feats = np.asarray(gen_feats, np.float32)
    if gen_feats.ndim != 2 or gen_feats.shape[0] % OUTFIT_SIZE:
        raise ValueError(f"gor compatibility: expected gen_feats [4N, F], got {gen_feats.shape}")
    n = gen_feats.shape[0] // OUTFIT_SIZE
    if original_gor_indexing:
        return np.repeat(gen_feats[:n, None], OUTFIT_SIZE, axis=1)
    return gen_feats.reshape(n, OUTFIT_SIZE, -1)


@nnx.jit
def _scores(model: FashionEvaluator, feats: jax.Array) -> jax.Array:
    return model.score(feats)


def compatibility_scores(model: FashionEvaluator, feats: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Sigmoid compatibility per outfit [N] (eval mode, batched; the last batch is padded to keep one compile)."""
    feats = np.asarray(feats, np.float32)
    model.eval()
    out = []
    for s in range(0, len(feats), batch_size):
        chunk = feats[s:s + batch_size]
        pad = batch_size - len(chunk) if len(feats) > batch_size else 0
        padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)]) if pad else chunk
        out.append(np.asarray(_scores(model, jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def compatibility(model: FashionEvaluator, feats: np.ndarray, batch_size: int = 256) -> dict[str, float]:
    """{"compatibility": mean sigmoid score, "n": outfits}."""
    s = compatibility_scores(model, feats, batch_size)
    return {"compatibility": float(s.mean()) if len(s) else float("nan"), "n": int(len(s))}


# ------------------------------------------------------------------------------------------------ training
def swap_negatives(outfits: np.ndarray, pool: np.ndarray, rng: np.random.Generator,
                   item_category: np.ndarray | None = None) -> np.ndarray:
    """Copies of `outfits` [B, 4] with 1 or 2 random slots replaced by random items from `pool` (same category as
    the replaced item when `item_category` [I] is given and that category has other items)."""
    neg = np.array(outfits, copy=True)
    by_cat = None
    if item_category is not None:
        cats = item_category[pool]
        by_cat = {c: pool[cats == c] for c in np.unique(cats)}
    for b in range(len(neg)):
        for slot in rng.choice(OUTFIT_SIZE, size=rng.integers(1, 3), replace=False):
            cand = pool
            if by_cat is not None:
                same = by_cat.get(item_category[neg[b, slot]])
                cand = same if same is not None and len(same) > 1 else pool
            new = neg[b, slot]
            while new == neg[b, slot] and len(cand) > 1:
                new = cand[rng.integers(len(cand))]
            neg[b, slot] = new
    return neg


def train_compat_evaluator(features: np.ndarray, outfits: np.ndarray, *, config: CompatConfig | None = None,
                           item_category: np.ndarray | None = None, steps: int = 2000, batch_size: int = 64,
                           learning_rate: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                           log_every: int = 0) -> tuple[FashionEvaluator, dict[str, Any]]:
    """Trains a FashionEvaluator with BCE: real outfits (label 1) vs item-swapped outfits (label 0).

    features [I, F] catalogue item features (row = item id); outfits [N, 4] training outfits (item ids).
    Returns (model in eval mode, {"loss": [...], "accuracy": final batch accuracy, settings...}).
    """
    features = np.asarray(features, np.float32)
    outfits = _check_ids(outfits, features.shape[0], "train_compat_evaluator outfits")
    if len(outfits) < 2:
        raise ValueError(f"train_compat_evaluator: need at least 2 training outfits, got {len(outfits)}")
    config = config or CompatConfig(feat_dim=features.shape[1])
    if config.feat_dim != features.shape[1]:
        raise ValueError(f"train_compat_evaluator: config.feat_dim {config.feat_dim} != feature width {features.shape[1]}")

    model = FashionEvaluator(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    opt = nnx.Optimizer(model, optax.adamw(learning_rate, weight_decay=weight_decay), wrt=nnx.Param)
    table = jnp.asarray(features)

    @nnx.jit
    def step(model, opt, table, ids, labels):
        def loss_fn(m):
            logits = m(table[ids])                                              # [2B]
            return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), logits
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss, jnp.mean((logits > 0) == (labels > 0.5))

    rng = np.random.default_rng(seed)
    pool = np.unique(outfits)
    labels = jnp.concatenate([jnp.ones(batch_size), jnp.zeros(batch_size)])
    model.train()
    losses, acc = [], float("nan")
    for i in range(steps):
        pos = outfits[rng.integers(len(outfits), size=batch_size)]
        neg = swap_negatives(pos, pool, rng, item_category)
        loss, acc = step(model, opt, table, jnp.asarray(np.concatenate([pos, neg])), labels)
        losses.append(float(loss))
        if log_every and (i + 1) % log_every == 0:
            print(f"[compat] step {i + 1}/{steps} loss {np.mean(losses[-log_every:]):.4f} acc {float(acc):.3f}")
    model.eval()
    return model, {"loss": losses, "accuracy": float(acc), "steps": steps, "batch_size": batch_size,
                   "learning_rate": learning_rate, "seed": seed, "negatives": "1-2 items swapped" +
                   (" within category" if item_category is not None else " (any category)")}


# ------------------------------------------------------------------------------------------------ runner
def compat_net(ctx: EvalContext) -> FashionEvaluator:
    """FashionEvaluator from --compat, else trained here (--compat-train-steps) or a random stand-in."""
    def build():
        path = ctx.opt.checkpoints.get("compat")
        dim = ctx.catalogue_clip().shape[1]
        if path:
            model, config, source = load_compat(path)
            if config.feat_dim != dim:
                raise ValueError(f"--compat {path}: evaluator expects {config.feat_dim}-d item features but "
                                 f"the CLIP network gives {dim}-d")
            ctx.networks["compat"] = NetworkInfo("compat", REAL, source, config.to_json())
            return model
        config = CompatConfig(feat_dim=dim)
        if ctx.opt.compat_train_steps > 0:
            train = ctx.dataset.split("train")
            model, info = train_compat_evaluator(
                ctx.catalogue_clip(), train.outfits, config=config, item_category=ctx.dataset.iid_category,
                steps=ctx.opt.compat_train_steps, seed=ctx.opt.seed)
            info.pop("loss")
            ctx.networks["compat"] = NetworkInfo("compat", TRAINED, f"trained on {ctx.data_dir} train split "
                                                 f"with this run's CLIP features", {**config.to_json(), **info})
            return model
        model = FashionEvaluator(config, rngs=nnx.Rngs(ctx.opt.seed))
        model.eval()
        ctx.networks["compat"] = NetworkInfo("compat", RANDOM, f"random init, seed {ctx.opt.seed}", config.to_json())
        return model
    return ctx.cached("compat", build)


def score_catalogue_outfits(ctx: EvalContext, outfits: np.ndarray) -> dict[str, float]:
    """Compatibility of catalogue outfits [G, 4] (item ids) by their catalogue CLIP features."""
    return compatibility(compat_net(ctx), ctx.catalogue_clip()[outfits], batch_size=max(ctx.opt.batch_size, 8))


@register("compatibility", networks=["clip", "compat"], group="Compatibility",
          description="mean sigmoid of the outfit compatibility net (PFITB: 3 GT + generated; GOR: 4 generated); "
                      "+ GT outfits",
          headline=[("compatibility", "Compat."), ("grd_compatibility", "Grd Compat.")])
def run_compatibility(ctx: EvalContext) -> dict:
    model, cat, gen = compat_net(ctx), ctx.catalogue_clip(), ctx.gen_clip()
    groups = ctx.groups()
    if ctx.task == "pfitb":
        idx = np.asarray([v[0] for v in groups.values()])
        outfits = np.asarray([ctx.records[ri].outfit for ri, _ in groups])
        feats = pfitb_outfit_features(outfits, ctx.slots[idx], gen[idx], cat)
    else:
        full = [v for v in groups.values() if len(v) == 4]
        if not full:
            raise ValueError("GOR compatibility needs rows with 4 generated items")
        feats = gor_outfit_features(gen[np.concatenate(full)], original_gor_indexing=ctx.opt.original_gor_indexing)
    out = compatibility(model, feats, batch_size=max(ctx.opt.batch_size, 8))
    grd = np.asarray([r.outfit for r in ctx.records])                                       # [R, 4] GT outfits
    out["grd_compatibility"] = score_catalogue_outfits(ctx, grd)["compatibility"]
    out["gor_indexing"] = "original (bugged)" if ctx.opt.original_gor_indexing and ctx.task == "gor" else "fixed"
    return out
