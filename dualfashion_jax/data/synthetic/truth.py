"""The synthetic dataset's oracle ground truth (`<root>/truth/`): item attributes, user tastes, rules, priors.

Written by `make.py`, read by `data/oracle.py` and the evaluators. JSON only:
  truth/items.json   {"<iid>": {"category", "colour", "material", "feature", "style", "jitter", "fm_index"}}
  truth/users.json   {"<uid>": {"dominant_style", "style_taste" [K_sty], "colour_pref" [C][K_col],
                                "material_pref" [C][K_mat], "fav_colour" [C], "fav_material" [C]}}
  truth/rules.json   the vocabularies, palette, harmony matrix, style table, bold materials, roles, templates
  truth/priors.json  colour/material frequency per category over the train outfits' items ("chance" baseline)
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from dualfashion_jax.data.format import FormatError, read_json, write_json
from dualfashion_jax.data.synthetic import attributes as A

ATTR_FIELDS = ("category", "colour", "material", "feature", "style")


@dataclasses.dataclass(frozen=True)
class Truth:
    """Arrays indexed by iid (index 0 = blank, -1) and by uid; see the module docstring."""

    item: dict[str, np.ndarray]  # field -> [num_items + 1] int64
    uids: np.ndarray  # [U]
    fav_colour: np.ndarray  # [U, C]
    fav_material: np.ndarray  # [U, C]
    colour_pref: np.ndarray  # [U, C, K_col]
    colour_prior: np.ndarray  # [C, K_col]
    material_prior: np.ndarray  # [C, K_mat]

    def user_rows(self, uids: np.ndarray) -> np.ndarray:
        """Row index into the user arrays for each uid; raises naming unknown uids."""
        lookup = {int(u): r for r, u in enumerate(self.uids)}
        missing = sorted({int(u) for u in np.asarray(uids).reshape(-1)} - set(lookup))
        if missing:
            raise ValueError(f"uids {missing[:5]} not in truth/users.json")
        return np.asarray([lookup[int(u)] for u in np.asarray(uids).reshape(-1)], np.int64)


def rules_json() -> dict:
    """The world's fixed rules and vocabularies, as written to truth/rules.json."""
    return {"categories": list(A.CATEGORIES), "roles": list(A.ROLES), "colors": list(A.COLORS),
            "color_rgb": A.COLOR_RGB.astype(int).tolist(), "materials": list(A.MATERIALS),
            "bold_materials": list(A.BOLD_MATERIALS), "features": list(A.FEATURES), "styles": list(A.STYLES),
            "style_table": A.STYLE_TABLE.tolist(), "harmony": A.harmony_matrix().astype(int).tolist(),
            "templates": [list(t) for t in A.TEMPLATES],
            "fashion_mnist_classes": [list(c) for c in A.FASHION_MNIST_CLASSES],
            "rule": "4 role-distinct categories; all colour pairs harmonise; <= 1 bold material; "
                    ">= 3 items share one style (style = style_table[colour][material])"}


def priors_from(item_category: np.ndarray, item_colour: np.ndarray, item_material: np.ndarray,
                outfits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour [C, K_col] and material [C, K_mat] frequencies per category over the items of `outfits`."""
    iids = np.asarray(outfits).reshape(-1)
    iids = iids[iids > 0]
    n_cat = len(A.CATEGORIES)
    col = np.zeros((n_cat, len(A.COLORS)))
    mat = np.zeros((n_cat, len(A.MATERIALS)))
    np.add.at(col, (item_category[iids], item_colour[iids]), 1.0)
    np.add.at(mat, (item_category[iids], item_material[iids]), 1.0)
    return (col / np.maximum(col.sum(1, keepdims=True), 1.0), mat / np.maximum(mat.sum(1, keepdims=True), 1.0))


def write_truth(root: str | os.PathLike, items: dict, users: dict, priors: dict) -> None:
    """Write truth/{items,users,rules,priors}.json under `root`."""
    base = Path(root) / "truth"
    write_json(base / "items.json", items)
    write_json(base / "users.json", users)
    write_json(base / "rules.json", rules_json())
    write_json(base / "priors.json", priors)


def load_truth(root: str | os.PathLike) -> Truth:
    """Read a synthetic dataset's truth/ folder; a missing or malformed file raises FormatError naming it."""
    base = Path(root) / "truth"
    if not base.is_dir():
        raise FormatError(f"{base}: no truth/ folder (oracle metrics need a synthetic dataset from make_dataset)")
    items_p, users_p, priors_p = base / "items.json", base / "users.json", base / "priors.json"
    items = read_json(items_p)
    try:
        n = max(int(k) for k in items)
        item = {f: np.full(n + 1, -1, np.int64) for f in ATTR_FIELDS}
        for k, v in items.items():
            for f in ATTR_FIELDS:
                item[f][int(k)] = int(v[f])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"{items_p}: expected {{'<iid>': {{{', '.join(ATTR_FIELDS)}: int}}}}: {e!r}") from None
    users = read_json(users_p)
    try:
        uids = np.asarray(sorted(int(u) for u in users), np.int64)
        fav_c = np.asarray([users[str(u)]["fav_colour"] for u in uids], np.int64)
        fav_m = np.asarray([users[str(u)]["fav_material"] for u in uids], np.int64)
        pref = np.asarray([users[str(u)]["colour_pref"] for u in uids], np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{users_p}: expected {{'<uid>': {{fav_colour, fav_material, colour_pref}}}}: "
                          f"{e!r}") from None
    n_cat = len(A.CATEGORIES)
    if fav_c.shape != (uids.size, n_cat) or pref.shape != (uids.size, n_cat, len(A.COLORS)):
        raise FormatError(f"{users_p}: fav_colour/colour_pref shapes {fav_c.shape}/{pref.shape}, expected "
                          f"[U, {n_cat}] / [U, {n_cat}, {len(A.COLORS)}]")
    priors = read_json(priors_p)
    try:
        col_p = np.asarray(priors["colour"], np.float64)
        mat_p = np.asarray(priors["material"], np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{priors_p}: expected {{'colour': [C][K_col], 'material': [C][K_mat]}}: {e!r}") from None
    if col_p.shape != (n_cat, len(A.COLORS)) or mat_p.shape != (n_cat, len(A.MATERIALS)):
        raise FormatError(f"{priors_p}: colour/material shapes {col_p.shape}/{mat_p.shape} do not match the vocabulary")
    return Truth(item, uids, fav_c, fav_m, pref, col_p, mat_p)
