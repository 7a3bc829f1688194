"""Results on disk: per-row PNGs + grid + done marker, then the evaluators' records, the captions JSON and an
HTML index; finished rows are found again so an interrupted run resumes where it stopped.

Layout of a results dir:
  rows/<index>_<uid>_<oid>/gen_s<slot>_k<k>.png, grd_s<slot>.png, incomplete_outfit.png (PFITB), grid.png,
                           row.json   (written LAST, atomically: the row's done marker)
  records.json + settings.json        (data/records.py; rebuilt from all row.json files at the end)
  generated_caption.json (PFITB, spec §5.3 step 6) | generated_captions.json (GOR, spec §5.4)
  index.html                          (every row: grid, preference, captions)
  gen.npy / grd.npy                   (only on request: the original pickled layout)
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from dualfashion_jax.data import safe_io
from dualfashion_jax.data.examples import TaskRow
from dualfashion_jax.data.records import GenEntry, GrdEntry, Record, record_from_json, save_original_layout, \
    write_records
from dualfashion_jax.generation.grid import grid_image

ROWS_DIR = "rows"
DONE_FILE = "row.json"
CAPTION_FILES = {"pfitb": "generated_caption.json", "gor": "generated_captions.json"}


@dataclasses.dataclass
class RowResult:
    """What one row produced: images/captions keyed (slot, index) (PFITB: image k / caption j; GOR: sample k)."""

    row: TaskRow
    task: str
    blank_slots: tuple[int, ...]
    images: dict[tuple[int, int], np.ndarray]
    captions: dict[tuple[int, int], str]
    templates: dict[int, str]
    orders: dict[int, list[int]] = dataclasses.field(default_factory=dict)   # GOR: sample -> slot order
    extra_captions: dict[tuple[int, int], list[str]] = dataclasses.field(default_factory=dict)  # GOR, M > 1


def check_out_dir(out: str | os.PathLike) -> None:
    """Refuse an --out that is (or lies inside) an existing file, or a non-empty folder that no `generate` run
    started (no run.json): generation never writes over files it did not write."""
    out = pathlib.Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise FileExistsError(f"--out {out}: {p} is an existing file; expected a results folder (a new one, "
                                      "or one an earlier `generate` run started, to resume)")
            break
    if out.is_dir() and not (out / "run.json").is_file() and any(out.iterdir()):  # run.json: runner.RUN_FILE
        raise FileExistsError(f"--out {out}: a non-empty folder that no `generate` run started (it has no run.json); "
                              "choose a new or empty folder")


def row_dir_name(row: TaskRow) -> str:
    return f"{row.index:06d}_{row.uid}_{row.oid}"


def done_rows(out: pathlib.Path) -> set[int]:
    """Row indices whose done marker exists (and parses)."""
    done = set()
    for p in (out / ROWS_DIR).glob(f"*/{DONE_FILE}"):
        try:
            done.add(int(json.loads(p.read_text())["index"]))
        except (json.JSONDecodeError, KeyError, ValueError):
            continue  # a damaged marker: the row is regenerated
    return done


def save_png(path: pathlib.Path, img: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] image as PNG (every task's row images)."""
    Image.fromarray(np.asarray(img, np.uint8)).save(path)


def write_row(out: pathlib.Path, res: RowResult, inputs, seed: int, gt_caption=None) -> Record:
    """Writes one row's PNGs, grid and done marker; returns its Record."""
    r = res.row
    rel_dir = pathlib.PurePosixPath(ROWS_DIR) / row_dir_name(r)
    d = out / rel_dir
    d.mkdir(parents=True, exist_ok=True)
    gen, grd = [], []
    for (slot, k), img in sorted(res.images.items(), key=lambda x: (x[0][1], x[0][0])):
        name = f"gen_s{slot}_k{k}.png"
        save_png(d / name, img)
        cap = res.captions.get((slot, k))
        gen.append(GenEntry(slot=slot, sample=k, seed=seed, image=str(rel_dir / name), caption=cap))
    gt_imgs = {}
    for slot in res.blank_slots:
        gt_imgs[slot] = inputs.item_images([r.outfit[slot]])[0]
        save_png(d / f"grd_s{slot}.png", gt_imgs[slot])
        grd.append(GrdEntry(slot=slot, iid=r.outfit[slot], image=str(rel_dir / f"grd_s{slot}.png")))
    visible = [i for s, i in enumerate(r.outfit) if s not in res.blank_slots]
    ctx_imgs = inputs.item_images(visible) if visible else np.zeros((0,) * 4, np.uint8)
    if visible:
        save_png(d / "incomplete_outfit.png", np.concatenate(list(ctx_imgs), axis=1))
    rec = Record(uid=r.uid, oid=r.oid, task=res.task, outfit=tuple(r.outfit), categories=tuple(r.categories),
                 blank_slots=tuple(res.blank_slots), gen=tuple(gen), grd=tuple(grd),
                 preference={s: r.preferences[s] for s in res.blank_slots},
                 sentence={s: r.sentences[s] for s in res.blank_slots})
    hist_cats = [r.categories[s] for s in res.blank_slots]
    hist = [i for c in hist_cats for i in r.history.get(c, [])][:4]
    sections = [("history", [(im, "") for im in (inputs.item_images(hist) if hist else [])]),
                ("incomplete outfit", [(im, "") for im in ctx_imgs])]
    if res.task == "pfitb":
        s = res.blank_slots[0]
        sections.append(("generated", [(res.images[(s, k)], res.captions.get((s, k), ""))
                                       for k in sorted(k for (_, k) in res.images)]))
    else:
        for k, order in sorted(res.orders.items()):
            sections.append((f"sample {k} (order {order})", [(res.images[(s, k)], res.captions.get((s, k), ""))
                                                              for s in order]))
    sections.append(("ground truth", [(gt_imgs[s], (gt_caption(r.outfit[s]) if gt_caption else "") or "")
                                      for s in res.blank_slots]))
    grid_image(sections).save(d / "grid.png", compress_level=1)  # ~600 x 800 px: 19 -> 12 ms, 59 -> 71 kB
    safe_io.write_json(d / DONE_FILE, {"index": r.index, "record": rec.to_json(),
                                       "caption_entry": caption_entry(res, rec, rel_dir)}, indent=1)
    return rec


def caption_entry(res: RowResult, rec: Record, rel_dir) -> dict:
    """The row's entry of generated_caption(s).json (field names as the original scripts)."""
    r = res.row
    image = {(g.slot, g.sample): g.image for g in rec.gen}
    if res.task == "pfitb":
        s = res.blank_slots[0]
        caps = sorted((j, c) for (_, j), c in res.captions.items())
        return {"uid": r.uid, "oid": r.oid, "target_item_id": r.outfit[s], "preference_text": r.preferences[s],
                "sentence_text": r.sentences[s], "caption_template": res.templates[s],
                "generated_captions": [{"caption_sample_idx": j, "generated_caption": c,
                                        "image_path": image.get((s, j))} for j, c in caps]}
    out = []
    for k, order in sorted(res.orders.items()):
        for step, s in enumerate(order):
            out.append({"sample_idx": k, "step": step, "slot": s, "item_id": r.outfit[s], "image_path": image[(s, k)],
                        "preference_text": r.preferences[s], "sentence_text": r.sentences[s],
                        "caption_template": res.templates[s], "generated_caption": res.captions[(s, k)],
                        "more_captions": res.extra_captions.get((s, k), [])})
    return {"uid": r.uid, "oid": r.oid, "generated_captions": out}


def finalize(out: pathlib.Path, task: str, indices: Sequence[int], settings: Mapping[str, Any],
             original_layout: bool = False) -> list[Record]:
    """Merges the done markers of `indices` into records.json/settings.json, the captions JSON and index.html."""
    markers = {}
    for p in (out / ROWS_DIR).glob(f"*/{DONE_FILE}"):
        blob = json.loads(p.read_text())
        markers[int(blob["index"])] = (p.parent.name, blob)
    missing = [i for i in indices if i not in markers]
    if missing:
        raise RuntimeError(f"{out}: rows {missing[:10]} have no {DONE_FILE} (generation incomplete)")
    chosen = [markers[i] for i in sorted(indices)]
    records = [record_from_json(b["record"], f"{out / ROWS_DIR / name / DONE_FILE}") for name, b in chosen]
    write_records(out, records, settings)
    (out / CAPTION_FILES[task]).write_text(json.dumps([b["caption_entry"] for _, b in chosen], indent=1,
                                                      ensure_ascii=False))
    write_html(out, task, chosen, settings)
    if original_layout:
        save_original_layout(records, out)
    return records


def write_html(out: pathlib.Path, task: str, chosen: Sequence[tuple[str, dict]], settings: Mapping[str, Any]) -> None:
    """A static index.html: one table row per outfit row (grid image, preference, captions)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{task.upper()} results</title><style>"
             "body{font-family:sans-serif}td{vertical-align:top;border-bottom:1px solid #ccc;padding:6px}"
             "img{max-width:900px}pre{white-space:pre-wrap;max-width:420px;font-size:11px}</style></head><body>",
             f"<h1>{task.upper()}: {len(chosen)} rows</h1><p>model: {e(str(settings.get('model')))}</p>",
             f"<details><summary>settings</summary><pre>{e(json.dumps(dict(settings), indent=1, default=str))}"
             "</pre></details><table>"]
    for name, blob in chosen:
        rec, cap = blob["record"], blob["caption_entry"]
        prefs = "\n".join(f"slot {s}: {t}" for s, t in rec["preference"].items())
        caps = "\n".join(f"{c.get('sample_idx', c.get('caption_sample_idx'))}/{c.get('slot', '')}: "
                         f"{c['generated_caption']}" for c in cap["generated_captions"])
        parts.append(f"<tr><td>#{blob['index']}<br>uid {rec['uid']}<br>oid {rec['oid']}<br>outfit {rec['outfit']}"
                     f"</td><td><a href='{ROWS_DIR}/{e(name)}/grid.png'><img src='{ROWS_DIR}/{e(name)}/grid.png'></a>"
                     f"</td><td><b>preference</b><pre>{e(prefs)}</pre><b>captions</b><pre>{e(caps)}</pre></td></tr>")
    parts.append("</table></body></html>")
    (out / "index.html").write_text("\n".join(parts), encoding="utf-8")
