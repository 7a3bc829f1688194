"""Caption texts in DualFashion's formats, built from attribute indices, and a tolerant caption parser.

* 4-key caption / preference JSON: `{"Color", "Material", "Design features", "Clothing Fashion Style"}`
  (spec §3), serialised with `json.dumps` so the label-mask regex `"<Key>"\\s*:\\s*"(value)"` finds every value.
* 7-key stage-1 caption (adds Category, Subcategory, Silhouette) and a one-sentence `re_caption`.
* Stage-3 augmentations: the same attributes with paraphrased values (`attributes.SYNONYMS`) and permuted keys.
* `parse_caption` mirrors DualFashion's `parse_attribute_fields` (fix quotes/braces/trailing commas, JSON, regex
  fallback) so the oracle can read generated captions.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.text import tokenizer

KEYS = A.CAPTION_KEYS


def elements(colour: int, material: int, feature: int, style: int) -> dict[str, str]:
    """The 4 caption values (canonical strings) of an item, in DualFashion's key order."""
    return {"Color": A.COLORS[colour], "Material": A.MATERIALS[material],
            "Design features": A.FEATURES[feature], "Clothing Fashion Style": A.STYLES[style]}


def caption_json(values: Mapping[str, str], order: Sequence[str] = KEYS) -> str:
    """Serialise caption values as a JSON object string with the keys in `order`."""
    return json.dumps({k: values[k] for k in order}, ensure_ascii=False)


def stage1_caption(category: int, colour: int, material: int, feature: int, style: int) -> str:
    """The 7-key stage-1 caption (spec §3)."""
    e = elements(colour, material, feature, style)
    full = {"Category": A.CATEGORIES[category], "Subcategory": A.SUBCATEGORIES[category], "Color": e["Color"],
            "Material": e["Material"], "Silhouette": A.SILHOUETTES[category],
            "Design features": e["Design features"], "Clothing Fashion Style": e["Clothing Fashion Style"]}
    return json.dumps(full, ensure_ascii=False)


def re_caption(category: int, colour: int, material: int, feature: int, style: int) -> str:
    """A one-sentence description used as the stage-1 text-to-image prompt."""
    feat = "" if feature == 0 else f" {A.FEATURES[feature]}"
    return (f"A {A.COLORS[colour]} {A.MATERIALS[material]} {A.CATEGORIES[category]}{feat}, "
            f"{A.STYLES[style]} style, on white background.")


def augmented_captions(rng: np.random.Generator, colour: int, material: int, feature: int, style: int,
                       n: int = 4) -> list[str]:
    """`n` stage-3 caption variants: the canonical caption, then paraphrased values and permuted key orders."""
    idx = {"Color": colour, "Material": material, "Design features": feature, "Clothing Fashion Style": style}
    out = [caption_json(elements(colour, material, feature, style))]
    while len(out) < n:
        values = {k: A.SYNONYMS[k][i][int(rng.integers(len(A.SYNONYMS[k][i])))] for k, i in idx.items()}
        order = [KEYS[j] for j in rng.permutation(len(KEYS))]
        out.append(caption_json(values, order))
    return out


def frequency_preference(history_attrs: Sequence[Mapping[str, int]]) -> dict[str, dict[str, str]]:
    """{"Frequency": {4 keys: most frequent value}} over a user's history items of one category.

    Items are dicts with integer "colour", "material", "feature", "style"; ties go to the smaller index.
    """
    if not history_attrs:
        return {"Frequency": {k: "Unknown" for k in KEYS}}
    fields = {"Color": ("colour", A.COLORS), "Material": ("material", A.MATERIALS),
              "Design features": ("feature", A.FEATURES), "Clothing Fashion Style": ("style", A.STYLES)}
    freq = {}
    for key, (field, vocab) in fields.items():
        counts = Counter(int(a[field]) for a in history_attrs)
        best = max(sorted(counts), key=lambda i: counts[i])  # first maximum in index order
        freq[key] = vocab[best]
    return {"Frequency": freq}




def parse_caption(text: str) -> dict[str, str]:
    """The 4 target keys with non-empty string values found in a (possibly malformed) caption string."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a string, got {type(text).__name__}")
    return tokenizer.parse_caption(text)
