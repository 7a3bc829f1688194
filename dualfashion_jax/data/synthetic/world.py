"""The synthetic world: a catalogue, users with latent tastes, rule-compatible outfits, histories and splits.

Everything is drawn from one seeded `np.random.Generator`, in a fixed order, so a seed fixes the world.
* Catalogue: every (category, colour, material) triple appears `items_per_combo` times, with a random design
  feature and jitter; style = STYLE_TABLE[colour, material].
* Users: a dominant style (global taste, probability mass `taste_strength`) and, per category, a favourite
  colour and material (mass `preference_strength` each; with probability 0.8 the favourite pair has the
  dominant style); the rest of the mass is a Dirichlet(1) spread.
* Outfits (`sample_outfit`): a template of 4 role-distinct categories, an outfit style drawn from the user's
  taste, then items slot by slot with probability proportional to the user's colour x material preference,
  restricted so the outfit always satisfies `rule_compatible`.
* Histories: per user and category 4..10 items drawn (without replacement) from the same preferences; shared
  by all splits (like Polyvore-U). Preference texts are the per-key most frequent value of the history.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic.render import Jitter

SPLITS = ("train", "valid", "test")
MAX_HISTORY = 10
_HARMONY = A.harmony_matrix()
_BOLD = np.isin(np.arange(len(A.MATERIALS)), A.BOLD_MATERIALS)


def rule_violations(categories: Sequence[int], colours: Sequence[int], materials: Sequence[int]) -> list[str]:
    """The compatibility rules an outfit breaks (empty list = compatible). Styles follow from colour x material.

    Rules: (1) 4 items of distinct categories and distinct roles; (2) every pair of colours harmonises
    (same colour, a neutral navy blue/black, or an analogous pair in `attributes.HARMONIOUS_PAIRS`);
    (3) at most one bold material (striped knit, plaid wool, polka dot chiffon); (4) at least 3 of the 4
    items share one style.
    """
    cat, col, mat = (np.asarray(x, dtype=np.int64) for x in (categories, colours, materials))
    if not cat.shape == col.shape == mat.shape == (4,):
        raise ValueError(f"an outfit needs 4 items; got category/colour/material shapes "
                         f"{cat.shape}/{col.shape}/{mat.shape}")
    for name, arr, n in (("category", cat, len(A.CATEGORIES)), ("colour", col, len(A.COLORS)),
                         ("material", mat, len(A.MATERIALS))):
        if arr.min() < 0 or arr.max() >= n:
            raise ValueError(f"outfit {name} indices {arr.tolist()} out of range [0, {n})")
    out = []
    if len(set(cat.tolist())) < 4 or len({A.ROLES[c] for c in cat}) < 4:
        out.append("categories/roles not distinct")
    if not _HARMONY[col[:, None], col[None, :]].all():
        out.append("colour clash")
    if int(_BOLD[mat].sum()) > 1:
        out.append("more than one bold pattern")
    if np.bincount(A.style_of(col, mat), minlength=len(A.STYLES)).max() < 3:
        out.append("inconsistent style")
    return out


def rule_compatible(outfit_attrs: Sequence[Mapping[str, int]]) -> bool:
    """True when the 4 items (dicts with integer "category", "colour", "material") obey every outfit rule."""
    try:
        cats = [int(a["category"]) for a in outfit_attrs]
        cols = [int(a["colour"]) for a in outfit_attrs]
        mats = [int(a["material"]) for a in outfit_attrs]
    except (KeyError, TypeError) as e:
        raise ValueError(f"each outfit item needs integer 'category', 'colour', 'material' fields: {e}") from None
    return not rule_violations(cats, cols, mats)


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Item attributes; arrays are indexed by iid - 1 (iid 0 is the blank and has no entry). [N] int64 each."""

    category: np.ndarray
    colour: np.ndarray
    material: np.ndarray
    feature: np.ndarray
    style: np.ndarray
    jitter: tuple[Jitter, ...]

    def __len__(self) -> int:
        return int(self.category.shape[0])

    def attrs(self, iid: int) -> dict[str, Any]:
        i = int(iid) - 1
        return {"category": int(self.category[i]), "colour": int(self.colour[i]),
                "material": int(self.material[i]), "feature": int(self.feature[i]), "style": int(self.style[i])}


@dataclasses.dataclass(frozen=True)
class Users:
    """Latent tastes. uids [U]; style_taste [U, K_sty]; colour_pref [U, C, K_col]; material_pref [U, C, K_mat]."""

    uids: np.ndarray
    dominant_style: np.ndarray
    style_taste: np.ndarray
    colour_pref: np.ndarray
    material_pref: np.ndarray

    @property
    def fav_colour(self) -> np.ndarray:
        """[U, C] the preferred colour per user and category."""
        return self.colour_pref.argmax(-1)

    @property
    def fav_material(self) -> np.ndarray:
        return self.material_pref.argmax(-1)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's rows: uids/oids [N], outfits/category [N, 4], blank [N] slot, candidates [N, 5]."""

    uids: np.ndarray
    oids: np.ndarray
    outfits: np.ndarray
    category: np.ndarray
    blank: np.ndarray
    candidates: np.ndarray

    @property
    def fitb_outfits(self) -> np.ndarray:
        out = self.outfits.copy()
        out[np.arange(out.shape[0]), self.blank] = 0
        return out


@dataclasses.dataclass(frozen=True)
class World:
    catalogue: Catalogue
    users: Users
    splits: dict[str, Split]
    history: dict[int, dict[int, list[int]]]


def make_catalogue(rng: np.random.Generator, items_per_combo: int) -> Catalogue:
    """Every (category, colour, material) triple `items_per_combo` times, shuffled."""
    if items_per_combo < 1:
        raise ValueError(f"items_per_combo must be >= 1, got {items_per_combo}")
    grid = np.stack(np.meshgrid(np.arange(len(A.CATEGORIES)), np.arange(len(A.COLORS)),
                                np.arange(len(A.MATERIALS)), indexing="ij"), -1).reshape(-1, 3)
    triples = rng.permutation(np.repeat(grid, items_per_combo, axis=0))  # [N, 3]
    n = triples.shape[0]
    feature = rng.integers(0, len(A.FEATURES), n)
    jitter = tuple(Jitter.sample(rng) for _ in range(n))
    cat, col, mat = triples[:, 0], triples[:, 1], triples[:, 2]
    return Catalogue(cat.astype(np.int64), col.astype(np.int64), mat.astype(np.int64), feature.astype(np.int64),
                     A.style_of(col, mat).astype(np.int64), jitter)


def _peaked(rng: np.random.Generator, k: int, fav: int, strength: float) -> np.ndarray:
    """`strength` mass on `fav`, the rest spread by a Dirichlet(1). [k]"""
    p = (1.0 - strength) * rng.dirichlet(np.ones(k))
    p[fav] += strength
    return p


def make_users(rng: np.random.Generator, num_users: int, preference_strength: float,
               taste_strength: float) -> Users:
    """Users with a dominant style and per-category favourite colour/material (see module docstring)."""
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    for name, s in (("preference_strength", preference_strength), ("taste_strength", taste_strength)):
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {s}")
    n_cat, n_col, n_mat, n_sty = len(A.CATEGORIES), len(A.COLORS), len(A.MATERIALS), len(A.STYLES)
    dominant = rng.integers(0, n_sty, num_users)
    taste = np.stack([_peaked(rng, n_sty, d, taste_strength) for d in dominant])
    colour_pref = np.zeros((num_users, n_cat, n_col))
    material_pref = np.zeros((num_users, n_cat, n_mat))
    for u in range(num_users):
        in_style = np.argwhere(A.STYLE_TABLE == dominant[u])  # [P, 2] (colour, material) pairs
        for c in range(n_cat):
            if rng.random() < 0.8:
                fc, fm = in_style[rng.integers(len(in_style))]
            else:
                fc, fm = rng.integers(n_col), rng.integers(n_mat)
            colour_pref[u, c] = _peaked(rng, n_col, fc, preference_strength)
            material_pref[u, c] = _peaked(rng, n_mat, fm, preference_strength)
    return Users(np.arange(num_users, dtype=np.int64), dominant.astype(np.int64), taste, colour_pref, material_pref)


def sample_outfit(rng: np.random.Generator, cat_items: list[np.ndarray], cat: Catalogue, users: Users,
                  u: int, max_tries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """One rule-compatible outfit for user u: (iids [4], categories [4]) in a shuffled slot order."""
    for _ in range(max_tries):
        template = np.asarray(A.TEMPLATES[rng.integers(len(A.TEMPLATES))])[rng.permutation(4)]
        style = rng.choice(len(A.STYLES), p=users.style_taste[u])
        deviant = int(rng.integers(4)) if rng.random() < 0.3 else -1  # one slot may leave the outfit style
        chosen: list[int] = []
        for slot, c in enumerate(template):
            idx = cat_items[c]  # 0-based item indices of category c
            ok = np.ones(idx.shape[0], bool) if slot == deviant else cat.style[idx] == style
            for j in chosen:
                ok &= _HARMONY[cat.colour[idx], cat.colour[j]]
                if _BOLD[cat.material[j]]:
                    ok &= ~_BOLD[cat.material[idx]]
            if not ok.any():
                break
            w = users.colour_pref[u, c, cat.colour[idx]] * users.material_pref[u, c, cat.material[idx]] * ok
            chosen.append(int(idx[rng.choice(idx.shape[0], p=w / w.sum())]))
        else:
            if rule_violations(template, cat.colour[chosen], cat.material[chosen]):
                raise AssertionError("outfit sampler produced an incompatible outfit")  # sampler invariant
            return np.asarray(chosen, np.int64) + 1, template.astype(np.int64)
    raise RuntimeError(f"no rule-compatible outfit found for user {u} in {max_tries} tries")


def sample_history(rng: np.random.Generator, cat_items: list[np.ndarray], cat: Catalogue,
                   users: Users, u: int) -> dict[int, list[int]]:
    """Per category, 4..10 distinct items drawn from the user's colour x material preference."""
    out = {}
    for c, idx in enumerate(cat_items):
        w = users.colour_pref[u, c, cat.colour[idx]] * users.material_pref[u, c, cat.material[idx]]
        k = min(int(rng.integers(4, MAX_HISTORY + 1)), idx.shape[0])
        out[c] = sorted(int(i) + 1 for i in idx[rng.choice(idx.shape[0], k, replace=False, p=w / w.sum())])
    return out


def _candidates(rng: np.random.Generator, gt: np.ndarray, num_items: int) -> np.ndarray:
    """[N, 5]: the ground truth then 4 distinct negatives from the whole catalogue (as DiFashion)."""
    out = np.zeros((gt.shape[0], 5), np.int64)
    for r, g in enumerate(gt):
        neg = rng.choice(num_items - 1, 4, replace=False) + 1  # ids 1..N-1, shift those >= g past g
        out[r] = [g, *(neg + (neg >= g))]
    return out


def make_world(seed: int = 0, num_users: int = 160, items_per_combo: int = 3,
               train_outfits: tuple[int, int] = (6, 10),
               preference_strength: float = 0.7, taste_strength: float = 0.6) -> World:
    """The whole world. Every user has `train_outfits` (inclusive range) train rows, 1 valid and 1 test row."""
    lo, hi = train_outfits
    if not 1 <= lo <= hi:
        raise ValueError(f"train_outfits must be a range 1 <= lo <= hi, got {train_outfits}")
    rng = np.random.default_rng(seed)
    cat = make_catalogue(rng, items_per_combo)
    users = make_users(rng, num_users, preference_strength, taste_strength)
    cat_items = [np.flatnonzero(cat.category == c) for c in range(len(A.CATEGORIES))]
    history = {int(u): sample_history(rng, cat_items, cat, users, u) for u in range(num_users)}
    counts = {"train": rng.integers(lo, hi + 1, num_users), "valid": np.ones(num_users, np.int64),
              "test": np.ones(num_users, np.int64)}
    splits, next_oid = {}, 0
    for name in SPLITS:
        rows_u = np.repeat(users.uids, counts[name])
        drawn = [sample_outfit(rng, cat_items, cat, users, int(u)) for u in rows_u]
        outfits = np.stack([d[0] for d in drawn])  # [N, 4]
        category = np.stack([d[1] for d in drawn])  # [N, 4]
        blank = rng.integers(0, 4, rows_u.shape[0])
        gt = outfits[np.arange(outfits.shape[0]), blank]
        oids = np.arange(next_oid, next_oid + rows_u.shape[0], dtype=np.int64)
        next_oid += rows_u.shape[0]
        splits[name] = Split(rows_u, oids, outfits, category, blank, _candidates(rng, gt, len(cat)))
    return World(cat, users, splits, history)
