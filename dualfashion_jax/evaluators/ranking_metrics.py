"""Ranking metrics of a learned user-item scorer (DVBPR) next to a popularity and a CLIP-profile baseline.

Every scorer maps uids -> scores over the whole catalogue [U, num_items + 1] (column 0 = the blank item, never
ranked). Metrics, all over the split's users:
  auc          DVBPR's protocol: per user, P(score(held-out positive) > score(item the user never touched)),
               averaged over users (ties count 1/2); held-out = the split's positives minus the train positives.
  fitb_acc     5-way FITB: the split's candidates (index 0 = ground truth) ranked by the user's score.
  recall@K     the FITB ground truth within the user's top K over catalogue items of its category.
  oracle_auc   synthetic data only: per user and category, P(model orders two items as the oracle's colour
               preference does), over item pairs the oracle strictly orders.
Scorers: `dvbpr` (theta_u . Phi(x_i)), `popularity` (train interaction counts), `clip` (cosine of the item's CLIP
embedding to the mean embedding of the user's train positives: the project's CLIP retrieval applied to ranking).
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from dualfashion_jax.data import interactions
from dualfashion_jax.data.format import FormatError, SafeDataset
from dualfashion_jax.data.images import ItemImages, ItemLatents
from dualfashion_jax.data.synthetic import truth as truth_lib
from dualfashion_jax.evaluators.context import TRAINED, EvalContext, NetworkInfo
from dualfashion_jax.evaluators.registry import register
from dualfashion_jax.modeling.dvbpr import load_dvbpr
from dualfashion_jax.models.dvbpr import DVBPR

Scorer = Callable[[np.ndarray], np.ndarray]  # uids [U] -> scores [U, num_items + 1]
KS = (10, 50)


def pair_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) over all pairs of the two 1-D score arrays, ties 1/2 (Mann-Whitney, by sorting)."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    if not pos.size or not neg.size:
        raise ValueError(f"pair_auc needs both positives and negatives, got {pos.size} and {neg.size}")
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (pos.size * neg.size))


def heldout_auc(scores: np.ndarray, uids: np.ndarray, held: Mapping[int, np.ndarray],
                seen: Mapping[int, np.ndarray]) -> float:
    """Mean over `uids` of pair_auc(held-out positives, items neither held-out nor seen); scores [U, N+1]."""
    n = scores.shape[1]
    vals = []
    for row, u in enumerate(np.asarray(uids).tolist()):
        mask = np.ones(n, bool)
        mask[0] = False
        mask[held[u]] = False
        mask[seen.get(u, np.zeros(0, np.int64))] = False
        vals.append(pair_auc(scores[row, held[u]], scores[row, mask]))
    return float(np.mean(vals))


def fitb_accuracy(cand_scores: np.ndarray) -> float:
    """[R, 5] candidate scores, column 0 the ground truth -> accuracy; a tie at the top counts 1/#tied."""
    s = np.asarray(cand_scores, np.float64)
    top = s == s.max(1, keepdims=True)
    return float(np.mean(top[:, 0] / top.sum(1)))


def recall_at_k(scores: np.ndarray, gt: np.ndarray, item_category: np.ndarray, ks=KS) -> dict[int, float]:
    """Rows [R, N+1] of scores, their ground-truth item gt [R]: recall@k over the gt's category (ties: pessimistic)."""
    out = {k: [] for k in ks}
    for row, g in enumerate(np.asarray(gt).tolist()):
        same = np.flatnonzero(item_category == item_category[g])
        rank = int(np.sum(scores[row, same] >= scores[row, g]))  # 1 = best; ties count against
        for k in ks:
            out[k].append(rank <= k)
    return {k: float(np.mean(v)) for k, v in out.items()}


def oracle_auc(scores: np.ndarray, pref: np.ndarray, item_category: np.ndarray, item_colour: np.ndarray) -> float:
    """scores [U, N+1], pref [U, C, K_col] (the users' rows): mean over users and categories of the fraction of
    oracle-ordered item pairs (pref differs) that the scores order the same way (ties 1/2)."""
    vals = []
    for c in np.unique(item_category[item_category >= 0]).tolist():
        items = np.flatnonzero(item_category == c)
        o = pref[:, c, item_colour[items]]  # [U, n]
        s = scores[:, items]  # [U, n]
        do = np.sign(o[:, :, None] - o[:, None, :])  # [U, n, n]
        ds = np.sign(s[:, :, None] - s[:, None, :])
        ordered = do > 0
        agree = np.where(ordered, (ds > 0) + 0.5 * (ds == 0), 0.0).sum((1, 2))
        count = ordered.sum((1, 2))
        vals.append(np.where(count > 0, agree / np.maximum(count, 1), np.nan))
    return float(np.nanmean(np.stack(vals)))


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, K]; one module-level program, so one compile per (encoder structure, batch shape)."""
    return nnx.merge(graphdef, state)(x)


def catalogue_embeddings(model: DVBPR, ds: SafeDataset, batch: int = 256) -> np.ndarray:
    """Phi of every catalogue item [N+1, K] (row 0 = the blank item), from the visuals the model was trained on.

    Every chunk is padded to `batch` rows, so any catalogue size reuses one compiled program."""
    cfg = model.cfg
    load = ItemLatents(ds) if cfg.input_kind == "latent" else ItemImages(ds, cfg.input_size)
    graphdef, state = nnx.split(model.encoder)
    ids = np.arange(ds.num_items + 1)
    out = []
    for lo in range(0, ids.size, batch):
        x = interactions.model_input(load.many(ids[lo:lo + batch]), cfg.input_kind)  # [b <= batch, H, W, C]
        if tuple(x.shape[1:]) != (cfg.input_size, cfg.input_size, cfg.in_channels):
            raise ValueError(f"{ds.root}: item visuals {list(x.shape[1:])} do not match the DVBPR model's input "
                             f"[{cfg.input_size}, {cfg.input_size}, {cfg.in_channels}] ({cfg.input_kind})")
        n = x.shape[0]
        x = np.pad(np.asarray(x), ((0, batch - n),) + ((0, 0),) * 3)  # [batch, H, W, C]
        out.append(np.asarray(_encode(graphdef, state, x))[:n])
    return np.concatenate(out)  # [N+1, K]


def dvbpr_scorer(model: DVBPR, ds: SafeDataset) -> Scorer:
    emb = catalogue_embeddings(model, ds)
    theta = np.asarray(model.theta[...], np.float32)
    return lambda uids: theta[np.asarray(uids)] @ emb.T


def popularity_scorer(train: Mapping[int, np.ndarray], num_items: int) -> Scorer:
    counts = np.zeros(num_items + 1, np.float64)
    for items in train.values():
        counts[items] += 1.0
    return lambda uids: np.broadcast_to(counts, (len(uids), num_items + 1))


def profile_scorer(features: np.ndarray, train: Mapping[int, np.ndarray]) -> Scorer:
    """Cosine of each item's feature [N+1, E] to the mean normalised feature of the user's train positives."""
    f = features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)

    def score(uids):
        prof = np.stack([f[train[u]].mean(0) if u in train else np.zeros(f.shape[1])
                         for u in np.asarray(uids).tolist()])  # [U, E]
        return prof @ f.T
    return score


def ranking_table(scorers: Mapping[str, Scorer], ds: SafeDataset, split: str = "test",
                  train_split: str = "train", ks=KS) -> dict[str, dict[str, float]]:
    """{scorer: {auc, fitb_acc, recall@K..., oracle_auc (synthetic only)}} on `split`'s users."""
    train = interactions.user_positives(ds, train_split)
    held = interactions.held_out(train, interactions.user_positives(ds, split))
    if not held:
        raise ValueError(f"{ds.root}: split {split!r} has no held-out interactions beyond {train_split!r}")
    uids = np.asarray(sorted(held), np.int64)
    cand = ds.candidates(split)
    cat = ds.iid_category
    try:
        truth = truth_lib.load_truth(ds.root)
    except FormatError:
        truth = None  # a real dataset: no oracle
    out = {}
    for name, scorer in scorers.items():
        s = np.asarray(scorer(uids), np.float64)  # [U, N+1]
        cs = np.asarray(scorer(cand.uids), np.float64)  # [R, N+1]
        row = {"auc": heldout_auc(s, uids, held, train),
               "fitb_acc": fitb_accuracy(np.take_along_axis(cs, cand.candidates, 1))}
        row.update({f"recall@{k}": v for k, v in recall_at_k(cs, cand.candidates[:, 0], cat, ks).items()})
        if truth is not None:
            rows = truth.user_rows(uids)
            row["oracle_auc"] = oracle_auc(s, truth.colour_pref[rows], truth.item["category"], truth.item["colour"])
        out[name] = row
    return out


def markdown(table: Mapping[str, Mapping[str, float]]) -> str:
    """The table as markdown: one row per scorer."""
    cols = list(next(iter(table.values())))
    lines = ["| scorer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for n, r in table.items()]
    return "\n".join(lines)


@register("dvbpr_ranking", networks=["dvbpr", "clip"], group="Retrieval", tasks=("pfitb", "gor"),
          description="DVBPR ranking (AUC on held-out interactions, 5-way FITB, Recall@K in the category, oracle "
                      "AUC on synthetic data) next to popularity and CLIP-profile baselines; needs the DVBPR "
                      "workdir as checkpoints['dvbpr']",
          headline=(("dvbpr/auc", "DVBPR AUC"), ("dvbpr/fitb_acc", "DVBPR FITB")))
def run_dvbpr_ranking(ctx: EvalContext) -> dict[str, float]:
    path = ctx.opt.checkpoints.get("dvbpr")
    if not path:
        raise FileNotFoundError("metric dvbpr_ranking needs a trained DVBPR workdir (EvalOptions.checkpoints"
                                "['dvbpr']; train one with configs/dvbpr.py)")
    model, step = load_dvbpr(path)
    ctx.networks["dvbpr"] = NetworkInfo("dvbpr", TRAINED, f"{path} (step {step})",
                                        {"input_kind": model.cfg.input_kind, "embed_dim": model.cfg.embed_dim})
    train = interactions.user_positives(ctx.dataset, "train")
    scorers = {"dvbpr": dvbpr_scorer(model, ctx.dataset),
               "popularity": popularity_scorer(train, ctx.dataset.num_items),
               "clip": profile_scorer(ctx.catalogue_clip(), train)}
    table = ranking_table(scorers, ctx.dataset, ctx.split)
    return {"dvbpr_step": float(step), **{f"{s}/{m}": v for s, row in table.items() for m, v in row.items()}}
