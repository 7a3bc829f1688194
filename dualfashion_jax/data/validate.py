"""Cross-file consistency checks for outfit datasets: ids resolve, categories agree, FITB rows align with GT,
(uid, oid) rows are unique where generation keys by them, and every text/latent file training reads parses.

The checks work on arrays plus a `where` label, so the real-data converter can run them on the freshly
unpickled DiFashion tables (naming the source .npy) and `validate_dataset` can run them on a safe-format
folder (naming the safe file). Every failure raises `ValidationError` with the file, the row and its
(uid, oid), and what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import json

import numpy as np

from dualfashion_jax.data.format import OUTFIT_SIZE, CandidateTable, OutfitTable, SafeDataset
from dualfashion_jax.text.tokenizer import CaptionError, check_caption


class ValidationError(ValueError):
    """Dataset content is inconsistent; the message names the file, the offending key/row and the expectation."""


def _row(t, r: int) -> str:
    return f"row {r} (uid {int(t.uids[r])}, oid {int(t.oids[r])})"


def check_outfits(t: OutfitTable, iid_category: np.ndarray, categories: dict[int, str], *, where: str,
                  fitb: bool = False) -> None:
    """Ids in 1..num_items (0 allowed as the FITB blank), categories known and agreeing with the item map,
    4 distinct categories per outfit, and (FITB) exactly one blank per row."""
    num_items = iid_category.shape[0] - 1
    known = np.zeros(max(max(categories, default=0), int(t.category.max(initial=0))) + 1, bool)
    known[list(categories)] = True
    bad = ~known[t.category]
    if bad.any():
        r = int(np.argwhere(bad)[0, 0])
        raise ValidationError(f"{where}: {_row(t, r)} has unknown category id(s) {t.category[r].tolist()}; "
                              f"known ids are {min(categories)}..{max(categories)}")
    over = t.outfits > num_items
    if over.any():
        r = int(np.argwhere(over)[0, 0])
        raise ValidationError(f"{where}: {_row(t, r)} item id(s) {t.outfits[r].tolist()} exceed num_items {num_items}")
    blank = t.outfits == 0
    if fitb:
        n_blank = blank.sum(1)
        if (n_blank != 1).any():
            r = int(np.argwhere(n_blank != 1)[0, 0])
            raise ValidationError(f"{where}: {_row(t, r)} outfit {t.outfits[r].tolist()} must have exactly one 0 "
                                  f"(the blank), has {int(n_blank[r])}")
    elif blank.any():
        r = int(np.argwhere(blank)[0, 0])
        raise ValidationError(f"{where}: {_row(t, r)} outfit {t.outfits[r].tolist()} contains item id 0 (blank) "
                              "in a ground-truth table")
    item_cat = iid_category[t.outfits]  # [N, 4]
    wrong = (item_cat != t.category) & ~blank
    if wrong.any():
        r, s = (int(x) for x in np.argwhere(wrong)[0])
        iid = int(t.outfits[r, s])
        raise ValidationError(f"{where}: {_row(t, r)} slot {s}: item {iid} has category {int(item_cat[r, s])} in the "
                              f"category map, but the table says {int(t.category[r, s])}")
    srt = np.sort(t.category, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(1)
    if dup.any():
        r = int(np.argwhere(dup)[0, 0])
        raise ValidationError(f"{where}: {_row(t, r)} categories {t.category[r].tolist()} are not "
                              f"{OUTFIT_SIZE} distinct categories")


def check_fitb_alignment(gt: OutfitTable, fitb: OutfitTable, *, where: str) -> None:
    """FITB rows must be the GT rows in the same order: same uid/oid/category, GT items at the non-blank slots."""
    if len(gt) != len(fitb):
        raise ValidationError(f"{where}: {len(fitb)} FITB rows but {len(gt)} ground-truth rows (must align 1:1)")
    for name in ("uids", "oids"):
        diff = getattr(gt, name) != getattr(fitb, name)
        if diff.any():
            r = int(np.argwhere(diff)[0, 0])
            raise ValidationError(f"{where}: row {r} {name[:-1]} {int(getattr(fitb, name)[r])} differs from the "
                                  f"ground truth's {int(getattr(gt, name)[r])}")
    diff = (gt.category != fitb.category).any(1)
    if diff.any():
        r = int(np.argwhere(diff)[0, 0])
        raise ValidationError(f"{where}: {_row(fitb, r)} categories {fitb.category[r].tolist()} differ from the "
                              f"ground truth's {gt.category[r].tolist()}")
    diff = ((fitb.outfits != gt.outfits) & (fitb.outfits != 0)).any(1)
    if diff.any():
        r = int(np.argwhere(diff)[0, 0])
        raise ValidationError(f"{where}: {_row(fitb, r)} visible items {fitb.outfits[r].tolist()} differ from the "
                              f"ground truth {gt.outfits[r].tolist()}")


def check_candidates(gt: OutfitTable, fitb: OutfitTable, cand: CandidateTable, num_items: int, *,
                     where: str) -> None:
    """Candidates align with FITB rows, hold 5 valid ids, and index 0 is the ground-truth blank item."""
    if len(cand) != len(fitb) or (cand.uids != fitb.uids).any() or (cand.oids != fitb.oids).any():
        raise ValidationError(f"{where}: candidate rows do not align with the FITB rows (same uid/oid order expected)")
    if ((cand.candidates < 1) | (cand.candidates > num_items)).any():
        r = int(np.argwhere(((cand.candidates < 1) | (cand.candidates > num_items)).any(1))[0, 0])
        raise ValidationError(f"{where}: {_row(cand, r)} candidates {cand.candidates[r].tolist()} must be item ids "
                              f"in 1..{num_items}")
    truth = gt.outfits[np.arange(len(gt)), np.argmax(fitb.outfits == 0, axis=1)]  # [N] the blank's GT item
    wrong = cand.candidates[:, 0] != truth
    if wrong.any():
        r = int(np.argwhere(wrong)[0, 0])
        raise ValidationError(f"{where}: {_row(cand, r)} candidates[0] = {int(cand.candidates[r, 0])} but the "
                              f"ground-truth blank item is {int(truth[r])}")


def check_history(history: dict[int, dict[int, list[int]]], iid_category: np.ndarray, *, where: str) -> None:
    """Every history item exists and belongs to the category it is listed under."""
    num_items = iid_category.shape[0] - 1
    for u, per in history.items():
        for c, items in per.items():
            for i in items:
                if not 0 < i <= num_items:
                    raise ValidationError(f"{where}: user {u} category {c}: item {i} not in 1..{num_items}")
                if iid_category[i] != c:
                    raise ValidationError(f"{where}: user {u} category {c}: item {i} has category "
                                          f"{int(iid_category[i])} in the category map")


def check_history_users(t: OutfitTable, history: dict, *, where: str) -> None:
    """Every row's user has a history (the model conditions on it; true for all shipped DiFashion splits)."""
    missing = ~np.isin(t.uids, np.fromiter(history.keys(), np.int64, len(history)))
    if missing.any():
        r = int(np.argwhere(missing)[0, 0])
        raise ValidationError(f"{where}: {_row(t, r)}: user {int(t.uids[r])} has no history "
                              f"({int(missing.sum())} rows affected)")


def repeated_rows(t) -> list[tuple[int, int]]:
    """(row, earlier row) for every row whose (uid, oid) already appeared in the table."""
    seen: dict[tuple[int, int], int] = {}
    out = []
    for r, key in enumerate(zip(t.uids.tolist(), t.oids.tolist())):
        if key in seen:
            out.append((r, seen[key]))
        else:
            seen[key] = r
    return out


def check_unique_rows(t, *, where: str) -> None:
    """Each (uid, oid) appears once: generate names its outputs by it and evaluate matches records by it."""
    rep = repeated_rows(t)
    if rep:
        r, first = rep[0]
        raise ValidationError(f"{where}: {_row(t, r)} repeats the (uid, oid) of row {first} ({len(rep)} repeated "
                              "row(s)); each (uid, oid) must appear once in a split that is generated/evaluated")


def check_preference(prefs: dict, categories: dict[int, str], *, where: str) -> None:
    """{uid: {cid: {"Frequency": {attribute: text}}}} with known category ids (what the preference text reads)."""
    for u, per in prefs.items():
        for c, entry in per.items():
            if c not in categories:
                raise ValidationError(f"{where}: user {u}: category {c} is not in categories.json")
            freq = entry.get("Frequency", entry.get("frequency")) if isinstance(entry, dict) else None
            if not isinstance(freq, dict) or not all(isinstance(v, str) for v in freq.values()):
                raise ValidationError(f"{where}: user {u} category {c}: expected {{\"Frequency\": {{attribute: "
                                      f"text}}}}, got {json.dumps(entry)[:80]}")


def _check_captions(caps, where: str, what: str) -> None:
    for n, c in enumerate(caps):
        try:
            check_caption(c, require_keys=False)
        except CaptionError as e:
            raise ValidationError(f"{where}: {what} caption {n}: {e}") from None


def check_texts(ds: SafeDataset, rep: "ValidationReport") -> None:
    """Every text file present: preferences per split, item captions, stage-1 records, stage-3 captions."""
    text = ds.root / "text"
    for s in ds.available_splits():
        if ds.has_text(f"{s}_preference.json"):
            check_preference(ds.preference(s), ds.categories, where=str(text / f"{s}_preference.json"))
            rep.checked.append(f"text/{s}_preference")
    if ds.has_text("item_info.json"):
        where = str(text / "item_info.json")
        for iid, v in ds.item_info.items():
            if not 0 < iid <= ds.num_items:
                raise ValidationError(f"{where}: item {iid} is not in 1..{ds.num_items}")
            if not all(isinstance(x, str) for x in v["elements"].values()):
                raise ValidationError(f"{where}: item {iid}: 'elements' values must be strings")
        rep.checked.append("text/item_info")
    if ds.has_text("stage1.json"):
        where = str(text / "stage1.json")
        for n, r in enumerate(ds.stage1):
            if not isinstance(r["re_caption"], str):
                raise ValidationError(f"{where}: record {n}: 're_caption' must be a string")
            _check_captions([r["caption"]], where, f"record {n}")
        rep.checked.append("text/stage1")
    if ds.has_text("augmented.json"):
        where = str(text / "augmented.json")
        for iid, caps in ds.augmented.items():
            if not 0 < iid <= ds.num_items:
                raise ValidationError(f"{where}: item {iid} is not in 1..{ds.num_items}")
            _check_captions(caps, where, f"item {iid}")
        rep.checked.append("text/augmented")


def check_latents(ds: SafeDataset) -> None:
    """latents/latents.npy (when present): readable without pickle, float [num_items+1, h, w, C]; meta.json parses."""
    p = ds.latents_dir / "latents.npy"
    try:
        a = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValidationError(f"{p}: cannot read latents (truncated or corrupt?): {e}") from None
    if a.ndim != 4 or a.shape[0] != ds.num_items + 1 or a.dtype.kind != "f":
        raise ValidationError(f"{p}: expected float [num_items+1={ds.num_items + 1}, h, w, C], got "
                              f"{a.dtype} {list(a.shape)}")
    mp = ds.latents_dir / "meta.json"
    if mp.exists():
        try:
            if not isinstance(json.loads(mp.read_text(encoding="utf-8")), dict):
                raise ValidationError(f"{mp}: expected a JSON object")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValidationError(f"{mp}: not valid JSON (truncated or corrupt?): {e}") from None


@dataclass
class ValidationReport:
    """What `validate_dataset` checked and found (missing images are listed, not fatal, under policy 'skip')."""

    checked: list[str] = field(default_factory=list)
    missing_images: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"checked: {', '.join(self.checked) or 'nothing'}"] + [f"notice: {n}" for n in self.notices]
        if self.missing_images:
            lines.append(f"missing images: {len(self.missing_images)} (first: {self.missing_images[:10]})")
        return "\n".join(lines)


def referenced_items(ds: SafeDataset) -> np.ndarray:
    """Sorted unique item ids used by any split table, candidate list or history of a dataset."""
    ids = [np.zeros(0, np.int64)]
    for s in ds.available_splits():
        ids.append(ds.split(s).outfits.ravel())
        if (ds.root / "splits" / f"fitb_{s}_candidates.npz").is_file():
            ids.append(ds.candidates(s).candidates.ravel())
        if (ds.root / "splits" / f"{s}_history.json").is_file():
            ids += [np.asarray(v, np.int64) for per in ds.history(s).values() for v in per.values()]
    ids = np.unique(np.concatenate(ids))
    return ids[ids > 0]


def validate_dataset(ds: SafeDataset, *, check_images: bool = True,
                     log: Callable[[str], None] = lambda s: None) -> ValidationReport:
    """Run every structural and cross-file check on a safe-format folder; raise ValidationError on the first
    inconsistency, and on missing images of referenced items (listing the first few)."""
    rep = ValidationReport()
    cats, iid_cat = ds.categories, ds.iid_category
    if len(cats) != ds.meta["num_categories"]:
        raise ValidationError(f"{ds.root / 'meta.json'}: num_categories {ds.meta['num_categories']} but "
                              f"categories.json has {len(cats)}")
    unknown = ~np.isin(iid_cat[1:], np.asarray(list(cats) + [-1]))
    if unknown.any():
        i = int(np.argwhere(unknown)[0, 0]) + 1
        raise ValidationError(f"{ds.root / 'items.npz'}: item {i} has category {int(iid_cat[i])}, "
                              "not in categories.json")
    rep.checked.append("meta/categories/items")
    for s in ds.available_splits():
        gt = ds.split(s)
        gwhere = str(ds.root / "splits" / f"{s}.npz")
        check_outfits(gt, iid_cat, cats, where=gwhere)
        rep.checked.append(f"{s} ({len(gt)} rows)")
        if ds.has_fitb(s):
            f = ds.fitb(s)
            fwhere = str(ds.root / "splits" / f"fitb_{s}.npz")
            check_unique_rows(gt, where=gwhere)
            check_outfits(f, iid_cat, cats, where=fwhere, fitb=True)
            check_fitb_alignment(gt, f, where=fwhere)
            rep.checked.append(f"fitb_{s}")
            if (ds.root / "splits" / f"fitb_{s}_candidates.npz").is_file():
                check_candidates(gt, f, ds.candidates(s), ds.num_items,
                                 where=str(ds.root / "splits" / f"fitb_{s}_candidates.npz"))
                rep.checked.append(f"fitb_{s}_candidates")
        elif dup := repeated_rows(gt):  # training only: a repeat weighs that outfit twice (Polyvore train has 2)
            rep.notices.append(f"{gwhere}: {len(dup)} row(s) repeat an earlier (uid, oid), first: "
                               f"{_row(gt, dup[0][0])} = row {dup[0][1]}")
        if (ds.root / "splits" / f"{s}_history.json").is_file():
            hwhere = str(ds.root / "splits" / f"{s}_history.json")
            check_history(ds.history(s), iid_cat, where=hwhere)
            check_history_users(gt, ds.history(s), where=hwhere)
            rep.checked.append(f"{s}_history")
    check_texts(ds, rep)
    if ds.has_image_paths:
        _ = ds.image_paths  # its length and entry types are checked on load
        rep.checked.append("image_paths")
    if (ds.latents_dir / "latents.npy").exists():
        check_latents(ds)
        rep.checked.append("latents")
    if check_images and ds.has_image_paths:
        missing = [int(i) for i in referenced_items(ds)
                   if (p := ds.image_file(int(i))) is None or not p.is_file()]
        rep.missing_images = missing
        rep.checked.append("images")
        if missing:
            first = [(i, ds.image_paths[i] or "<no path>") for i in missing[:5]]
            raise ValidationError(f"{ds.root / 'images'}: {len(missing)} referenced item image(s) missing, "
                                  f"first: {first}")
    log(rep.summary())
    return rep
