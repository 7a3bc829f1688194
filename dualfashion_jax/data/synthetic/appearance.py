"""Per-user appearance (body shape, height, skin tone) of the synthetic world and the oracle rules for what suits it.

Appearance is drawn from its own RNG stream (`np.random.default_rng([seed, APPEARANCE_STREAM])`), after and apart
from the world, so a dataset made without appearance is byte-identical to before. The rules are fixed tables:
  * skin tone -> colours that do NOT suit it (`UNSUITED_COLOURS`),
  * body shape and height -> materials (drawn patterns) that do NOT suit them (`UNSUITED_MATERIALS_*`).
An item suits a user when its colour and its material both suit them (`suits`); colour and material are what
`data/oracle.py` reads back from pixels, so appearance-fit is measurable on generated images.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from dualfashion_jax.data.synthetic import attributes as A

APPEARANCE_STREAM = 11
APPEARANCE_KEYS = ("body_shape", "height", "skin_tone")
BODY_SHAPES = ("pear", "apple", "hourglass", "rectangle")
HEIGHTS = ("petite", "average", "tall")
SKIN_TONES = ("fair", "medium", "deep")
VOCAB: dict[str, tuple[str, ...]] = {"body_shape": BODY_SHAPES, "height": HEIGHTS, "skin_tone": SKIN_TONES}
# Colour names of attributes.COLORS that wash out / clash with a skin tone.
UNSUITED_COLOURS: dict[str, tuple[str, ...]] = {
    "fair": ("yellow", "orange"), "medium": ("green", "purple"), "deep": ("navy blue", "black")}
# Patterns that widen or shorten a silhouette.
UNSUITED_MATERIALS_BODY: dict[str, tuple[str, ...]] = {
    "pear": ("plaid wool",), "apple": ("striped knit",), "hourglass": (), "rectangle": ("denim",)}
UNSUITED_MATERIALS_HEIGHT: dict[str, tuple[str, ...]] = {
    "petite": ("polka dot chiffon",), "average": (), "tall": ()}


def check(appearance: Mapping[str, str], where: str = "appearance") -> dict[str, str]:
    """A validated copy: keys a subset of APPEARANCE_KEYS, values from VOCAB (errors name the field)."""
    if not isinstance(appearance, Mapping):
        raise ValueError(f"{where}: expected a dict with keys {list(APPEARANCE_KEYS)}, got {type(appearance).__name__}")
    out = {}
    for k, v in appearance.items():
        if k not in VOCAB:
            raise ValueError(f"{where}: unknown key {k!r}; expected one of {list(APPEARANCE_KEYS)}")
        if v not in VOCAB[k]:
            raise ValueError(f"{where}.{k}: {v!r} is not one of {list(VOCAB[k])}")
        out[k] = str(v)
    return out


def unsuited(appearance: Mapping[str, str]) -> dict[str, set[int]]:
    """{"colour": indices, "material": indices} of attributes.COLORS / MATERIALS that do not suit `appearance`."""
    a = check(appearance)
    cols = set(UNSUITED_COLOURS.get(a.get("skin_tone", ""), ()))
    mats = set(UNSUITED_MATERIALS_BODY.get(a.get("body_shape", ""), ()))
    mats |= set(UNSUITED_MATERIALS_HEIGHT.get(a.get("height", ""), ()))
    return {"colour": {A.COLORS.index(c) for c in cols}, "material": {A.MATERIALS.index(m) for m in mats}}


def suits(appearance: Mapping[str, str], colours: np.ndarray, materials: np.ndarray) -> np.ndarray:
    """[N] bool: colour and material (indices, -1 = undecodable -> False) both suit `appearance`."""
    bad = unsuited(appearance)
    col, mat = np.asarray(colours, np.int64), np.asarray(materials, np.int64)
    ok = (col >= 0) & (mat >= 0)
    return ok & ~np.isin(col, sorted(bad["colour"])) & ~np.isin(mat, sorted(bad["material"]))


def draw(seed: int, num_users: int) -> list[dict[str, str]]:
    """One appearance per user (uid order), uniform over each vocabulary, from the appearance stream of `seed`."""
    rng = np.random.default_rng([seed, APPEARANCE_STREAM])
    picks = {k: rng.integers(0, len(VOCAB[k]), num_users) for k in APPEARANCE_KEYS}
    return [{k: VOCAB[k][int(picks[k][u])] for k in APPEARANCE_KEYS} for u in range(num_users)]


def rules_json() -> dict:
    """The appearance vocabularies and rules, as written to truth/appearance_rules.json."""
    return {"vocab": {k: list(v) for k, v in VOCAB.items()},
            "unsuited_colours": {k: list(v) for k, v in UNSUITED_COLOURS.items()},
            "unsuited_materials_body": {k: list(v) for k, v in UNSUITED_MATERIALS_BODY.items()},
            "unsuited_materials_height": {k: list(v) for k, v in UNSUITED_MATERIALS_HEIGHT.items()},
            "rule": "an item suits a user when its colour suits the skin tone and its material suits body shape "
                    "and height"}
