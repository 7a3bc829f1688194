"""Oracle metrics for the synthetic dataset: `data/oracle.py` reads the attributes back from pixels, this file scores.

These are the only metrics whose ground truth is known exactly (attributes of every item, each user's latent
favourite colour/material, the outfit rules), so they are the honest check of the offline demo:
  * attribute accuracy of generated images vs the GT item (category/colour/material/style),
  * preference match vs the user's latent favourite (+ chance and lift),
  * caption agreement (generated caption vs what the oracle reads from the same image),
  * rule compatibility of the outfits completed with the generated items,
  * appearance-fit (datasets made with appearance): generated colour and material suit the user's appearance.
`data.oracle` calibrates its classifiers on first use (about a second). Also the `oracle` runner and registration.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

from dualfashion_jax.data import oracle
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.synthetic import appearance as appearance_lib
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic import captions as C
from dualfashion_jax.data.synthetic.truth import Truth, load_truth
from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.registry import register


def _rate(hits: np.ndarray) -> float:
    return float(np.mean(hits)) if hits.size else float("nan")


def attribute_accuracy(decoded: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of images whose decoded attribute equals the truth, for every attribute present in both."""
    out = {}
    for key in ("category", "colour", "material", "style"):
        if key in decoded and key in true:
            d, t = np.asarray(decoded[key]), np.asarray(true[key])
            if d.shape != t.shape:
                raise ValueError(f"attribute {key!r}: decoded shape {d.shape} != truth shape {t.shape}")
            out[f"{key}_acc"] = _rate(d == t)
    if not out:
        raise ValueError(f"no common attribute between decoded {sorted(decoded)} and truth {sorted(true)}")
    return out


def item_truth(truth: Truth, iids: np.ndarray) -> dict[str, np.ndarray]:
    """Ground-truth attributes of items `iids` (any shape) from truth/items.json."""
    iids = np.asarray(iids, np.int64)
    n = truth.item["category"].shape[0] - 1
    if iids.size and (iids.min() < 1 or iids.max() > n):
        raise ValueError(f"item ids must be in 1..{n}, got range [{iids.min()}, {iids.max()}]")
    return {k: v[iids] for k, v in truth.item.items()}


def caption_agreement(captions: Sequence[str], decoded: dict[str, np.ndarray]) -> dict[str, float]:
    """How often a caption's Color / Material / Style agrees with the attributes decoded from its image.

    Unparsable or unknown values count as disagreement; style is compared with the style implied by the
    decoded colour x material (`attributes.STYLE_TABLE`).
    """
    if len(captions) != np.asarray(decoded["colour"]).shape[0]:
        raise ValueError(f"{len(captions)} captions for {np.asarray(decoded['colour']).shape[0]} decoded images")
    keys = {"Color": "colour", "Material": "material", "Clothing Fashion Style": "style"}
    hits = {k: np.zeros(len(captions), bool) for k in keys}
    parsed = np.zeros(len(captions), bool)
    for i, text in enumerate(captions):
        values = C.parse_caption(text)
        parsed[i] = all(k in values for k in A.CAPTION_KEYS)
        for key, field in keys.items():
            pixel_value = int(decoded[field][i])
            if key in values and pixel_value >= 0:
                hits[key][i] = A.parse_value(key, values[key]) == pixel_value
    return {"caption_parse_rate": _rate(parsed), "caption_colour_agreement": _rate(hits["Color"]),
            "caption_material_agreement": _rate(hits["Material"]),
            "caption_style_agreement": _rate(hits["Clothing Fashion Style"])}


def preference_match(decoded: dict[str, np.ndarray], uids: np.ndarray, categories: np.ndarray,
                     truth: Truth) -> dict[str, float]:
    """Rate at which generated colour/material equal the user's latent favourite for the requested category.

    `*_chance` is the rate a non-personalised generator sampling the train outfits' attribute prior of that
    category would get; `*_lift` = match / chance.
    """
    uids, categories = np.asarray(uids).reshape(-1), np.asarray(categories, np.int64).reshape(-1)
    if not uids.shape == categories.shape == np.asarray(decoded["colour"]).shape:
        raise ValueError(f"uids {uids.shape}, categories {categories.shape} and decoded "
                         f"{np.asarray(decoded['colour']).shape} must have one entry per generated image")
    rows = truth.user_rows(uids)
    out = {}
    for field, fav, prior in (("colour", truth.fav_colour, truth.colour_prior),
                              ("material", truth.fav_material, truth.material_prior)):
        if field not in decoded:
            continue
        target = fav[rows, categories]
        match, chance = _rate(np.asarray(decoded[field]) == target), _rate(prior[categories, target])
        out[f"pref_{field}_match"], out[f"pref_{field}_chance"] = match, chance
        out[f"pref_{field}_lift"] = match / chance if chance > 0 else float("nan")
    return out


def appearance_fit(decoded: dict[str, np.ndarray], uids: np.ndarray, categories: np.ndarray,
                   appearance: Mapping[int, Mapping[str, str]], truth: Truth) -> dict[str, float]:
    """Rate at which a generated item's colour and material both suit its user's appearance (`appearance.suits`).

    `appearance_fit_chance`: the rate for an item drawn from the train colour x material prior of its category
    (colour and material independent). Users without an appearance entry are skipped; none -> {}.
    """
    uids, categories = np.asarray(uids).reshape(-1), np.asarray(categories, np.int64).reshape(-1)
    col, mat = np.asarray(decoded["colour"]).reshape(-1), np.asarray(decoded["material"]).reshape(-1)
    if not uids.shape == categories.shape == col.shape:
        raise ValueError(f"appearance_fit: uids {uids.shape}, categories {categories.shape} and decoded {col.shape} "
                         "must have one entry per generated image")
    rows = np.flatnonzero([int(u) in appearance for u in uids])
    if rows.size == 0:
        return {}
    fit, chance = np.zeros(rows.size, bool), np.zeros(rows.size)
    for j, i in enumerate(rows):
        a = appearance[int(uids[i])]
        fit[j] = appearance_lib.suits(a, col[i:i + 1], mat[i:i + 1])[0]
        ok = appearance_lib.suits(a, *np.meshgrid(np.arange(len(A.COLORS)), np.arange(len(A.MATERIALS)),
                                                   indexing="ij"))  # [K_col, K_mat]
        chance[j] = float(truth.colour_prior[categories[i]] @ ok @ truth.material_prior[categories[i]])
    return {"appearance_fit": _rate(fit), "appearance_fit_chance": float(chance.mean())}


def outfit_compatibility(outfits: np.ndarray, generated: dict[str, np.ndarray], truth: Truth) -> dict[str, float]:
    """Rule-compatibility rate of outfits whose 0 slots are filled by generated items.

    outfits [N, 4] item ids with 0 where an item was generated (PFITB: one 0; GOR: all 0); `generated` holds
    decoded "category", "colour", "material" arrays [N, 4] (read at the 0 slots). For rows with exactly one
    generated slot, `compat_chance` is the rate for a random catalogue item of the same decoded category.
    """
    outfits = np.asarray(outfits, np.int64)
    if outfits.ndim != 2 or outfits.shape[1] != 4:
        raise ValueError(f"outfits must be [N, 4] item ids, got {list(outfits.shape)}")
    gen = {k: np.asarray(generated[k], np.int64) for k in ("category", "colour", "material")}
    for k, v in gen.items():
        if v.shape != outfits.shape:
            raise ValueError(f"generated[{k!r}] must be [N, 4] like outfits {list(outfits.shape)}, got {list(v.shape)}")
    ctx = item_truth(truth, np.maximum(outfits, 1))
    is_gen = outfits == 0
    attrs = {k: np.where(is_gen, gen[k], ctx[k]) for k in gen}
    ok = oracle.compatible_batch(attrs["category"], attrs["colour"], attrs["material"])
    out = {"compat_rate": _rate(ok), "generated_items": float(is_gen.sum())}
    single = np.flatnonzero(is_gen.sum(-1) == 1)
    if single.size:
        item_cat = truth.item["category"][1:]
        rates = []
        for r in single:
            slot = int(np.flatnonzero(is_gen[r])[0])
            pool = np.flatnonzero(item_cat == attrs["category"][r, slot]) + 1
            if pool.size == 0:
                rates.append(0.0)
                continue
            tiled = {k: np.repeat(attrs[k][r][None], pool.size, 0) for k in attrs}
            for k in tiled:
                tiled[k][:, slot] = truth.item[k][pool]
            rates.append(oracle.compatible_batch(tiled["category"], tiled["colour"], tiled["material"]).mean())
        out["compat_chance"] = float(np.mean(rates))
    return out


# --------------------------------------------------------------------------------------- task-level summaries
def pfitb_oracle_metrics(images: np.ndarray, uids: np.ndarray, fitb_outfits: np.ndarray, categories: np.ndarray,
                         truth: Truth, captions: Sequence[str] | None = None, shapes: str = "procedural",
                         gt_outfits: np.ndarray | None = None) -> dict[str, float]:
    """All oracle metrics for PFITB: one generated image [N, S, S, 3] per FITB row (outfits with one 0)."""
    fitb_outfits, categories = np.asarray(fitb_outfits, np.int64), np.asarray(categories, np.int64)
    blank = fitb_outfits == 0
    if fitb_outfits.shape != categories.shape or not (blank.sum(-1) == 1).all():
        raise ValueError(f"fitb_outfits {list(fitb_outfits.shape)} and categories {list(categories.shape)} must be "
                         "[N, 4] with exactly one 0 (the blank) per row")
    dec = oracle.decode_attributes(images, shapes)
    if dec["colour"].shape[0] != fitb_outfits.shape[0]:
        raise ValueError(f"{dec['colour'].shape[0]} images for {fitb_outfits.shape[0]} FITB rows")
    want = categories[blank]  # [N] the requested category
    out = {"category_match": _rate(dec["category"] == want)}
    out.update(preference_match(dec, uids, want, truth))
    out.update(outfit_compatibility(fitb_outfits, {k: np.where(blank, dec[k][:, None], 0)
                                                   for k in ("category", "colour", "material")}, truth))
    if gt_outfits is not None:
        gt = item_truth(truth, np.asarray(gt_outfits, np.int64)[blank])
        out.update({f"gt_{k}_match": _rate(dec[k] == gt[k]) for k in ("colour", "material", "style")})
    if captions is not None:
        out.update(caption_agreement(captions, dec))
    return out


def gor_oracle_metrics(images: np.ndarray, uids: np.ndarray, categories: np.ndarray, truth: Truth,
                       shapes: str = "procedural") -> dict[str, float]:
    """All oracle metrics for GOR: 4 generated images [N, 4, S, S, 3] per row of requested categories [N, 4]."""
    imgs, categories = np.asarray(images), np.asarray(categories, np.int64)
    if imgs.ndim != 5 or imgs.shape[:2] != categories.shape or categories.shape[1:] != (4,):
        raise ValueError(f"GOR images must be [N, 4, S, S, 3] matching categories [N, 4]; got images "
                         f"{list(imgs.shape)}, categories {list(categories.shape)}")
    n = imgs.shape[0]
    flat_dec = oracle.decode_attributes(imgs.reshape(n * 4, *imgs.shape[2:]), shapes)
    dec = {k: v.reshape(n, 4) for k, v in flat_dec.items()}
    out = {"category_match": _rate(dec["category"] == categories)}
    flat = {k: v.reshape(-1) for k, v in dec.items()}
    out.update(preference_match(flat, np.repeat(np.asarray(uids), 4), categories.reshape(-1), truth))
    comp = outfit_compatibility(np.zeros((n, 4), np.int64), dec, truth)
    out.update({k: v for k, v in comp.items() if k != "compat_chance"})
    return out


# --------------------------------------------------------------------------------------------- evaluate run
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
    out.update(attribute_accuracy(decoded, item_truth(truth, np.asarray(gt_iids))))
    out.update(preference_match(decoded, np.asarray(uids), np.asarray(categories), truth))
    out.update(appearance_fit(decoded, np.asarray(uids), np.asarray(categories), SafeDataset(data_dir).appearance,
                              truth))
    if captions is not None and all(c is not None for c in captions):
        out.update(caption_agreement(list(captions), decoded))
    generated = {k: np.where(gidx >= 0, np.asarray(decoded[k])[np.maximum(gidx, 0)], -1)
                 for k in ("category", "colour", "material")}
    out.update(outfit_compatibility(outfits, generated, truth))
    return {f"oracle_{k}": float(v) for k, v in out.items()}


@register("oracle", group="Oracle",
          description="synthetic data only: attribute accuracy, preference match/lift, caption agreement, rule "
                      "compatibility",
          headline=[("oracle_category_acc", "Cat. acc"), ("oracle_colour_acc", "Colour acc"),
                    ("oracle_pref_colour_lift", "Pref lift"), ("oracle_compat_rate", "Rule compat")])
def run_oracle(ctx: EvalContext) -> dict:
    groups = list(ctx.groups().items())
    outfits = np.asarray([ctx.records[ri].outfit for (ri, _), _ in groups], np.int64)
    gidx = -np.ones_like(outfits)
    for row, (_, idx) in enumerate(groups):
        for i in idx:
            outfits[row, ctx.slots[i]], gidx[row, ctx.slots[i]] = 0, i
    caps = None if any(c is None for c in ctx.captions) else ctx.captions
    return oracle_metrics(ctx.gen_images(), data_dir=ctx.data_dir, uids=ctx.uids, categories=ctx.categories,
                          gt_iids=ctx.gt_iids, captions=caps, outfits=outfits, outfit_gen_index=gidx)
