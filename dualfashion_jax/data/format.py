"""The project's safe on-disk dataset format (docs/ARCHITECTURE.md): one folder per dataset, npz/json only.

Nothing in a dataset folder is pickled: numeric tables are `.npz` read with `allow_pickle=False`, everything
else is JSON. Both the real-data converter (`data/difashion.py`) and the synthetic generator write through
`data/writer.DatasetWriter`; everything downstream reads through `SafeDataset`, which checks each file's structure
(keys, dtypes, shapes, id ranges) as it loads it and raises `FormatError` naming the file and field.
Cross-file consistency (ids resolve, categories agree, FITB rows align) lives in `data/validate.py`. The
folder layout (meta, items, splits/, text/, latents/) is drawn in docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dualfashion_jax.data.safe_io import FormatError, read_json, read_npz, write_json, write_npz
from dualfashion_jax.text.tokenizer import caption_json

__all__ = ["FORMAT_VERSION", "SPLITS", "CAPTION_KEYS", "FormatError", "OutfitTable", "CandidateTable",
           "SafeDataset", "sentence_text", "preference_text", "read_json", "read_npz", "write_json",
           "write_npz"]

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
OUTFIT_SIZE = 4
NUM_CANDIDATES = 5
CAPTION_KEYS = ("Color", "Material", "Design features", "Clothing Fashion Style")
META_REQUIRED = ("name", "format_version", "num_items", "num_categories", "image_size", "source")


def sentence_text(category_name: str) -> str:
    """The per-category instruction sentence (spec §3)."""
    return f"Recommend a fashion {category_name} item, on white background."


def preference_text(preference: Mapping[str, Any], appearance: Mapping[str, str] | None = None) -> str:
    """The preference text: the 4-key caption JSON, then the appearance attributes (sorted keys) when given.

    No/empty appearance gives exactly `caption_json(preference)`; appearance keys come last so that a text cut at
    max_length loses them before any caption key.
    """
    text = caption_json(preference)
    if not appearance:
        return text
    d = json.loads(text)
    clash = sorted(set(appearance) & set(d))
    if clash:
        raise ValueError(f"appearance: key(s) {clash} collide with the caption keys {list(CAPTION_KEYS)}")
    d.update({str(k): str(appearance[k]) for k in sorted(appearance)})
    return json.dumps(d, ensure_ascii=False)


@dataclass(frozen=True)
class OutfitTable:
    """Rows of (user, outfit) interactions: uids/oids [N], outfits/category [N, 4] (int64)."""

    uids: np.ndarray
    oids: np.ndarray
    outfits: np.ndarray
    category: np.ndarray

    def __len__(self) -> int:
        return int(self.uids.shape[0])

    def take(self, rows: np.ndarray) -> "OutfitTable":
        return OutfitTable(self.uids[rows], self.oids[rows], self.outfits[rows], self.category[rows])


@dataclass(frozen=True)
class CandidateTable:
    """Retrieval candidates per FITB row: uids/oids [N], candidates [N, 5] (index 0 = ground truth)."""

    uids: np.ndarray
    oids: np.ndarray
    candidates: np.ndarray

    def __len__(self) -> int:
        return int(self.uids.shape[0])

    def take(self, rows: np.ndarray) -> "CandidateTable":
        return CandidateTable(self.uids[rows], self.oids[rows], self.candidates[rows])


def as_int(path: Path, field: str, a: Any, ndim: int, width: int | None = None, dtype=np.int64) -> np.ndarray:
    """`a` as an integer array of `ndim` dims (last dim `width`), or FormatError naming the file and field."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise FormatError(f"{path}: field {field!r} must be integer, got dtype {a.dtype}")
    if a.ndim != ndim or (width is not None and a.shape[-1] != width):
        want = "[N]" if ndim == 1 else f"[N, {width}]"
        raise FormatError(f"{path}: field {field!r} must have shape {want}, got {list(a.shape)}")
    return a.astype(dtype)


def check_rows(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """FormatError unless every field of one table has the same number of rows."""
    lengths = {k: int(v.shape[0]) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FormatError(f"{path}: fields have different row counts {lengths}")


def check_split(split: str) -> str:
    """`split` if it is one of SPLITS, else FormatError."""
    if split not in SPLITS:
        raise FormatError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def check_outfit_table(path: Path, uids, oids, outfits, category, *, allow_zero: bool) -> OutfitTable:
    """An OutfitTable of checked int columns (item ids >= 1, or >= 0 with the FITB blank), or FormatError."""
    t = OutfitTable(
        as_int(path, "uids", uids, 1), as_int(path, "oids", oids, 1),
        as_int(path, "outfits", outfits, 2, OUTFIT_SIZE), as_int(path, "category", category, 2, OUTFIT_SIZE))
    check_rows(path, {"uids": t.uids, "oids": t.oids, "outfits": t.outfits, "category": t.category})
    low = 0 if allow_zero else 1
    if t.outfits.size and t.outfits.min() < low:
        r = int(np.argwhere(t.outfits < low)[0, 0])
        raise FormatError(f"{path}: field 'outfits' row {r} has item id < {low}: {t.outfits[r].tolist()}")
    if t.category.size and t.category.min() < 0:
        r = int(np.argwhere(t.category < 0)[0, 0])
        raise FormatError(f"{path}: field 'category' row {r} has a negative category: {t.category[r].tolist()}")
    return t


def _int_keyed(path: Path, d: Any, what: str) -> dict[int, Any]:
    if not isinstance(d, dict):
        raise FormatError(f"{path}: expected a JSON object of {what}, got {type(d).__name__}")
    try:
        return {int(k): v for k, v in d.items()}
    except ValueError:
        bad = next(k for k in d if not str(k).lstrip("-").isdigit())
        raise FormatError(f"{path}: key {bad!r} is not an integer id ({what})") from None


def check_appearance(path: Path, d: Any) -> dict:
    """{uid: {str: str}} or FormatError naming the file and user."""
    if not isinstance(d, dict):
        raise FormatError(f"{path}: expected {{'<uid>': {{'body_shape': str, ...}}}}")
    for u, a in d.items():
        if not isinstance(a, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in a.items()):
            raise FormatError(f"{path}: user {u}: appearance must map attribute names to strings, got {a!r:.80}")
    return d


# ------------------------------------------------------------------------------------------------------ reader
class SafeDataset:
    """Reads a safe-format folder lazily; each accessor validates the structure of the file it loads.

    Loaded tables and dicts are cached and shared: treat them as read-only (copy before modifying).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FormatError(f"{self.root}: dataset folder not found")
        self._cache: dict[str, Any] = {}
        self.meta = self._read_meta()

    # -- core files
    def _read_meta(self) -> dict:
        p = self.root / "meta.json"
        meta = read_json(p)
        if not isinstance(meta, dict):
            raise FormatError(f"{p}: expected a JSON object")
        missing = [k for k in META_REQUIRED if k not in meta]
        if missing:
            raise FormatError(f"{p}: missing key(s) {missing}")
        if meta["format_version"] != FORMAT_VERSION:
            raise FormatError(f"{p}: format_version {meta['format_version']!r}, this code reads {FORMAT_VERSION}")
        for k in ("num_items", "num_categories"):
            if not isinstance(meta[k], int) or meta[k] < 0:
                raise FormatError(f"{p}: {k!r} must be a non-negative int, got {meta[k]!r}")
        return meta

    def _cached(self, key: str, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    @property
    def image_size(self) -> int | None:
        return self.meta["image_size"]

    @property
    def categories(self) -> dict[int, str]:
        def load():
            p = self.root / "categories.json"
            cats = _int_keyed(p, read_json(p), "category id -> name")
            bad = [k for k, v in cats.items() if not isinstance(v, str) or not v]
            if bad:
                raise FormatError(f"{p}: category {bad[0]} must map to a non-empty string")
            return cats
        return self._cached("categories", load)

    @property
    def iid_category(self) -> np.ndarray:
        def load():
            p = self.root / "items.npz"
            a = as_int(p, "iid_category", read_npz(p, ["iid_category"])["iid_category"], 1, dtype=np.int32)
            if a.shape[0] != self.num_items + 1:
                raise FormatError(f"{p}: iid_category has {a.shape[0]} entries, meta.json num_items+1 = "
                                  f"{self.num_items + 1}")
            if a[0] != -1:
                raise FormatError(f"{p}: iid_category[0] (the blank item) must be -1, got {a[0]}")
            return a
        return self._cached("iid_category", load)

    @property
    def has_image_paths(self) -> bool:
        return (self.root / "image_paths.json").is_file()

    @property
    def image_paths(self) -> list[str]:
        def load():
            p = self.root / "image_paths.json"
            paths = read_json(p)
            if not isinstance(paths, list) or not all(isinstance(s, str) for s in paths):
                raise FormatError(f"{p}: expected a JSON list of strings")
            if len(paths) != self.num_items + 1:
                raise FormatError(f"{p}: {len(paths)} entries, expected num_items+1 = {self.num_items + 1}")
            return paths
        return self._cached("image_paths", load)

    def image_file(self, iid: int) -> Path | None:
        """Absolute path of item `iid`'s image, or None for the blank / an item without an image path."""
        rel = self.image_paths[int(iid)] if 0 < int(iid) <= self.num_items else ""
        return self.root / "images" / rel if rel else None

    # -- splits
    def available_splits(self) -> list[str]:
        return [s for s in SPLITS if (self.root / "splits" / f"{s}.npz").is_file()]

    def split(self, split: str) -> OutfitTable:
        p = self.root / "splits" / f"{check_split(split)}.npz"
        return self._cached(f"split/{split}", lambda: check_outfit_table(
            p, **read_npz(p, ["uids", "oids", "outfits", "category"]), allow_zero=False))

    def has_fitb(self, split: str) -> bool:
        return (self.root / "splits" / f"fitb_{split}.npz").is_file()

    def fitb(self, split: str) -> OutfitTable:
        p = self.root / "splits" / f"fitb_{check_split(split)}.npz"
        return self._cached(f"fitb/{split}", lambda: check_outfit_table(
            p, **read_npz(p, ["uids", "oids", "outfits", "category"]), allow_zero=True))

    def candidates(self, split: str) -> CandidateTable:
        p = self.root / "splits" / f"fitb_{check_split(split)}_candidates.npz"

        def load():
            d = read_npz(p, ["uids", "oids", "candidates"])
            c = CandidateTable(as_int(p, "uids", d["uids"], 1), as_int(p, "oids", d["oids"], 1),
                               as_int(p, "candidates", d["candidates"], 2, NUM_CANDIDATES))
            check_rows(p, {"uids": c.uids, "oids": c.oids, "candidates": c.candidates})
            return c
        return self._cached(f"candidates/{split}", load)

    def history(self, split: str) -> dict[int, dict[int, list[int]]]:
        p = self.root / "splits" / f"{check_split(split)}_history.json"

        def load():
            out = {}
            for u, per in _int_keyed(p, read_json(p), "user id -> history").items():
                per = _int_keyed(p, per, f"category id -> items (user {u})")
                for c, items in per.items():
                    if not isinstance(items, list) or not all(isinstance(i, int) and i > 0 for i in items):
                        raise FormatError(f"{p}: user {u} category {c}: expected a list of positive item ids")
                out[u] = per
            return out
        return self._cached(f"history/{split}", load)

    # -- text (all optional)
    def has_text(self, name: str) -> bool:
        return (self.root / "text" / name).is_file()

    @property
    def item_info(self) -> dict[int, dict]:
        p = self.root / "text" / "item_info.json"

        def load():
            info = _int_keyed(p, read_json(p), "item id -> info")
            for iid, v in info.items():
                if not isinstance(v, dict) or not isinstance(v.get("elements"), dict):
                    raise FormatError(f"{p}: item {iid}: expected {{'elements': {{...}}}}, got {str(v)[:80]!r}")
            return info
        return self._cached("item_info", load)

    def preference(self, split: str) -> dict[int, dict[int, dict]]:
        p = self.root / "text" / f"{check_split(split)}_preference.json"

        def load():
            return {u: _int_keyed(p, per, f"category id -> preference (user {u})")
                    for u, per in _int_keyed(p, read_json(p), "user id -> preferences").items()}
        return self._cached(f"preference/{split}", load)

    @property
    def stage1(self) -> list[dict]:
        p = self.root / "text" / "stage1.json"

        def load():
            recs = read_json(p)
            if not isinstance(recs, list):
                raise FormatError(f"{p}: expected a JSON list of records")
            for n, r in enumerate(recs):
                if not isinstance(r, dict) or not {"iid", "caption", "re_caption"} <= set(r):
                    raise FormatError(f"{p}: record {n} must be an object with iid, caption, re_caption")
                if not isinstance(r["iid"], int) or not 0 < r["iid"] <= self.num_items:
                    raise FormatError(f"{p}: record {n}: iid {r['iid']!r} is not in 1..{self.num_items}")
            return recs
        return self._cached("stage1", load)

    @property
    def augmented(self) -> dict[int, list[str]]:
        p = self.root / "text" / "augmented.json"

        def load():
            aug = _int_keyed(p, read_json(p), "item id -> augmented captions")
            for iid, v in aug.items():
                if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
                    raise FormatError(f"{p}: item {iid}: expected a non-empty list of caption strings")
            return aug
        return self._cached("augmented", load)

    @property
    def appearance(self) -> dict[int, dict[str, str]]:
        """Per-user appearance from the optional text/appearance.json; {} when the dataset has none."""
        p = self.root / "text" / "appearance.json"
        return self._cached("appearance", lambda: _int_keyed(p, check_appearance(p, read_json(p)), "user id -> "
                                                             "appearance") if p.is_file() else {})

    @property
    def latents_dir(self) -> Path:
        return self.root / "latents"
