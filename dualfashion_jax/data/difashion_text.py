"""Convert DualFashion's processed caption/preference files (all optional) into the safe format's text/ folder.

Looked for in `src`, `src/processed`, `src/processed_info/*/` (the upstream layout, spec §3):
  item_info.npy ({iid: {"elements": {...}}}), {split}_preference.npy ({uid: {cid: {"Frequency"|"frequency": {...}}}}),
  text_to_image_30k.json (stage 1: org_caption, re_caption, image path), data_augmentation.npy (stage 3:
  {iid: [caption, ...]}). The stage-1/stage-3 layouts are inferred (their dataset classes are missing upstream),
  so records are accepted in the plausible shapes listed in each function and rejected loudly otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from dualfashion_jax.data.writer import DatasetWriter
from dualfashion_jax.data.pickled import ConversionInputError, load_pickled_dict
from dualfashion_jax.text.tokenizer import CaptionError, caption_json, check_caption

_IID_KEYS = ("iid", "item_id", "id")
_PATH_KEYS = ("image", "image_path", "img_path", "path", "file_name")


def find_file(src: Path, name: str) -> Path | None:
    """First match of `name` in src, src/text, src/processed, or one level below src/processed_info."""
    for d in (src, src / "text", src / "processed"):
        if (d / name).is_file():
            return d / name
    pi = src / "processed_info"
    if pi.is_dir():
        for d in sorted(pi.iterdir()):
            if (d / name).is_file():
                return d / name
    return None


def _iid(k: Any, path: Path, num_items: int) -> int:
    try:
        i = int(k)
    except (TypeError, ValueError):
        raise ConversionInputError(f"{path}: key {k!r} is not an item id") from None
    if not 0 < i <= num_items:
        raise ConversionInputError(f"{path}: item id {i} not in 1..{num_items}")
    return i


def convert_item_info(path: Path, num_items: int) -> dict[int, dict]:
    out = {}
    for k, v in load_pickled_dict(path).items():
        el = v.get("elements") if isinstance(v, dict) else None
        if not isinstance(el, dict):
            raise ConversionInputError(f"{path}: item {k!r}: expected {{'elements': {{key: value}}}}, "
                                       f"got {str(v)[:80]!r}")
        out[_iid(k, path, num_items)] = {"elements": {str(a): str(b) for a, b in el.items()}}
    return out


def convert_preference(path: Path) -> dict[int, dict[int, dict]]:
    out: dict[int, dict[int, dict]] = {}
    for u, per in load_pickled_dict(path).items():
        if not isinstance(per, dict):
            raise ConversionInputError(f"{path}: user {u!r}: expected {{cid: {{'Frequency': {{...}}}}}}")
        out[int(u)] = {}
        for c, v in per.items():
            freq = v.get("Frequency", v.get("frequency")) if isinstance(v, dict) else None
            if not isinstance(freq, dict):
                raise ConversionInputError(f"{path}: user {u} category {c}: expected a 'Frequency' dict, "
                                           f"got {str(v)[:80]!r}")
            out[int(u)][int(c)] = {"Frequency": {str(a): str(b) for a, b in freq.items()}}
    return out


def convert_stage1(path: Path, num_items: int, image_paths: list[str] | None) -> list[dict]:
    """Records with org_caption|caption, re_caption (optional: defaults to the caption) and an item id or an
    image path (resolved through all_item_image_paths by relative path or file name)."""
    try:
        recs = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionInputError(f"{path}: not valid JSON (truncated?): {e}") from None
    if isinstance(recs, dict):
        recs = list(recs.values())
    if not isinstance(recs, list):
        raise ConversionInputError(f"{path}: expected a JSON list of records")
    by_path: dict[str, int] = {}
    for i, p in enumerate(image_paths or []):
        if p:
            by_path.setdefault(p, i)
            by_path.setdefault(Path(p).name, i)
    out = []
    for n, r in enumerate(recs):
        if not isinstance(r, dict):
            raise ConversionInputError(f"{path}: record {n} is not an object")
        cap = r.get("org_caption", r.get("caption"))
        if not isinstance(cap, str):
            raise ConversionInputError(f"{path}: record {n} has no 'org_caption'/'caption' string")
        iid = next((r[k] for k in _IID_KEYS if k in r), None)
        if iid is None:
            p = next((str(r[k]) for k in _PATH_KEYS if k in r), None)
            iid = by_path.get(p) if p is not None else None
            iid = iid if iid is not None else (by_path.get(Path(p).name) if p is not None else None)
            if iid is None:
                raise ConversionInputError(f"{path}: record {n}: no item id field {_IID_KEYS} and its image path "
                                           f"{p!r} is not in all_item_image_paths")
        re_cap = r.get("re_caption", cap)  # the t2i prompt: free text allowed
        if not isinstance(re_cap, str):
            raise ConversionInputError(f"{path}: record {n}: 're_caption' must be a string")
        try:
            check_caption(cap, require_keys=False)
        except CaptionError as e:
            raise ConversionInputError(f"{path}: record {n}: {e}") from None
        out.append({"iid": _iid(iid, path, num_items), "caption": cap, "re_caption": re_cap})
    return out


def convert_augmented(path: Path, num_items: int) -> dict[int, list[str]]:
    """{iid: [caption str | attribute dict, ...]} or {iid: {"captions": [...]}} -> {iid: [caption json str]}."""
    out = {}
    for k, v in load_pickled_dict(path).items():
        if isinstance(v, dict):
            v = next((v[x] for x in ("captions", "augmented", "augmented_captions") if x in v), [v])
        if isinstance(v, str):
            v = [v]
        caps = []
        for c in v:
            c = caption_json(c) if isinstance(c, dict) else c
            try:
                check_caption(c, require_keys=False)
            except CaptionError as e:
                raise ConversionInputError(f"{path}: item {k!r}: {e}") from None
            caps.append(c)
        if caps:
            out[_iid(k, path, num_items)] = caps
    return out


def convert_text(src: Path, w: DatasetWriter, *, num_items: int, splits: list[str], report,
                 log: Callable[[str], None], image_paths: list[str] | None) -> None:
    """Find, convert and write every optional text file; record what was found/absent in `report`."""
    p = find_file(src, "item_info.npy")
    if p is not None:
        w.write_item_info(convert_item_info(p, num_items))
        report.found["item_info"] = str(p.relative_to(src))
    else:
        report.absent.append("text: item_info.npy")
    for s in splits:
        p = find_file(src, f"{s}_preference.npy")
        if p is not None:
            w.write_preference(s, convert_preference(p))
            report.found[f"preference_{s}"] = str(p.relative_to(src))
        else:
            report.absent.append(f"text: {s}_preference.npy")
    p = find_file(src, "text_to_image_30k.json")
    if p is not None:
        w.write_stage1(convert_stage1(p, num_items, image_paths))
        report.found["stage1"] = str(p.relative_to(src))
    else:
        report.absent.append("text: text_to_image_30k.json (stage 1)")
    p = find_file(src, "data_augmentation.npy")
    if p is not None:
        w.write_augmented(convert_augmented(p, num_items))
        report.found["augmented"] = str(p.relative_to(src))
    else:
        report.absent.append("text: data_augmentation.npy (stage 3)")
