"""Host-side inputs of a split's rows for generation: item images, tokenized preference/sentence texts and the
caption template, with clear errors when the split lacks what the task needs.

The template is the GT-free length budget by default (samplers/templates.py, fix of spec §7.2 item 12);
`template_source="ground_truth"` uses the target item's own caption from item_info.json (the original).
"""
from __future__ import annotations

import functools
import pathlib

import numpy as np

from dualfashion_jax.data.examples import TaskRow, TaskRows
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.samplers.templates import CaptionTemplate, build_template
from dualfashion_jax.text.tokenizer import caption_json


class SplitInputs:
    """Random access to a split's rows plus everything needed to build their generation batches."""

    def __init__(self, data_dir: str | pathlib.Path, split: str, bundle, settings):
        if not data_dir:
            raise FileNotFoundError("no dataset: pass --data DIR (the training config names none that exists)")
        self.ds = SafeDataset(data_dir)
        root = self.ds.root
        need = [root / "splits" / f"{split}.npz", root / "splits" / f"fitb_{split}.npz",
                root / "image_paths.json", root / "text" / f"{split}_preference.json"]
        if settings.template_source == "ground_truth":
            need.append(root / "text" / "item_info.json")
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"split {split!r} of {root} lacks what generation needs: {missing} (the split "
                                    "table + FITB rows, item images and user preferences"
                                    + (", item captions for --template ground_truth" if settings.template_source
                                       == "ground_truth" else "") + ")")
        self.rows = TaskRows(self.ds, split)
        self.split = split
        self.tok = bundle.tokenizer
        self.settings = settings
        self.images = ItemImages(self.ds, bundle.image_size, cache_items=256)
        self.budget = build_template(self.tok, source="budget", value_lengths=bundle.value_lengths) \
            if settings.template_source == "budget" else None
        self.text = functools.lru_cache(maxsize=65536)(self._text)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, i: int) -> TaskRow:
        return self.rows[i]

    def _text(self, s: str) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tok.encode([s])
        return ids[0], mask[0]

    def template(self, iid: int) -> CaptionTemplate:
        """The caption template for a blank whose GT item is `iid`."""
        if self.budget is not None:
            return self.budget
        info = self.ds.item_info.get(int(iid))
        if info is None:
            raise KeyError(f"item {iid} has no caption in {self.ds.root / 'text' / 'item_info.json'} "
                           "(needed by --template ground_truth)")
        return build_template(self.tok, source="ground_truth", gt_caption=caption_json(info["elements"]))

    def texts(self, row: TaskRow, slot: int) -> dict[str, np.ndarray]:
        """Token fields of one blank slot: preference, sentence and template (each [L] int32)."""
        p_ids, p_mask = self.text(row.preferences[slot])
        s_ids, s_mask = self.text(row.sentences[slot])
        t = self.template(row.outfit[slot])
        return {"pref_ids": p_ids, "pref_mask": p_mask, "sent_ids": s_ids, "sent_mask": s_mask,
                "tmpl_ids": t.ids, "tmpl_mask": t.attention_mask, "tmpl_labels": t.label_mask}

    def item_images(self, iids) -> np.ndarray:
        """uint8 [K, S, S, 3] at the model's image size (blank id 0 -> white)."""
        return self.images.many(list(iids))
