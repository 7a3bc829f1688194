"""Writes one dataset folder in the safe format (data/format.py): the real-data converter, the synthetic generator
and the tests all write through `DatasetWriter`, whose every method checks its input before the atomic write."""
from __future__ import annotations

import os
from operator import index
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dualfashion_jax.data.format import (FORMAT_VERSION, NUM_CANDIDATES, CandidateTable, FormatError, as_int,
                                         check_appearance, check_outfit_table, check_rows, check_split)
from dualfashion_jax.data.safe_io import write_json, write_npz


class DatasetWriter:
    """Writes one dataset folder in the safe format; every method validates its input before writing."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def write_meta(self, *, name: str, num_items: int, num_categories: int, image_size: int | None,
                   source: str, **extra: Any) -> None:
        meta = {"name": str(name), "format_version": FORMAT_VERSION, "num_items": int(num_items),
                "num_categories": int(num_categories), "image_size": None if image_size is None else int(image_size),
                "source": str(source), **extra}
        write_json(self.root / "meta.json", meta)

    def write_categories(self, categories: Mapping[int, str]) -> None:
        out = {}
        for k, v in categories.items():
            if not isinstance(v, str) or not v:
                raise FormatError(f"categories: category {k!r} must map to a non-empty name, got {v!r}")
            out[str(int(k))] = v
        write_json(self.root / "categories.json", out)

    def write_items(self, iid_category: np.ndarray) -> None:
        """iid_category [num_items+1]: category of each item id; index 0 (the blank) must be -1."""
        a = as_int(self.root / "items.npz", "iid_category", iid_category, 1, dtype=np.int32)
        if a.size == 0 or a[0] != -1:
            raise FormatError(f"{self.root / 'items.npz'}: iid_category[0] (the blank item) must be -1")
        write_npz(self.root / "items.npz", iid_category=a)

    def write_image_paths(self, paths: Sequence[str]) -> None:
        """paths[iid] relative to images/ ("" for iid 0 and for items without an image)."""
        paths = [str(p) for p in paths]
        if paths and paths[0] != "":
            raise FormatError("image_paths.json: entry 0 (the blank item) must be ''")
        write_json(self.root / "image_paths.json", paths)

    def write_split(self, split: str, uids, oids, outfits, category) -> None:
        p = self.root / "splits" / f"{check_split(split)}.npz"
        t = check_outfit_table(p, uids, oids, outfits, category, allow_zero=False)
        write_npz(p, uids=t.uids, oids=t.oids, outfits=t.outfits, category=t.category)

    def write_fitb(self, split: str, uids, oids, outfits, category) -> None:
        p = self.root / "splits" / f"fitb_{check_split(split)}.npz"
        t = check_outfit_table(p, uids, oids, outfits, category, allow_zero=True)
        write_npz(p, uids=t.uids, oids=t.oids, outfits=t.outfits, category=t.category)

    def write_candidates(self, split: str, uids, oids, candidates) -> None:
        p = self.root / "splits" / f"fitb_{check_split(split)}_candidates.npz"
        c = CandidateTable(as_int(p, "uids", uids, 1), as_int(p, "oids", oids, 1),
                           as_int(p, "candidates", candidates, 2, NUM_CANDIDATES))
        check_rows(p, {"uids": c.uids, "oids": c.oids, "candidates": c.candidates})
        write_npz(p, uids=c.uids, oids=c.oids, candidates=c.candidates)

    def write_history(self, split: str, history: Mapping[int, Mapping[int, Sequence[int]]]) -> None:
        """history {uid: {cid: [iid, ...]}} (DiFashion caps each list at 10)."""
        p = self.root / "splits" / f"{check_split(split)}_history.json"
        try:  # operator.index: numpy/python ints only (a float id would be silently truncated by int())
            out = {str(index(u)): {str(index(c)): [index(i) for i in items] for c, items in per.items()}
                   for u, per in history.items()}
        except TypeError as e:
            raise FormatError(f"{p}: ids must be integers: {e}") from None
        bad = [(u, c) for u, per in out.items() for c, items in per.items() if any(i < 1 for i in items)]
        if bad:
            raise FormatError(f"{p}: user {bad[0][0]} category {bad[0][1]}: item ids must be >= 1")
        write_json(p, out)

    def write_item_info(self, item_info: Mapping[int, Mapping[str, Any]]) -> None:
        """item_info {iid: {"elements": {4 caption keys: value}}}."""
        write_json(self.root / "text" / "item_info.json", {str(int(k)): v for k, v in item_info.items()})

    def write_preference(self, split: str, prefs: Mapping[int, Mapping[int, Mapping[str, Any]]]) -> None:
        """prefs {uid: {cid: {"Frequency": {4 caption keys: value}}}}."""
        out = {str(int(u)): {str(int(c)): v for c, v in per.items()} for u, per in prefs.items()}
        write_json(self.root / "text" / f"{check_split(split)}_preference.json", out)

    def write_stage1(self, records: Sequence[Mapping[str, Any]]) -> None:
        """records [{"iid", "caption", "re_caption"}] (stage-1 image/caption pairs)."""
        out = []
        for n, r in enumerate(records):
            if not {"iid", "caption", "re_caption"} <= set(r):
                raise FormatError(f"text/stage1.json: record {n} needs keys iid, caption, re_caption; got {sorted(r)}")
            out.append({**r, "iid": int(r["iid"])})
        write_json(self.root / "text" / "stage1.json", out)

    def write_augmented(self, augmented: Mapping[int, Sequence[str]]) -> None:
        """augmented {iid: [caption json str, ...]} (stage 3)."""
        write_json(self.root / "text" / "augmented.json",
                   {str(int(k)): [str(s) for s in v] for k, v in augmented.items()})

    def write_appearance(self, appearance: Mapping[int, Mapping[str, str]]) -> None:
        """OPTIONAL appearance {uid: {"body_shape", "height", "skin_tone", ...: str}} (absent in real data)."""
        write_json(self.root / "text" / "appearance.json", check_appearance(
            self.root / "text" / "appearance.json", {str(int(u)): dict(a) for u, a in appearance.items()}))
