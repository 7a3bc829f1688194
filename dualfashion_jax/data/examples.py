"""Training examples for the 3 stages and PFITB/GOR task rows, read from a safe-format dataset (spec §2.3-2.5, §3, §5).

Each `Stage*Source` is a random-access source (`len`, `[i]` -> dict of numpy arrays) for `grain.MapDataset`.
Keys are those of `data/keys.py`, the names the losses read. Visuals are uint8 images `[S, S, 3]` (`*images`) or,
when `latents/` exists, precomputed latents `[h, w, C]` float32 (`*latents`). Token fields are int32 `[L]`
(L = tokenizer.max_length); `ids` is the example's item id:
  stage 1: images|latents, caption_{ids,mask,label_mask} (i2t target, JSON), re_caption_{ids,mask} (t2i prompt,
           free text), ids
  stage 2: target_images|target_latents, context_images|context_latents [3, ...], caption_{ids,mask,label_mask}
           (the target's 4-key caption), pref_{ids,mask}, sentence_{ids,mask}, uid, oid, ids, cid
  stage 3: caption_{ids,mask,label_mask} [n_aug, L], pref_{ids,mask}, sentence_{ids,mask}, ids, cid
Stage-2 example i is (row i // 4, target slot i % 4): every outfit item is a target once per epoch, the
other three items are the context. Preference text = the user's per-category "Frequency" attributes as a
4-key caption JSON ("Unknown" where absent). Stage-3 preference is all-"Unknown" (no user; inferred, §7.3).
`cache_items=N` keeps N decoded images in memory (small datasets such as the demo load several times faster).
Each source's `distinct_texts()` lists what it tokenizes; `check_truncation` counts those longer than max_length.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np

from dualfashion_jax.data import keys as K
from dualfashion_jax.data.format import SafeDataset, sentence_text
from dualfashion_jax.data.images import item_visuals
from dualfashion_jax.text.tokenizer import CaptionTokenizer, Truncation, TruncationWarning, caption_json


class _Texts:
    """Cached tokenization of the few distinct texts a dataset uses (captions, preferences, sentences)."""

    def __init__(self, ds: SafeDataset, tok: CaptionTokenizer, pref_split: str | None):
        self.ds, self.tok = ds, tok
        self.prefs = ds.preference(pref_split) if pref_split and ds.has_text(f"{pref_split}_preference.json") else {}
        self.caption = functools.lru_cache(maxsize=65536)(self._caption)
        self.item_caption = functools.lru_cache(maxsize=65536)(self._item_caption)
        self.text = functools.lru_cache(maxsize=65536)(self._text)

    def _caption(self, s: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.tok.encode_caption(s, require_keys=False)

    def _text(self, s: str) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tok.encode([s])
        return ids[0], mask[0]

    def _item_caption(self, iid: int) -> str:
        info = self.ds.item_info.get(int(iid))
        if info is None:
            raise KeyError(f"item {iid} has no caption in {self.ds.root / 'text' / 'item_info.json'}")
        return caption_json(info["elements"])

    def preference(self, uid: int, cid: int) -> str:
        entry = self.prefs.get(int(uid), {}).get(int(cid), {})
        freq = entry.get("Frequency", entry.get("frequency", {})) if isinstance(entry, dict) else {}
        return caption_json(freq if isinstance(freq, dict) else {})

    def sentence(self, cid: int) -> str:
        return sentence_text(self.ds.categories[int(cid)])


def check_truncation(source, what: str) -> Truncation:
    """Counts the source's distinct texts longer than its tokenizer's max_length; TruncationWarning if any.

    The tokenizer must fit the caption scaffold itself (`CaptionTokenizer.check_scaffold`, TokenizerError).
    """
    tok = source.texts.tok
    tok.check_scaffold()
    found = tok.count_truncated(source.distinct_texts())
    if found.count:
        warnings.warn(found.message(what, tok), TruncationWarning, stacklevel=2)
    return found


class Stage1Source:
    """Stage 1 image/caption pairs from text/stage1.json (or, if absent, one pair per item_info entry)."""

    def __init__(self, ds: SafeDataset, tok: CaptionTokenizer, *, use_latents: str | bool = "auto",
                 image_size: int | None = None, cache_items: int = 0):
        self.ds, self.texts = ds, _Texts(ds, tok, None)
        self.visual, self.kind = item_visuals(ds, use_latents, image_size, cache_items)
        if ds.has_text("stage1.json"):
            self.records = [(int(r["iid"]), r["caption"], r["re_caption"]) for r in ds.stage1]
        elif ds.has_text("item_info.json"):
            self.records = [(i, c, c) for i in sorted(ds.item_info) for c in [self.texts.item_caption(i)]]
        else:
            raise FileNotFoundError(f"{ds.root / 'text'}: stage 1 needs stage1.json or item_info.json")

    def __len__(self) -> int:
        return len(self.records)

    def distinct_texts(self) -> list[str]:
        """Every caption and t2i prompt this source tokenizes, once each (first-seen order)."""
        return list(dict.fromkeys(t for _, cap, re_cap in self.records for t in (cap, re_cap)))

    def __getitem__(self, i: int) -> dict:
        iid, cap, re_cap = self.records[i]
        c_ids, c_mask, c_lab = self.texts.caption(cap)
        r_ids, r_mask = self.texts.text(re_cap)  # the t2i prompt: free text, no label mask (spec §2.3)
        return {K.visual(self.kind): self.visual(iid), K.CAPTION_IDS: c_ids, K.CAPTION_MASK: c_mask,
                K.CAPTION_LABEL_MASK: c_lab, K.RE_CAPTION_IDS: r_ids, K.RE_CAPTION_MASK: r_mask, K.IDS: np.int64(iid)}


class Stage2Source:
    """Stage 2: (target item, 3 context items, preference, sentence, target caption) per (row, slot)."""

    def __init__(self, ds: SafeDataset, tok: CaptionTokenizer, *, split: str = "train",
                 use_latents: str | bool = "auto", image_size: int | None = None, cache_items: int = 0,
                 missing_captions: str = "error"):
        """`missing_captions`: 'error' if an outfit item has no item_info caption, or 'skip' those targets
        (they still serve as context); `num_skipped` says how many were left out."""
        if missing_captions not in ("error", "skip"):
            raise ValueError(f"missing_captions must be 'error' or 'skip', got {missing_captions!r}")
        self.ds, self.table = ds, ds.split(split)
        self.texts = _Texts(ds, tok, split)
        self.visual, self.kind = item_visuals(ds, use_latents, image_size, cache_items)
        info = ds.item_info
        has = np.array([i in info for i in self.table.outfits.ravel().tolist()], bool)  # [N*4], (row, slot)
        if not has.all() and missing_captions == "error":
            missing = sorted(set(self.table.outfits.ravel()[~has].tolist()))
            raise KeyError(f"{ds.root / 'text' / 'item_info.json'}: {len(missing)} item(s) of split {split!r} have "
                           f"no caption, first: {missing[:5]} (pass missing_captions='skip' to leave them out)")
        self.index = np.flatnonzero(has)  # example i -> flat (row * 4 + slot)
        self.num_skipped = int((~has).sum())

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def distinct_texts(self) -> list[str]:
        """Every target caption, preference and sentence this source tokenizes, once each (first-seen order)."""
        t = self.table
        rows = self.index // 4
        iids = t.outfits.ravel()[self.index].tolist()
        cids = np.asarray(t.category).ravel()[self.index].tolist()
        uids = np.asarray(t.uids)[rows].tolist()
        caps = [self.texts.item_caption(i) for i in dict.fromkeys(iids)]
        prefs = [self.texts.preference(u, c) for u, c in dict.fromkeys(zip(uids, cids))]
        return list(dict.fromkeys(caps + prefs + [self.texts.sentence(c) for c in dict.fromkeys(cids)]))

    def __getitem__(self, i: int) -> dict:
        r, slot = divmod(int(self.index[i]), 4)
        t = self.table
        outfit, cats = t.outfits[r], t.category[r]
        iid, cid, uid = int(outfit[slot]), int(cats[slot]), int(t.uids[r])
        ctx = np.delete(outfit, slot)  # [3]
        cap_ids, cap_mask, cap_lab = self.texts.caption(self.texts.item_caption(iid))
        p_ids, p_mask = self.texts.text(self.texts.preference(uid, cid))
        s_ids, s_mask = self.texts.text(self.texts.sentence(cid))
        return {K.visual(self.kind, K.TARGET): self.visual(iid),
                K.visual(self.kind, K.CONTEXT): self.visual.many(ctx),
                K.CAPTION_IDS: cap_ids, K.CAPTION_MASK: cap_mask, K.CAPTION_LABEL_MASK: cap_lab,
                K.PREF_IDS: p_ids, K.PREF_MASK: p_mask, K.SENTENCE_IDS: s_ids, K.SENTENCE_MASK: s_mask,
                K.UID: np.int64(uid), K.OID: np.int64(t.oids[r]), K.IDS: np.int64(iid), K.CID: np.int64(cid)}


class Stage3Source:
    """Stage 3 (text only): n_aug augmented captions per item + preference and sentence tokens."""

    def __init__(self, ds: SafeDataset, tok: CaptionTokenizer, *, n_aug: int | None = None):
        self.ds, self.texts = ds, _Texts(ds, tok, None)
        self.aug = ds.augmented
        self.iids = sorted(self.aug)
        counts = [len(self.aug[i]) for i in self.iids]
        self.n_aug = int(n_aug or min(counts))
        self.iid_category = ds.iid_category

    def __len__(self) -> int:
        return len(self.iids)

    def distinct_texts(self) -> list[str]:
        """Every augmented caption (the first n_aug, cycled), preference and sentence this source tokenizes."""
        caps = [c for i in self.iids for c in self.aug[i][: self.n_aug]]
        sents = [self.texts.sentence(int(self.iid_category[i])) for i in self.iids]
        return list(dict.fromkeys(caps + [caption_json({})] + sents))

    def __getitem__(self, i: int) -> dict:
        iid = self.iids[i]
        caps = self.aug[iid]
        caps = [caps[k % len(caps)] for k in range(self.n_aug)]  # cycle if an item has fewer than n_aug
        enc = [self.texts.caption(c) for c in caps]
        cid = int(self.iid_category[iid])
        p_ids, p_mask = self.texts.text(caption_json({}))
        s_ids, s_mask = self.texts.text(self.texts.sentence(cid))
        return {K.CAPTION_IDS: np.stack([e[0] for e in enc]), K.CAPTION_MASK: np.stack([e[1] for e in enc]),
                K.CAPTION_LABEL_MASK: np.stack([e[2] for e in enc]), K.PREF_IDS: p_ids, K.PREF_MASK: p_mask,
                K.SENTENCE_IDS: s_ids, K.SENTENCE_MASK: s_mask, K.IDS: np.int64(iid), K.CID: np.int64(cid)}


@dataclass(frozen=True)
class TaskRow:
    """One PFITB/GOR evaluation row. PFITB generates `outfit[blank]`; GOR generates all 4 slots."""

    index: int
    uid: int
    oid: int
    outfit: tuple[int, ...]          # GT items [4]
    fitb_outfit: tuple[int, ...]     # with 0 at the blank
    blank: int                       # blank slot (first 0 of the FITB row, spec §5.3)
    categories: tuple[int, ...]      # [4]
    history: dict[int, list[int]]    # {cid: [iid, ...]} for this user
    candidates: tuple[int, ...]      # [5], index 0 = GT blank item; () if the split has none
    preferences: tuple[str, ...]     # per slot: 4-key caption JSON of the user's preference
    sentences: tuple[str, ...]       # per slot: "Recommend a fashion {category} item, on white background."

    @property
    def target(self) -> int:
        return self.outfit[self.blank]


class TaskRows:
    """Random access to PFITB/GOR rows of a split (GT + FITB + candidates + history + texts)."""

    def __init__(self, ds: SafeDataset, split: str = "test"):
        self.ds, self.split = ds, split
        self.gt, self.fitb = ds.split(split), ds.fitb(split)
        has_c = (ds.root / "splits" / f"fitb_{split}_candidates.npz").is_file()
        self.cand = ds.candidates(split) if has_c else None
        has_h = (ds.root / "splits" / f"{split}_history.json").is_file()
        self.history = ds.history(split) if has_h else {}
        self.texts = _Texts(ds, None, split)  # type: ignore[arg-type]  (text strings only, no tokenizer use)

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, r: int) -> TaskRow:
        gt, f = self.gt, self.fitb
        uid, cats = int(gt.uids[r]), tuple(int(c) for c in gt.category[r])
        return TaskRow(
            index=int(r), uid=uid, oid=int(gt.oids[r]), outfit=tuple(int(i) for i in gt.outfits[r]),
            fitb_outfit=tuple(int(i) for i in f.outfits[r]), blank=int(np.argmax(f.outfits[r] == 0)),
            categories=cats, history=self.history.get(uid, {}),
            candidates=tuple(int(i) for i in self.cand.candidates[r]) if self.cand is not None else (),
            preferences=tuple(self.texts.preference(uid, c) for c in cats),
            sentences=tuple(self.texts.sentence(c) for c in cats))
