"""CLIP-based recommendation metrics (difashion_eval.md §2.3-§2.9): CLIP score, CLIP image score, personalisation,
FITB retrieval accuracy, GOR grounding recall and same-category top-1 retrieval (used by `grounding.py`); their
runners and registration. The CLIP encoder itself is `EvalContext.clip` (`clip_encoder.ClipEncoder`).

All metric functions take UNnormalised embeddings (as DiFashion stores them) and normalise where the original does.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dualfashion_jax.evaluators import batched
from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.registry import register

PAIR_WORDS = ("shoes", "pants", "sneakers", "boots", "earrings", "slippers", "sandals")
RECALL_KS = (10, 20, 50, 100)


def eval_prompt(category_name: str) -> str:
    """DiFashion's CLIP-score prompt: 'pair of' when the name contains any of PAIR_WORDS as a substring."""
    if any(w in category_name for w in PAIR_WORDS):
        return f"A photo of a pair of {category_name}, on white background"
    return f"A photo of a {category_name}, on white background"


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@jax.jit
def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(_unit(a) * _unit(b), axis=-1)  # [..., E] x [..., E] -> [...]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two embedding arrays of equal shape [..., E]."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"cosine: embedding shapes differ {a.shape} vs {b.shape}")
    return np.asarray(_cos(a, b)) if a.size else np.zeros(a.shape[:-1], np.float32)


# ------------------------------------------------------------------------------------------------ metrics
def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> dict[str, float]:
    """CS = mean 100 * cos(E_img(g), E_txt(prompt(c_g)))."""
    s = 100.0 * cosine(image_emb, text_emb)
    return {"clip_score": float(s.mean()), "n": int(s.size)}


def clip_image_score(gen_emb: np.ndarray, gt_emb: np.ndarray) -> dict[str, float]:
    """CIS = mean 100 * cos(E_img(g), E_img(r)) (GOR: embeddings of 2x2 collages)."""
    s = 100.0 * cosine(gen_emb, gt_emb)
    return {"clip_image_score": float(s.mean()), "n": int(s.size)}


def history_means(catalogue_emb: np.ndarray, history: Mapping[int, Mapping[int, Sequence[int]]],
                  uids: np.ndarray, cids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h(u, c) = mean of the UNnormalised catalogue embeddings of u's history items of category c.

    Returns (means [N, E], has_history [N] bool); rows without history get zeros.
    """
    catalogue_emb = np.asarray(catalogue_emb, np.float32)
    means = np.zeros((len(uids), catalogue_emb.shape[1]), np.float32)
    has = np.zeros(len(uids), bool)
    for i, (u, c) in enumerate(zip(np.asarray(uids).tolist(), np.asarray(cids).tolist())):
        items = list(history.get(int(u), {}).get(int(c), []))
        if items:
            if max(items) >= len(catalogue_emb) or min(items) < 0:
                raise ValueError(f"history of user {u}, category {c} holds item ids outside the catalogue "
                                 f"[0, {len(catalogue_emb)})")
            means[i], has[i] = catalogue_emb[items].mean(0), True
    return means, has


def personalization_sim(gen_emb: np.ndarray, hist_mean: np.ndarray, has_history: np.ndarray) -> dict[str, float]:
    """Personal Sim = mean over rows with history of 100 * cos(E_img(g), h(u, c)); skipped rows counted."""
    has_history = np.asarray(has_history, bool)
    s = 100.0 * cosine(np.asarray(gen_emb)[has_history], np.asarray(hist_mean)[has_history])
    return {"personal_sim": float(s.mean()) if s.size else float("nan"), "n": int(s.size),
            "skipped_no_history": int((~has_history).sum())}


@jax.jit
def _retrieval_pred(gen: jax.Array, cands: jax.Array) -> jax.Array:
    return jnp.argmax(jnp.einsum("be,bke->bk", _unit(gen), _unit(cands)), axis=-1)   # [B]


def fitb_retrieval(gen_emb: np.ndarray, cand_emb: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """5-way FITB retrieval: pred = argmax_j cos(g, cand_j); candidates index 0 = GT. Returns (metrics, preds)."""
    gen_emb, cand_emb = np.asarray(gen_emb, np.float32), np.asarray(cand_emb, np.float32)
    if cand_emb.ndim != 3 or cand_emb.shape[0] != gen_emb.shape[0] or cand_emb.shape[2] != gen_emb.shape[1]:
        raise ValueError(f"fitb_retrieval: candidates {cand_emb.shape} must be [N, K, E] for gen {gen_emb.shape}")
    pred = np.asarray(_retrieval_pred(gen_emb, cand_emb))
    return {"retrieval_acc": float(np.mean(pred == 0)), "n": int(len(pred)),
            "chance": 1.0 / cand_emb.shape[1]}, pred


def _same_category_sims(q: jax.Array, cat: jax.Array, items: jax.Array, item_cat: jax.Array) -> jax.Array:
    """cos(q, every catalogue item) with items of another category masked to -inf."""
    sims = _unit(q) @ _unit(items).T                                         # [B, I]
    return jnp.where(item_cat[None, :] == cat[:, None], sims, -jnp.inf)      # [B, I]


@jax.jit
def _target_rank(q: jax.Array, cat: jax.Array, target: jax.Array, items: jax.Array, item_cat: jax.Array) -> jax.Array:
    sims = _same_category_sims(q, cat, items, item_cat)                     # [B, I]
    t = jnp.take_along_axis(sims, target[:, None], axis=1)                   # [B, 1] (finite: same category)
    return jnp.sum(sims > t, axis=1)                                         # [B] 0 = top-1


@jax.jit
def _top1(q: jax.Array, cat: jax.Array, items: jax.Array, item_cat: jax.Array) -> jax.Array:
    return jnp.argmax(_same_category_sims(q, cat, items, item_cat), axis=1)  # [B] item id


def _check_gallery(name: str, categories: np.ndarray, catalogue_emb: np.ndarray, item_category: np.ndarray) -> None:
    if item_category.shape[0] != len(catalogue_emb):
        raise ValueError(f"{name}: item_category {item_category.shape} must index the catalogue "
                         f"({len(catalogue_emb)} rows)")
    empty = sorted(set(np.unique(categories).tolist()) - set(item_category.tolist()))
    if empty:
        raise ValueError(f"{name}: no catalogue item has category {empty} (item_category), nothing to retrieve")


def _by_category(fn, name: str, gen_emb: np.ndarray, categories: np.ndarray, extra: np.ndarray,
                 catalogue_emb: np.ndarray, item_category: np.ndarray, batch_size: int) -> np.ndarray:
    """Batched `fn(q, cat, extra, items, item_cat)` over the rows; (cat, extra) ride along as two float columns."""
    items, icat = jnp.asarray(catalogue_emb, jnp.float32), jnp.asarray(item_category)
    stacked = np.concatenate([np.asarray(gen_emb, np.float32), categories[:, None].astype(np.float32),
                              extra[:, None].astype(np.float32)], axis=1)
    return batched.map_batches(
        lambda b: fn(b[:, :-2], b[:, -2].astype(jnp.int32), b[:, -1].astype(jnp.int32), items, icat),
        stacked, batch_size=batch_size, desc=name, show_progress=False)


def grounding_recall(gen_emb: np.ndarray, categories: np.ndarray, gt_iids: np.ndarray, catalogue_emb: np.ndarray,
                     item_category: np.ndarray, ks: Sequence[int] = RECALL_KS, batch_size: int = 64) -> dict[str, float]:
    """GOR grounding: rank all catalogue items of the same category by cos to g; Recall@K of the GT item."""
    gt_iids, categories = np.asarray(gt_iids, np.int32), np.asarray(categories, np.int32)
    item_category = np.asarray(item_category, np.int32)
    _check_gallery("grounding_recall", categories, catalogue_emb, item_category)
    if (item_category[gt_iids] != categories).any():
        raise ValueError("grounding_recall: some GT items' catalogue category differs from the record's category")
    ranks = _by_category(_target_rank, "grounding recall", gen_emb, categories, gt_iids, catalogue_emb,
                         item_category, batch_size)
    out = {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}
    out["n"] = int(len(ranks))
    return out


def same_category_top1(gen_emb: np.ndarray, categories: np.ndarray, catalogue_emb: np.ndarray,
                       item_category: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """GOR generate-then-retrieve: the catalogue item id [N] of the record's category closest (CLIP cos) to each g."""
    categories, item_category = np.asarray(categories, np.int32), np.asarray(item_category, np.int32)
    _check_gallery("same_category_top1", categories, catalogue_emb, item_category)
    return _by_category(lambda q, c, _, items, icat: _top1(q, c, items, icat), "grounding top-1", gen_emb,
                        categories, np.zeros_like(categories), catalogue_emb, item_category,
                        batch_size).astype(np.int64)


# ------------------------------------------------------------------------------------------------ runners
def prompt_clip(ctx: EvalContext) -> np.ndarray:
    """[N, E] CLIP text embedding of each entry's category prompt (DiFashion's CS prompt)."""
    names = ctx.category_names()
    return ctx.clip().texts([eval_prompt(names[int(c)]) for c in ctx.categories])


def gt_collage_clip(ctx: EvalContext) -> np.ndarray:
    """[G, E] CLIP of the GT outfits' 2x2 collages (GOR)."""
    return ctx.cached("gt_collage_clip", lambda: ctx.clip().images(ctx.collages(ctx.gt_images()), "CLIP GT collages"))


def history(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
    """(h(u, c) [N, E], has_history [N]) per entry: mean UNnormalised CLIP of the user's history items of c."""
    return ctx.cached("history_means", lambda: history_means(ctx.catalogue_clip(), ctx.dataset.history(ctx.split),
                                                             ctx.uids, ctx.categories))


@register("clip_score", networks=["clip"], group="Fidelity",
          description="100*cos(CLIP image, 'A photo of a [pair of] {name}, on white background'); also on GT images",
          headline=[("clip_score", "CS"), ("grd_clip_score", "Grd CS")])
def run_clip_score(ctx: EvalContext) -> dict:
    text = prompt_clip(ctx)
    out = clip_score(ctx.gen_clip(), text)
    out["grd_clip_score"] = clip_score(ctx.gt_clip(), text)["clip_score"]
    return out


@register("clip_image_score", networks=["clip"], group="Fidelity",
          description="100*cos(CLIP gen, CLIP GT); GOR on 2x2 collages (1024 px, white canvas)",
          headline=[("clip_image_score", "CIS")])
def run_clip_image_score(ctx: EvalContext) -> dict:
    if ctx.task == "pfitb":
        return clip_image_score(ctx.gen_clip(), ctx.gt_clip())
    return clip_image_score(ctx.clip().images(ctx.collages(ctx.gen_images()), "CLIP collages"), gt_collage_clip(ctx))


@register("personal_sim", networks=["clip"], group="Personalization",
          description="100*cos(CLIP gen, mean UNnormalised CLIP of the user's history items of that category)",
          headline=[("personal_sim", "Personal Sim")])
def run_personal_sim(ctx: EvalContext) -> dict:
    return personalization_sim(ctx.gen_clip(), *history(ctx))


@register("retrieval_acc", networks=["clip"], tasks=["pfitb"], group="Retrieval",
          description="5-way FITB retrieval accuracy by CLIP cosine (chance 0.2)", headline=[("retrieval_acc", "Acc")])
def run_retrieval_acc(ctx: EvalContext) -> dict:
    out, _ = fitb_retrieval(ctx.gen_clip(), ctx.catalogue_clip()[ctx.candidate_iids()])  # cands [N, 5, E]
    return out


@register("grounding_recall", networks=["clip"], tasks=["gor"], group="Retrieval",
          description="Recall@{10,20,50,100} of the GT item among all same-category catalogue items by CLIP cosine",
          headline=[(f"recall@{k}", f"R@{k}") for k in RECALL_KS])
def run_grounding_recall(ctx: EvalContext) -> dict:
    return grounding_recall(ctx.gen_clip(), ctx.categories, ctx.gt_iids, ctx.catalogue_clip(), ctx.item_category())
