"""The synthetic world's fixed attribute vocabulary: categories, colours, materials, design features, styles.

Every attribute is an index into one of the tuples below. Colours and materials (patterns) are designed to be
decodable from small blurry pixels (see `data/oracle.py`); the style is not drawn, it is a deterministic
function of (colour, material) through `STYLE_TABLE`, so it can be recovered from the decoded pixels too.
Value strings are what captions carry; `SYNONYMS` lists the paraphrases used by the stage-3 augmented captions,
and `parse_value` maps any of them back to an index.
"""
from __future__ import annotations

import numpy as np

CAPTION_KEYS = ("Color", "Material", "Design features", "Clothing Fashion Style")

# Category names follow DiFashion's `id_cate_dict` wording. Role groups decide which categories can share an
# outfit (an outfit never has two categories of the same role). `FASHION_MNIST_CLASSES` maps each category to
# the Fashion-MNIST classes that draw it in shapes="fashion_mnist" mode (all 10 classes are used).
CATEGORIES = (
    "women's t-shirt",
    "women's casual pants",
    "women's sweater",
    "dress",
    "women's wool coat",
    "women's shoe",
    "crossbody bag",
    "ankle boot",
)
SUBCATEGORIES = ("short-sleeve tee", "straight-leg trousers", "crew-neck pullover", "a-line dress",
                 "long coat", "low-top shoe", "shoulder bag", "ankle boot")
SILHOUETTES = ("straight", "straight", "relaxed", "a-line", "straight", "low-cut", "boxy", "high-cut")
ROLES = ("top", "bottom", "top", "one-piece", "outerwear", "shoes", "bag", "shoes")
FASHION_MNIST_CLASSES = ((0, 6), (1,), (2,), (3,), (4,), (5, 7), (8,), (9,))
# Outfit templates (4 distinct categories, one per role); each outfit picks one, slot order is shuffled.
TEMPLATES = (
    (0, 1, 5, 6),  # t-shirt, pants, shoe, bag
    (2, 1, 7, 6),  # sweater, pants, boot, bag
    (0, 4, 1, 7),  # t-shirt, coat, pants, boot
    (3, 4, 5, 6),  # dress, coat, shoe, bag
    (0, 1, 7, 6),  # t-shirt, pants, boot, bag
    (2, 4, 1, 5),  # sweater, coat, pants, shoe
)

# Colours: name -> RGB. Well separated in RGB, also from their pattern shades (see `pattern_shade`).
COLORS = ("red", "orange", "yellow", "green", "navy blue", "purple", "pink", "black")
COLOR_RGB = np.array([
    [200, 30, 40],
    [240, 130, 20],
    [240, 205, 30],
    [30, 135, 60],
    [25, 40, 120],
    [125, 50, 155],
    [240, 115, 175],
    [30, 30, 30],
], dtype=np.float32)  # [K_col, 3]
# Whether a colour's pattern shade is lighter (mixed with white) or darker (scaled to black): whichever gives
# more contrast without landing near another palette colour.
SHADE_LIGHTER = (False, False, False, True, True, True, False, True)
NEUTRAL_COLORS = (4, 7)  # navy blue, black: harmonise with every colour
# Harmonious pairs of non-neutral colours (analogous on the colour wheel); any other pair of distinct
# non-neutral colours clashes.
HARMONIOUS_PAIRS = ((0, 1), (1, 2), (2, 3), (5, 6), (6, 0))

# Materials double as the drawn pattern: cotton = solid, denim = diagonal twill, striped knit = horizontal
# stripes, plaid wool = checks, polka dot chiffon = dots.
MATERIALS = ("cotton", "denim", "striped knit", "plaid wool", "polka dot chiffon")
BOLD_MATERIALS = (2, 3, 4)  # at most one bold pattern per outfit
FEATURES = ("plain", "with buttons", "with a pocket", "with contrasting trim")
STYLES = ("casual", "formal", "sporty", "bohemian")

_C, _F, _S, _B = 0, 1, 2, 3  # casual, formal, sporty, bohemian
# STYLE_TABLE[colour, material] -> style index. Style is "expressed" only through this co-occurrence rule.
STYLE_TABLE = np.array([
    #  cotton denim striped plaid polka
    [_S, _C, _S, _B, _B],  # red
    [_S, _C, _S, _B, _B],  # orange
    [_S, _C, _S, _C, _B],  # yellow
    [_S, _C, _C, _B, _B],  # green
    [_F, _C, _S, _F, _F],  # navy blue
    [_B, _C, _B, _F, _B],  # purple
    [_B, _C, _C, _B, _B],  # pink
    [_F, _C, _S, _F, _F],  # black
], dtype=np.int64)  # [K_col, K_mat]

SYNONYMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Color": (("red", "bright red", "scarlet"), ("orange", "tangerine", "bright orange"),
              ("yellow", "mustard yellow", "lemon yellow"), ("green", "forest green", "emerald green"),
              ("navy blue", "navy", "dark blue"), ("purple", "violet", "plum purple"),
              ("pink", "rose pink", "light pink"), ("black", "jet black", "solid black")),
    "Material": (("cotton", "pure cotton", "soft cotton"), ("denim", "washed denim", "twill denim"),
                 ("striped knit", "knit with stripes", "stripe knit"), ("plaid wool", "checked wool", "tartan wool"),
                 ("polka dot chiffon", "dotted chiffon", "chiffon with polka dots")),
    "Design features": (("plain", "minimalist", "no embellishment"), ("with buttons", "button details", "buttoned"),
                        ("with a pocket", "patch pocket", "single pocket"),
                        ("with contrasting trim", "contrast trim", "trimmed edges")),
    "Clothing Fashion Style": (("casual", "everyday casual", "relaxed"), ("formal", "elegant", "business formal"),
                               ("sporty", "athletic", "sportswear"), ("bohemian", "boho", "free-spirited")),
}
VOCAB: dict[str, tuple[str, ...]] = {
    "Color": COLORS, "Material": MATERIALS, "Design features": FEATURES, "Clothing Fashion Style": STYLES,
}


def harmony_matrix() -> np.ndarray:
    """[K_col, K_col] bool: True where two colours may appear in the same outfit."""
    k = len(COLORS)
    h = np.eye(k, dtype=bool)
    h[list(NEUTRAL_COLORS), :] = True
    h[:, list(NEUTRAL_COLORS)] = True
    for a, b in HARMONIOUS_PAIRS:
        h[a, b] = h[b, a] = True
    return h


def style_of(colour: np.ndarray | int, material: np.ndarray | int) -> np.ndarray:
    """The style implied by (colour, material) indices (elementwise)."""
    return STYLE_TABLE[np.asarray(colour), np.asarray(material)]


def parse_value(key: str, value: str) -> int:
    """Index of a caption value (canonical or synonym, case-insensitive) for `key`; -1 if unknown."""
    if key not in SYNONYMS:
        raise ValueError(f"unknown caption key {key!r}; expected one of {CAPTION_KEYS}")
    v = " ".join(str(value).strip().lower().split())
    for idx, names in enumerate(SYNONYMS[key]):
        if v in names:
            return idx
    return -1


def _check_tables() -> None:
    """Import-time consistency check of the hand-written tables (cheap; catches edit mistakes early)."""
    k_col, k_mat = len(COLORS), len(MATERIALS)
    assert COLOR_RGB.shape == (k_col, 3) and len(SHADE_LIGHTER) == k_col and STYLE_TABLE.shape == (k_col, k_mat)
    assert set(np.unique(STYLE_TABLE)) == set(range(len(STYLES)))
    for key, vocab in VOCAB.items():
        assert tuple(s[0] for s in SYNONYMS[key]) == vocab, key
    n_cat = len(CATEGORIES)
    assert len(SUBCATEGORIES) == len(SILHOUETTES) == len(ROLES) == len(FASHION_MNIST_CLASSES) == n_cat
    assert sorted(c for cls in FASHION_MNIST_CLASSES for c in cls) == list(range(10))
    for t in TEMPLATES:
        assert len(set(t)) == 4 and len({ROLES[c] for c in t}) == 4, t


_check_tables()
