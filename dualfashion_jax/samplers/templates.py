"""Caption templates for the caption sampler: which positions are MASK and how many per attribute value.

The original builds the template from the GROUND-TRUTH target item's caption with its value tokens masked,
so the masked span lengths leak the GT value lengths and generation needs the GT item's text (spec §7.2
item 12). Default here ("budget", the fix): a user- and item-independent skeleton, the canonical caption
JSON `{"Color": ..., "Material": ..., "Design features": ..., "Clothing Fashion Style": ...}`, whose value
spans are replaced by a fixed per-attribute number of MASK tokens. The budget is configurable; the
recommended one is `median_value_lengths` over the TRAINING captions (the median token length per key).
`template_source="ground_truth"` keeps the original.

Written against `text.tokenizer.CaptionTokenizer` (encode_caption, lengths, mask_id, pad_id, eos_id, max_length,
source). A template that does not fit max_length is a `TemplateError`, never a silently truncated template.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Iterable, Mapping

import numpy as np

from dualfashion_jax.text.tokenizer import (CAPTION_KEYS, SKELETON_VALUE, Truncation, TruncationWarning,
                                            caption_json)

TEMPLATE_SOURCES = ("budget", "ground_truth")
FILLER = SKELETON_VALUE  # placeholder value in the skeleton; its tokens are replaced by MASKs


class TemplateError(ValueError):
    """A caption template does not fit the tokenizer; the message names the tokenizer folder and max_length."""


def _where(tokenizer) -> str:
    return f"tokenizer {getattr(tokenizer, 'source', '<in-memory>')} (max_length={tokenizer.max_length})"


def _check_fits(tokenizer, caption: str, what: str) -> None:
    """TemplateError if `caption` takes more than max_length tokens (it would be truncated)."""
    n = tokenizer.lengths([caption])[0]
    if n > tokenizer.max_length:
        raise TemplateError(f"{what}: the caption {caption[:120]!r} takes {n} tokens (EOS included), more than "
                            f"max_length={tokenizer.max_length} of the {_where(tokenizer)}; raise max_length or use "
                            "a tokenizer that encodes the caption scaffold in fewer tokens")


@dataclasses.dataclass(frozen=True)
class CaptionTemplate:
    """A masked template: ids (label positions hold mask_id), attention and label masks, all int32 [L]."""
    ids: np.ndarray
    attention_mask: np.ndarray
    label_mask: np.ndarray
    text: str  # human-readable template (for the outputs' "caption_template" field)

    def value_lengths(self) -> list[int]:
        return [e - s for s, e in value_runs(self.label_mask)]


def value_runs(label_mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs [start, end) of label positions in a label mask [L] (one run per attribute value)."""
    lm = np.concatenate([[0], (np.asarray(label_mask).reshape(-1) > 0).astype(np.int8), [0]])
    d = np.diff(lm)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _runs_by_key(caption: str, label_mask: np.ndarray) -> dict[str, int] | None:
    """Maps each key with a non-empty value to its value's token count; None if runs and keys disagree."""
    try:
        obj = json.loads(caption)
    except json.JSONDecodeError:
        return None
    keys = [k for k in CAPTION_KEYS if isinstance(obj.get(k), str) and obj[k] and caption.find(f'"{k}"') >= 0]
    keys.sort(key=lambda k: caption.find(f'"{k}"'))
    runs = value_runs(label_mask)
    if len(runs) != len(keys):
        return None
    return {k: e - s for k, (s, e) in zip(keys, runs)}


def median_value_lengths(tokenizer, captions: Iterable[str]) -> dict[str, int]:
    """Median token length of each attribute value over `captions` (use the training captions), rounded, >= 1."""
    per_key: dict[str, list[int]] = {k: [] for k in CAPTION_KEYS}
    n, cut = 0, Truncation()
    for cap in captions:
        n += 1
        before = tokenizer.truncation.count
        _, _, lm = tokenizer.encode_caption(cap, require_keys=False)
        was_cut = tokenizer.truncation.count > before
        cut.add([cap], [was_cut])
        if was_cut:
            continue  # a truncated caption's last value run is too short
        runs = _runs_by_key(cap, lm)
        for k, v in (runs or {}).items():
            per_key[k].append(v)
    if cut.count:
        warnings.warn(cut.message("median_value_lengths (left out)", tokenizer), TruncationWarning, stacklevel=2)
    empty = [k for k, v in per_key.items() if not v]
    if empty:
        raise ValueError(f"median_value_lengths: no usable value for key(s) {empty} in {n} caption(s); pass "
                         "caption JSON strings with these keys (e.g. the training item captions)")
    return {k: max(1, int(round(float(np.median(v))))) for k, v in per_key.items()}


def _check_lengths(value_lengths: Mapping[str, int] | int) -> dict[str, int]:
    if isinstance(value_lengths, (int, np.integer)):
        value_lengths = {k: int(value_lengths) for k in CAPTION_KEYS}
    missing = [k for k in CAPTION_KEYS if k not in value_lengths]
    bad = {k: v for k, v in value_lengths.items() if k in CAPTION_KEYS and not (isinstance(v, (int, np.integer))
                                                                               and v >= 1)}
    if missing or bad:
        raise ValueError(f"value_lengths must give an int >= 1 for each of {list(CAPTION_KEYS)}; "
                         f"missing {missing}, invalid {bad}")
    return {k: int(value_lengths[k]) for k in CAPTION_KEYS}


def _text(tokenizer, ids: np.ndarray, attention_mask: np.ndarray) -> str:
    """The template as text with its MASK tokens visible (EOS and padding dropped)."""
    n = int(np.sum(attention_mask))
    body = ids[: n - 1] if n and ids[n - 1] == tokenizer.eos_id else ids[:n]
    return tokenizer.decode(np.asarray(body)[None], skip_special_tokens=False)[0].strip()


def budget_template(tokenizer, value_lengths: Mapping[str, int] | int) -> CaptionTemplate:
    """The default, GT-free template: the canonical skeleton with exactly value_lengths[k] MASKs per value."""
    lengths = _check_lengths(value_lengths)
    skeleton = caption_json({k: FILLER for k in CAPTION_KEYS})
    _check_fits(tokenizer, skeleton, "budget_template")
    ids, attn, lm = (np.asarray(a).reshape(-1) for a in tokenizer.encode_caption(skeleton))
    n_valid = int(attn.sum())
    runs = value_runs(lm)
    if len(runs) != len(CAPTION_KEYS) or ids[n_valid - 1] != tokenizer.eos_id:
        raise TemplateError(f"budget_template: the skeleton {skeleton!r} tokenized into {len(runs)} value spans "
                            f"(expected {len(CAPTION_KEYS)}) with the {_where(tokenizer)}")
    out_ids, out_lm, pos = [], [], 0
    for k, (s, e) in zip(CAPTION_KEYS, runs):
        out_ids += ids[pos:s].tolist() + [tokenizer.mask_id] * lengths[k]
        out_lm += [0] * (s - pos) + [1] * lengths[k]
        pos = e
    out_ids += ids[pos:n_valid].tolist()
    out_lm += [0] * (n_valid - pos)
    length = ids.shape[0]
    if len(out_ids) > length:
        raise TemplateError(f"budget_template: value lengths {lengths} make a {len(out_ids)}-token template, longer "
                            f"than the tokenizer's max_length {length} ({_where(tokenizer)})")
    pad = length - len(out_ids)
    t_ids = np.asarray(out_ids + [tokenizer.pad_id] * pad, np.int32)
    t_attn = np.asarray([1] * len(out_ids) + [0] * pad, np.int32)
    return CaptionTemplate(t_ids, t_attn, np.asarray(out_lm + [0] * pad, np.int32), _text(tokenizer, t_ids, t_attn))


def ground_truth_template(tokenizer, caption: str) -> CaptionTemplate:
    """The original template: the GT caption's tokens with its value tokens replaced by MASK (leaks lengths)."""
    _check_fits(tokenizer, caption, "ground_truth_template")
    ids, attn, lm = (np.asarray(a, np.int32).reshape(-1) for a in tokenizer.encode_caption(caption))
    t_ids = np.where(lm > 0, np.int32(tokenizer.mask_id), ids).astype(np.int32)
    return CaptionTemplate(t_ids, attn, lm, _text(tokenizer, t_ids, attn))


def build_template(tokenizer, *, source: str = "budget", value_lengths: Mapping[str, int] | int | None = None,
                   gt_caption: str | None = None) -> CaptionTemplate:
    """Dispatches on `template_source`: "budget" needs value_lengths, "ground_truth" needs gt_caption."""
    if source not in TEMPLATE_SOURCES:
        raise ValueError(f"template_source must be one of {TEMPLATE_SOURCES}, got {source!r}")
    if source == "ground_truth":
        if gt_caption is None:
            raise ValueError("template_source='ground_truth' needs the target item's caption (gt_caption)")
        return ground_truth_template(tokenizer, gt_caption)
    if value_lengths is None:
        raise ValueError("template_source='budget' needs value_lengths (e.g. median_value_lengths(tokenizer, "
                         "training captions), or one int for every key)")
    return budget_template(tokenizer, value_lengths)


def stack_templates(templates: Iterable[CaptionTemplate]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batches templates: (ids, attention_mask, label_mask), each int32 [N, L]."""
    ts = list(templates)
    if not ts:
        raise ValueError("stack_templates: no templates given")
    return tuple(np.stack([getattr(t, f) for t in ts]) for f in ("ids", "attention_mask", "label_mask"))
