"""User-item interactions for ranking (DVBPR): each user's positive items per split, and the BPR triple source.

Positives of a user in a split = the items of their outfits in `splits/<split>.npz` plus their per-category
history `splits/<split>_history.json` (when present); the blank item 0 never counts. Negatives are drawn uniformly
from the catalogue minus the user's positives (DVBPR's sampling). A triple is a pure function of (seed, index), so
the source is random-access for `data/pipeline.BatchIterator` and resuming is exact; `rounds` > 1 pairs every
positive with that many different negatives per epoch. `same_category` in [0, 1] is the probability that a
triple's negative is drawn from the positive's own category instead (catalogue metadata, no preference labels):
uniform negatives are mostly told apart by category, same-category ones only by the user's taste within it.
"""
from __future__ import annotations

import numpy as np

from dualfashion_jax.data import keys as K
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import item_visuals, to_model_range

POS, NEG = "pos", "neg"  # visual roles of a BPR triple (keys via keys.visual(kind, role))
MAX_TRIES = 64           # rejection-sampling tries for a negative outside the user's positives


def num_users(ds: SafeDataset) -> int:
    """1 + the largest uid over the dataset's splits (at least meta.json's num_users when it is set)."""
    top = [int(ds.split(s).uids.max()) for s in ds.available_splits() if len(ds.split(s))]
    if not top:
        raise ValueError(f"{ds.root}: no split has interactions; cannot count users")
    return max(max(top) + 1, int(ds.meta.get("num_users") or 0))


def user_positives(ds: SafeDataset, split: str) -> dict[int, np.ndarray]:
    """uid -> sorted unique positive item ids (> 0) of `split` (outfits + history)."""
    t = ds.split(split)
    out: dict[int, set[int]] = {}
    for u, row in zip(t.uids.tolist(), t.outfits.tolist()):
        out.setdefault(int(u), set()).update(i for i in row if i > 0)
    if (ds.root / "splits" / f"{split}_history.json").is_file():
        for u, per_cat in ds.history(split).items():
            for iids in per_cat.values():
                out.setdefault(int(u), set()).update(int(i) for i in iids if int(i) > 0)
    return {u: np.asarray(sorted(s), np.int64) for u, s in out.items() if s}


def held_out(train: dict[int, np.ndarray], test: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Each user's test positives that are not train positives (DVBPR's held-out interactions)."""
    out = {}
    for u, items in test.items():
        new = np.setdiff1d(items, train.get(u, np.zeros(0, np.int64)))
        if new.size:
            out[u] = new
    return out


def sample_negative(rng: np.random.Generator, num_items: int, positives: np.ndarray) -> int:
    """A uniform item id in 1..num_items not in `positives` (sorted); raises if the user owns the catalogue."""
    if positives.size >= num_items:
        raise ValueError(f"a user has all {num_items} catalogue items as positives; no negative exists")
    for _ in range(MAX_TRIES):
        j = int(rng.integers(1, num_items + 1))
        k = np.searchsorted(positives, j)
        if k >= positives.size or positives[k] != j:
            return j
    free = np.setdiff1d(np.arange(1, num_items + 1), positives)  # dense user: sample the complement exactly
    return int(free[rng.integers(free.size)])


class TripleSource:
    """Random-access BPR triples {uid, pos_<kind>s, neg_<kind>s, ids (pos item)} over a split's positives."""

    def __init__(self, ds: SafeDataset, split: str = "train", *, use_latents: str | bool = "auto", seed: int = 0,
                 rounds: int = 1, cache_items: int = 0, same_category: float = 0.0):
        if rounds < 1:
            raise ValueError(f"config.data.rounds must be >= 1, got {rounds}")
        if not 0.0 <= float(same_category) <= 1.0:
            raise ValueError(f"config.data.same_category must be in [0, 1], got {same_category}")
        self.ds, self.seed, self.rounds, self.same_category = ds, int(seed), int(rounds), float(same_category)
        self.item_category = cats = np.asarray(ds.iid_category, np.int64)  # [num_items + 1], id 0 = the blank
        ids = np.arange(1, cats.size)
        self.by_category = {int(c): ids[cats[1:] == c] for c in np.unique(cats[1:])}  # sorted ids per category
        self.positives = user_positives(ds, split)
        if not self.positives:
            raise ValueError(f"{ds.root}: split {split!r} has no user-item interactions")
        self.pairs = np.asarray([(u, i) for u, items in sorted(self.positives.items()) for i in items.tolist()],
                                np.int64)  # [P, 2]
        self.load, self.kind = item_visuals(ds, use_latents, cache_items=cache_items)

    def __len__(self) -> int:
        return len(self.pairs) * self.rounds

    def triple(self, index: int) -> tuple[int, int, int]:
        """(uid, positive iid, negative iid) of example `index`."""
        u, i = (int(v) for v in self.pairs[index % len(self.pairs)])
        rng = np.random.default_rng([self.seed, int(index)])
        if self.same_category > 0 and rng.random() < self.same_category:
            pool = self.by_category[int(self.item_category[i])]  # sorted item ids of the positive's category
            free = np.setdiff1d(pool, self.positives[u], assume_unique=True)
            if free.size:  # else: the user owns the whole category, fall back to a uniform negative
                return u, i, int(free[rng.integers(free.size)])
        return u, i, sample_negative(rng, self.ds.num_items, self.positives[u])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        u, i, j = self.triple(int(index))
        return {K.UID: np.int32(u), K.visual(self.kind, POS): self.load(i), K.visual(self.kind, NEG): self.load(j),
                K.IDS: np.int64(i)}


def model_input(visual: np.ndarray, kind: str):
    """A batch's visuals as the DVBPR encoder reads them: images uint8 -> [-1, 1] floats, latents unchanged."""
    return to_model_range(visual) if kind == K.IMAGE else visual
