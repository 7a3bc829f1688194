"""DualFashion's text metrics on generated attribute captions (spec §6 items 5-7, difashion_eval.md §5).

Captions are parsed leniently with `text.tokenizer.parse_caption` (the 4 keys Color, Material, Design features,
Clothing Fashion Style). `encode_text` is any `texts -> [N, E]` function (normally `ClipEncoder.texts`).
  * parse rate: fraction of captions from which all 4 keys were read.
  * text personalisation (per key): cos(E("Key: gen_value"), E("Key: pref_value")), pairs where both exist.
  * text diversity D_s: mean over rows (one blank) with >= 2 captions of the mean pairwise 1 - cos of full-caption
    embeddings (CLIP truncates at 77 tokens); D_a: per-key entropy (nats) of value frequencies (lower-cased values),
    reported per key, as a mean over keys, and count-weighted by the number of values per key.
  * image-text alignment (per key): cos(E_img(g), E("Key: value")) with the value read from g's OWN generated
    caption (the original read a never-produced `extracted_caption.json`), no x100, as in DualFashion.
  * synthetic data only (`caption_oracle`): the rate of caption values that belong to their own key's vocabulary
    (canonical value or synonym), caption colour = the colour the oracle reads from the same generated image, and
    caption colour = the user's latent favourite (with chance and lift, as the oracle's image preference match).
Also their runners and registration.
"""
from __future__ import annotations

import collections
import itertools
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from dualfashion_jax.data import oracle
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic.truth import load_truth
from dualfashion_jax.evaluators.clip_metrics import cosine
from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.oracle_metrics import dataset_shapes, preference_match
from dualfashion_jax.evaluators.registry import register
from dualfashion_jax.text.tokenizer import CAPTION_KEYS, parse_caption

EncodeText = Callable[[Sequence[str]], np.ndarray]


def _slug(key: str) -> str:
    return key.lower().replace(" ", "_")


def key_text(key: str, value: str) -> str:
    """The per-attribute text DualFashion embeds: 'Key: value'."""
    return f"{key}: {value}"


def parse_rate(captions: Sequence[str | None]) -> dict[str, float]:
    """Fraction of captions with all 4 attribute keys parsed (None = not generated, counts as a failure)."""
    ok = [c is not None and len(parse_caption(c)) == len(CAPTION_KEYS) for c in captions]
    return {"caption_parse_rate": float(np.mean(ok)) if ok else float("nan"), "n": len(ok)}


def _per_key_cos(pairs: Mapping[str, list[tuple[str, str]]], encode_text: EncodeText, prefix: str) -> dict[str, float]:
    out, means = {}, []
    for key in CAPTION_KEYS:
        p = pairs.get(key, [])
        if p:
            a = encode_text([x for x, _ in p])
            b = encode_text([y for _, y in p])
            v = float(cosine(a, b).mean())
            means.append(v)
            out[f"{prefix}_{_slug(key)}"] = v
        out[f"{prefix}_{_slug(key)}_n"] = len(p)
    out[prefix] = float(np.mean(means)) if means else float("nan")
    return out


def text_personalization(captions: Sequence[str | None], preferences: Sequence[str | None],
                         encode_text: EncodeText) -> dict[str, float]:
    """Per-key cos of CLIP text embeddings of 'Key: gen_value' vs 'Key: pref_value' (and their mean)."""
    if len(captions) != len(preferences):
        raise ValueError(f"text_personalization: {len(captions)} captions vs {len(preferences)} preferences")
    pairs: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for cap, pref in zip(captions, preferences):
        if cap is None or pref is None:
            continue
        g, p = parse_caption(cap), parse_caption(pref)
        for key in CAPTION_KEYS:
            if key in g and key in p:
                pairs[key].append((key_text(key, g[key]), key_text(key, p[key])))
    return _per_key_cos(pairs, encode_text, "text_personalization")


def text_image_alignment(captions: Sequence[str | None], image_emb: np.ndarray,
                         encode_text: EncodeText) -> dict[str, float]:
    """Per-key cos(E_img(g), E_txt('Key: value')) with values from g's own generated caption."""
    image_emb = np.asarray(image_emb, np.float32)
    if len(captions) != len(image_emb):
        raise ValueError(f"text_image_alignment: {len(captions)} captions vs {len(image_emb)} image embeddings")
    out, means = {}, []
    parsed = [parse_caption(c) if c is not None else {} for c in captions]
    for key in CAPTION_KEYS:
        rows = [i for i, p in enumerate(parsed) if key in p]
        if rows:
            t = encode_text([key_text(key, parsed[i][key]) for i in rows])
            v = float(cosine(image_emb[rows], t).mean())
            means.append(v)
            out[f"text_align_{_slug(key)}"] = v
        out[f"text_align_{_slug(key)}_n"] = len(rows)
    out["text_align"] = float(np.mean(means)) if means else float("nan")
    return out


def semantic_diversity(captions_by_row: Sequence[Sequence[str]], encode_text: EncodeText) -> dict[str, float]:
    """D_s: mean over rows with >= 2 captions of mean pairwise (1 - cos) of full-caption text embeddings."""
    per_row = []
    for caps in captions_by_row:
        caps = [c for c in caps if c is not None]
        if len(caps) < 2:
            continue
        emb = encode_text(caps)
        i, j = zip(*itertools.combinations(range(len(caps)), 2))
        per_row.append(max(0.0, float(np.mean(1.0 - cosine(emb[list(i)], emb[list(j)])))))  # >= 0 up to rounding
    return {"text_diversity_semantic": float(np.mean(per_row)) if per_row else float("nan"),
            "text_diversity_rows": len(per_row)}


def attribute_entropy(captions: Sequence[str | None]) -> dict[str, float]:
    """D_a: per-key entropy (nats) of the value distribution; mean over keys and count-weighted mean."""
    counts = {k: collections.Counter() for k in CAPTION_KEYS}
    for c in captions:
        if c is None:
            continue
        for k, v in parse_caption(c).items():
            counts[k][v.strip().lower()] += 1
    out, ents, weights = {}, [], []
    for k, cnt in counts.items():
        n = sum(cnt.values())
        if n:
            h = -sum((m / n) * math.log(m / n) for m in cnt.values())
            out[f"attr_entropy_{_slug(k)}"] = h
            ents.append(h)
            weights.append(n)
    out["attr_entropy_mean"] = float(np.mean(ents)) if ents else float("nan")
    out["attr_entropy_weighted"] = float(np.average(ents, weights=weights)) if ents else float("nan")
    return out


def value_in_vocabulary(captions: Sequence[str | None]) -> dict[str, float]:
    """Fraction of (caption, key) slots whose value belongs to that key's synthetic vocabulary (canonical or
    synonym; a missing key or caption counts as a miss), overall and per key."""
    hits = {k: [c is not None and A.parse_value(k, parse_caption(c).get(k, "")) >= 0 for c in captions]
            for k in CAPTION_KEYS}
    out = {f"caption_in_vocab_{_slug(k)}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
    allv = [x for v in hits.values() for x in v]
    out["caption_value_in_vocab"] = float(np.mean(allv)) if allv else float("nan")
    return out


def caption_colours(captions: Sequence[str | None]) -> np.ndarray:
    """[N] colour index named by each caption's Color value (-1: none, or not a colour)."""
    return np.asarray([A.parse_value("Color", parse_caption(c).get("Color", "")) if c is not None else -1
                       for c in captions], np.int64)


def caption_colour_scores(captions: Sequence[str | None], image_colour: np.ndarray, uids: np.ndarray,
                          categories: np.ndarray, truth) -> dict[str, float]:
    """Caption colour vs the oracle's colour of the same image [N] (match; chance = the match rate if captions and
    images were paired at random with the same colour frequencies, sum_c P_caption(c) P_image(c); lift), and vs
    the user's favourite colour of the requested category (match, chance = the non-personalised prior's rate, lift).
    The image chance exposes captions that name one colour for everything (a constant caption scores its share)."""
    colours = caption_colours(captions)
    if colours.shape != np.asarray(image_colour).shape:
        raise ValueError(f"caption_colour_scores: {colours.shape[0]} captions for {np.asarray(image_colour).shape} "
                         "decoded image colours")
    pref = preference_match({"colour": colours}, uids, categories, truth)
    image_colour = np.asarray(image_colour)
    match = float(np.mean(colours == image_colour))
    chance = float(sum(np.mean(colours == c) * np.mean(image_colour == c) for c in np.unique(image_colour)))
    return {"caption_colour_image": match, "caption_colour_image_chance": chance,
            "caption_colour_image_lift": match / chance if chance > 0 else float("nan"),
            **{f"caption_{k}": v for k, v in pref.items()}}


# ------------------------------------------------------------------------------------------------ runners
def need_captions(ctx: EvalContext) -> list[str | None]:
    """The entries' generated captions; ValueError when the run generated no text."""
    if all(c is None for c in ctx.captions):
        raise ValueError(f"{ctx.results_dir / 'records.json'}: no generated captions (gen[].caption is null); "
                         "text metrics need a run that generated text")
    return ctx.captions


@register("caption_parse_rate", group="Text", headline=[("caption_parse_rate", "Parse")],
          description="fraction of generated captions with all 4 attributes parsed")
def run_caption_parse_rate(ctx: EvalContext) -> dict:
    return parse_rate(need_captions(ctx))


@register("text_align", networks=["clip"], group="Text", headline=[("text_align", "Text Align")],
          description="cos(CLIP image, CLIP text 'Key: value') per attribute, values from the image's own caption")
def run_text_align(ctx: EvalContext) -> dict:
    return text_image_alignment(need_captions(ctx), ctx.gen_clip(), ctx.clip().texts)


@register("text_personalization", networks=["clip"], group="Text", headline=[("text_personalization", "Text Pers.")],
          description="cos(CLIP 'Key: generated value', CLIP 'Key: preference value') per attribute")
def run_text_personalization(ctx: EvalContext) -> dict:
    return text_personalization(need_captions(ctx), ctx.preferences, ctx.clip().texts)


@register("text_diversity", networks=["clip"], group="Text",
          description="D_s: pairwise 1-cos of caption embeddings per blank (K >= 2); D_a: attribute value entropy "
                      "(nats)",
          headline=[("text_diversity_semantic", "D_s"), ("attr_entropy_mean", "D_a")])
def run_text_diversity(ctx: EvalContext) -> dict:
    caps = need_captions(ctx)
    rows: dict[tuple[int, int], list[str]] = {}
    for (ri, g), c in zip(ctx.entries, caps):
        if c is not None:
            rows.setdefault((ri, g.slot), []).append(c)
    out = semantic_diversity(list(rows.values()), ctx.clip().texts)
    out.update(attribute_entropy(caps))
    return out


@register("caption_oracle", group="Text",
          description="synthetic data only: caption values in their own key's vocabulary, caption colour = the "
                      "oracle's colour of the same image, caption colour = the user's favourite (lift vs chance)",
          headline=[("caption_value_in_vocab", "Cap. in vocab"), ("caption_colour_image", "Cap. colour = image"),
                    ("caption_pref_colour_lift", "Cap. pref lift")])
def run_caption_oracle(ctx: EvalContext) -> dict:
    caps = need_captions(ctx)
    decoded = oracle.decode_attributes(ctx.gen_images(), shapes=dataset_shapes(ctx.data_dir))
    out = value_in_vocabulary(caps)
    out.update(caption_colour_scores(caps, decoded["colour"], np.asarray(ctx.uids), np.asarray(ctx.categories),
                                     load_truth(ctx.data_dir)))
    return out
