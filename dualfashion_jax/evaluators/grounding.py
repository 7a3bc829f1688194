"""Generate-then-retrieve ("grounding") evaluation (difashion_eval.md §2.9): every generated image is replaced by the
real catalogue item that CLIP retrieves for it, and CS / CIS / LPIPS / Personal Sim / Compatibility are recomputed on
those real items. This file holds the retrieval, the bookkeeping and the `grounded_*` runners and registration.

* PFITB: g -> argmax CLIP cosine among the row's 5 FITB candidates (GT + 4 negatives), so the grounded accuracy is
  exactly the §2.8 retrieval accuracy; the grounded outfit = the 3 visible GT items + the retrieved item.
* GOR: g -> top-1 among ALL catalogue items of g's category (the gallery of `grounding_recall`; its hit rate is
  Recall@1); the 4 top-1 items of one generated outfit form the grounded outfit.
Retrieved and GT items are represented by their catalogue CLIP features (`--catalogue-features`, or computed from
the dataset images), pixel metrics (LPIPS, GOR collages) by the dataset images resized to the GT size.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dualfashion_jax.evaluators import clip_metrics as cm
from dualfashion_jax.evaluators.compatibility import score_catalogue_outfits
from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.lpips_metrics import lpips_to_gt
from dualfashion_jax.evaluators.registry import register

CANDIDATES = "pfitb: argmax CLIP cosine (normalised) among the row's 5 candidates of fitb_<split>_candidates"
CATALOGUE = "gor: top-1 CLIP cosine (normalised) among all catalogue items of the generated item's category"


@dataclasses.dataclass(frozen=True)
class Grounded:
    """The real item retrieved for each generated entry (EvalContext entry order) and the GT item it replaces."""

    iids: np.ndarray     # [N] retrieved catalogue item ids
    gt_iids: np.ndarray  # [N] ground-truth item ids at the same slots
    method: str

    @property
    def hits(self) -> np.ndarray:
        """[N] bool: the retrieved item is the GT item."""
        return self.iids == self.gt_iids


def _check_catalogue(name: str, ids: np.ndarray, catalogue_emb: np.ndarray) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= len(catalogue_emb)):
        raise ValueError(f"{name}: item ids must lie in [0, {len(catalogue_emb)}) (rows of the catalogue CLIP "
                         f"features), got range [{ids.min()}, {ids.max()}]")


def retrieve_among_candidates(gen_emb: np.ndarray, cand_iids: np.ndarray, catalogue_emb: np.ndarray) -> Grounded:
    """PFITB: gen_emb [N, E], cand_iids [N, K] (column 0 = GT), catalogue_emb [I, E] -> the argmax candidate per row."""
    cand_iids, catalogue_emb = np.asarray(cand_iids, np.int64), np.asarray(catalogue_emb, np.float32)
    if cand_iids.ndim != 2 or cand_iids.shape[0] != len(gen_emb):
        raise ValueError(f"retrieve_among_candidates: candidates {cand_iids.shape} must be [N, K] item ids for "
                         f"{len(gen_emb)} generated images")
    _check_catalogue("retrieve_among_candidates", cand_iids, catalogue_emb)
    _, pred = cm.fitb_retrieval(gen_emb, catalogue_emb[cand_iids])                   # cands [N, K, E] -> pred [N]
    return Grounded(cand_iids[np.arange(len(pred)), pred], cand_iids[:, 0].copy(), CANDIDATES)


def retrieve_same_category(gen_emb: np.ndarray, categories: np.ndarray, gt_iids: np.ndarray,
                           catalogue_emb: np.ndarray, item_category: np.ndarray, batch_size: int = 64) -> Grounded:
    """GOR: the top-1 catalogue item of each generated image's category (`clip_metrics.same_category_top1`)."""
    gt_iids = np.asarray(gt_iids, np.int64)
    _check_catalogue("retrieve_same_category (GT)", gt_iids, np.asarray(catalogue_emb))
    iids = cm.same_category_top1(gen_emb, categories, catalogue_emb, item_category, batch_size=batch_size)
    return Grounded(iids, gt_iids, CATALOGUE)


def grounded_outfits(outfits: np.ndarray, groups: Sequence[Sequence[int]], slots: np.ndarray,
                     iids: np.ndarray) -> np.ndarray:
    """outfits [G, 4] GT ids of each group's row, groups = entry indices per outfit, slots/iids [N] per entry
    -> [G, 4] ids with every generated slot replaced by its retrieved item (the other slots stay GT)."""
    out = np.array(outfits, np.int64, copy=True)
    if out.ndim != 2 or out.shape[1] != 4 or len(out) != len(groups):
        raise ValueError(f"grounded_outfits: outfits {out.shape} must be [G, 4] for {len(groups)} groups")
    for row, idx in enumerate(groups):
        out[row, np.asarray(slots)[list(idx)]] = np.asarray(iids)[list(idx)]
    return out


# ------------------------------------------------------------------------------------------------ context glue
def for_context(ctx: EvalContext) -> Grounded:
    """The retrieval of one evaluate run (cached: every grounded metric uses the same retrieved items)."""
    def build():
        cat = ctx.catalogue_clip()
        if ctx.task == "pfitb":
            return retrieve_among_candidates(ctx.gen_clip(), ctx.candidate_iids(), cat)
        return retrieve_same_category(ctx.gen_clip(), ctx.categories, ctx.gt_iids, cat, ctx.item_category(),
                                      batch_size=max(ctx.opt.batch_size, 8))
    return ctx.cached("grounded", build)


def outfit_groups(ctx: EvalContext) -> list[list[int]]:
    """Entry indices of each scored outfit: PFITB one per generated sample; GOR only outfits with all 4 slots."""
    groups = list(ctx.groups().values())
    if ctx.task == "gor":
        groups = [g for g in groups if len(g) == 4]
        if not groups:
            raise ValueError("grounded GOR outfits need rows with 4 generated items (one per slot)")
    return groups


def outfits_for_context(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
    """(grounded [G, 4], GT [G, 4]) outfit item ids of the scored outfits."""
    groups = outfit_groups(ctx)
    gt = np.asarray([ctx.records[ctx.entries[idx[0]][0]].outfit for idx in groups], np.int64)
    return grounded_outfits(gt, groups, ctx.slots, for_context(ctx).iids), gt


def grounded_images(ctx: EvalContext) -> np.ndarray:
    """uint8 [N, S, S, 3] dataset images of the retrieved items, S = the GT image size (LPIPS, GOR collages)."""
    def load():
        size = ctx.gt_images().shape[1]
        return np.stack([ctx.item_image(int(i), size) for i in for_context(ctx).iids])
    return ctx.cached("grounded_images", load)


def chance(ctx: EvalContext) -> float:
    """Hit rate of a uniformly random retrieval: 1/5 (PFITB), mean 1/|same-category gallery| (GOR)."""
    if ctx.task == "pfitb":
        return 1.0 / ctx.candidate_iids().shape[1]
    ic = ctx.item_category()
    counts = np.bincount(ic[ic >= 0], minlength=int(ctx.categories.max()) + 1)  # the blank id 0 (-1) is no item
    return float(np.mean(1.0 / np.maximum(counts[ctx.categories], 1)))


def describe(task: str) -> dict:
    """The grounding settings recorded in the report."""
    return {"retrieval": CANDIDATES if task == "pfitb" else CATALOGUE,
            "item_embeddings": "catalogue CLIP features of the retrieved and GT items (--catalogue-features or "
                               "computed from the dataset images with this run's CLIP)",
            "pixels": "dataset images of the retrieved items, resized to the GT size (LPIPS; GOR 2x2 collages)",
            "outfits": "3 visible GT items + the retrieved item" if task == "pfitb"
                       else "the 4 retrieved items of each fully generated outfit"}


# ------------------------------------------------------------------------------------------------ runners
def _renamed(out: dict, key: str, new: str) -> dict:
    return {new if k == key else k: v for k, v in out.items()}


@register("grounded_retrieval_acc", networks=["clip"], group="Grounding",
          description="retrieved item == GT: PFITB 5-way accuracy (== retrieval_acc); GOR same-category top-1 "
                      "(== Recall@1)")
def run_grounded_retrieval_acc(ctx: EvalContext) -> dict:
    hits = for_context(ctx).hits
    return {"grounded_retrieval_acc": float(hits.mean()), "n": int(hits.size), "chance": chance(ctx)}


@register("grounded_clip_score", networks=["clip"], group="Grounding",
          description="clip_score of the retrieved real items")
def run_grounded_clip_score(ctx: EvalContext) -> dict:
    ret = ctx.catalogue_clip()[for_context(ctx).iids]                                         # [N, E]
    return _renamed(cm.clip_score(ret, cm.prompt_clip(ctx)), "clip_score", "grounded_clip_score")


@register("grounded_clip_image_score", networks=["clip"], group="Grounding",
          description="clip_image_score retrieved vs GT items (GOR: 2x2 collages of the retrieved items)")
def run_grounded_clip_image_score(ctx: EvalContext) -> dict:
    if ctx.task == "pfitb":
        gr, cat = for_context(ctx), ctx.catalogue_clip()
        out = cm.clip_image_score(cat[gr.iids], cat[gr.gt_iids])
    else:
        ret = ctx.clip().images(ctx.collages(grounded_images(ctx)), "CLIP grounded collages")
        out = cm.clip_image_score(ret, cm.gt_collage_clip(ctx))
    return _renamed(out, "clip_image_score", "grounded_clip_image_score")


@register("grounded_lpips", networks=["lpips"], group="Grounding",
          description="LPIPS-VGG retrieved vs GT item images (GOR on 2x2 collages)")
def run_grounded_lpips(ctx: EvalContext) -> dict:
    return _renamed(lpips_to_gt(ctx, grounded_images(ctx)), "lpips_to_gt", "grounded_lpips")


@register("grounded_personal_sim", networks=["clip"], group="Grounding",
          description="personal_sim of the retrieved items")
def run_grounded_personal_sim(ctx: EvalContext) -> dict:
    ret = ctx.catalogue_clip()[for_context(ctx).iids]
    return _renamed(cm.personalization_sim(ret, *cm.history(ctx)), "personal_sim", "grounded_personal_sim")


@register("grounded_compatibility", networks=["clip", "compat"], group="Grounding",
          description="compatibility of the grounded outfits (PFITB: 3 GT + retrieved; GOR: the 4 retrieved items)")
def run_grounded_compatibility(ctx: EvalContext) -> dict:
    outfits, gt = outfits_for_context(ctx)                                                    # [G, 4] each
    out = _renamed(score_catalogue_outfits(ctx, outfits), "compatibility", "grounded_compatibility")
    out["outfits_equal_to_gt"] = int((outfits == gt).all(axis=1).sum())
    return out
