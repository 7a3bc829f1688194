"""`generate --task design` (issue #17): for every row of a split, edit the row's GT blank item toward the row's user
with `DesignProgram` (DVBPR preference term), resumable like PFITB/GOR.

Layout of a results dir:
  rows/<index>_<uid>_<oid>/source.png, edited.png, grid.png (history | source | edited),
                           row.json   (written last, atomically: the row's done marker)
  design.json   {"format_version": 1, "task": "design", "rows": [{index, uid, oid, slot, source_iid, category,
                 preference, source_image, edited_image, score_before, score_after}, ...]}
  settings.json (run settings + the mean scores), run.json (resume check), index.html
Single process (the design program is jitted on one device); rows are batched and the last batch padded.
"""
from __future__ import annotations

import html
import json
import math
import pathlib

import jax
import numpy as np

from dualfashion_jax.data import safe_io
from dualfashion_jax.data.examples import TaskRow
from dualfashion_jax.generation import outputs
from dualfashion_jax.generation.design import DesignProgram, DesignSettings
from dualfashion_jax.generation.grid import grid_image
from dualfashion_jax.generation.inputs import SplitInputs
from dualfashion_jax.generation.runner import RUN_FILE, RunSummary, progress_bar
from dualfashion_jax.generation.sampling import pad_rows
from dualfashion_jax.generation.settings import GenSettings, check_resume

DESIGN_FILE = "design.json"
TEXT_KEYS = ("pref_ids", "pref_mask", "sent_ids", "sent_mask")


def _write_row(out: pathlib.Path, inputs: SplitInputs, r: TaskRow, source: np.ndarray, edited: np.ndarray,
               before: float, after: float) -> dict:
    """The row's PNGs, grid and done marker; returns its design.json entry."""
    rel = pathlib.PurePosixPath(outputs.ROWS_DIR) / outputs.row_dir_name(r)
    d = out / rel
    d.mkdir(parents=True, exist_ok=True)
    outputs.save_png(d / "source.png", source)
    outputs.save_png(d / "edited.png", edited)
    hist = r.history.get(r.categories[r.blank], [])[:4]
    grid_image([("history", [(im, "") for im in (inputs.item_images(hist) if hist else [])]),
                ("source item", [(source, f"score {before:.3f}")]),
                (f"edited for user {r.uid}", [(edited, f"score {after:.3f}")])]).save(d / "grid.png")
    entry = {"index": r.index, "uid": r.uid, "oid": r.oid, "slot": r.blank, "source_iid": r.outfit[r.blank],
             "category": r.categories[r.blank], "preference": r.preferences[r.blank],
             "source_image": str(rel / "source.png"), "edited_image": str(rel / "edited.png"),
             "score_before": float(before), "score_after": float(after)}
    safe_io.write_json(d / outputs.DONE_FILE, {"index": r.index, "design": entry}, indent=1)
    return entry


def _finalize(out: pathlib.Path, n: int, settings: dict) -> list[dict]:
    """design.json, settings.json (with the mean scores) and index.html from the done markers of rows [0, n)."""
    markers = {}
    for p in (out / outputs.ROWS_DIR).glob(f"*/{outputs.DONE_FILE}"):
        blob = json.loads(p.read_text())
        if "design" in blob:
            markers[int(blob["index"])] = blob["design"]
    missing = [i for i in range(n) if i not in markers]
    if missing:
        raise RuntimeError(f"{out}: rows {missing[:10]} have no {outputs.DONE_FILE} (generation incomplete)")
    rows = [markers[i] for i in range(n)]
    before, after = (float(np.mean([e[k] for e in rows])) for k in ("score_before", "score_after"))
    settings = {**settings, "mean_score_before": before, "mean_score_after": after}
    (out / DESIGN_FILE).write_text(json.dumps({"format_version": 1, "task": "design", "rows": rows}, indent=1,
                                              ensure_ascii=False))
    (out / "settings.json").write_text(json.dumps(settings, indent=1, default=str))
    _write_html(out, rows, settings)
    return rows


def _write_html(out: pathlib.Path, rows: list[dict], settings: dict) -> None:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>DESIGN results</title><style>"
             "body{font-family:sans-serif}td{vertical-align:top;border-bottom:1px solid #ccc;padding:6px}"
             "img{width:128px;image-rendering:pixelated}pre{white-space:pre-wrap;max-width:420px;font-size:11px}"
             "</style></head><body>",
             f"<h1>DESIGN: {len(rows)} rows</h1><p>mean DVBPR score {settings['mean_score_before']:.4f} (source) -> "
             f"{settings['mean_score_after']:.4f} (edited)</p>",
             f"<details><summary>settings</summary><pre>{e(json.dumps(settings, indent=1, default=str))}</pre>"
             "</details><table><tr><th>row</th><th>source</th><th>edited</th><th>score before -> after</th>"
             "<th>preference</th></tr>"]
    for r in rows:
        parts.append(f"<tr><td>#{r['index']}<br>uid {r['uid']}<br>item {r['source_iid']}</td>"
                     f"<td><img src='{e(r['source_image'])}'></td><td><img src='{e(r['edited_image'])}'></td>"
                     f"<td>{r['score_before']:.4f} -> {r['score_after']:.4f}</td>"
                     f"<td><pre>{e(r['preference'])}</pre></td></tr>")
    parts.append("</table></body></html>")
    (out / "index.html").write_text("\n".join(parts), encoding="utf-8")


def run_design(bundle, dvbpr, settings: DesignSettings, *, out, split: str = "test", data_dir: str | None = None,
               rows_per_batch: int = 4, max_rows: int | None = None, progress: bool = True,
               dvbpr_info: dict | None = None) -> RunSummary:
    """Edits the blank item of rows [0, max_rows) of `split` toward each row's user into `out` (module docstring)."""
    if jax.process_count() > 1:
        raise ValueError("generate --task design runs in one process (start it without --num-processes)")
    if rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be >= 1, got {rows_per_batch}")
    out = pathlib.Path(out)
    outputs.check_out_dir(out)
    inputs = SplitInputs(data_dir or bundle.data_dir, split, bundle, GenSettings())  # budget template: unused
    n = len(inputs) if max_rows is None else min(int(max_rows), len(inputs))
    if n < 1:
        raise ValueError(f"split {split!r} of {inputs.ds.root}: no rows to generate (max_rows={max_rows})")
    uids = [inputs.row(i).uid for i in range(n)]
    if max(uids) >= dvbpr.cfg.num_users:
        raise ValueError(f"design: user id {max(uids)} of split {split!r} >= the DVBPR model's num_users "
                         f"{dvbpr.cfg.num_users} (was it trained on {inputs.ds.root}?)")
    run_info = json.loads(json.dumps({
        "task": "design", "split": split, "data": str(inputs.ds.root.resolve()), "sampler": settings.to_json(),
        "model": bundle.info.get("source", "<in-memory>"), "step": bundle.info.get("step"),
        "ema": bundle.info.get("ema"), "dvbpr": dvbpr_info or {"source": "<in-memory>"}}))
    run_path = out / RUN_FILE
    if run_path.is_file():
        check_resume(json.loads(run_path.read_text()), run_info, str(run_path))
    else:
        out.mkdir(parents=True, exist_ok=True)
        run_path.write_text(json.dumps(run_info, indent=1))
    pending = [i for i in range(n) if i not in outputs.done_rows(out)]
    if pending:
        program = DesignProgram(bundle, dvbpr, settings)
        bar = progress_bar(len(pending), "design", progress)
        for b in range(math.ceil(len(pending) / rows_per_batch)):
            rows = [inputs.row(i) for i in pending[b * rows_per_batch:(b + 1) * rows_per_batch]]
            host = {"images": inputs.item_images([r.outfit[r.blank] for r in rows]),
                    "uid": np.asarray([r.uid for r in rows], np.int32),
                    "iid": np.asarray([r.outfit[r.blank] for r in rows], np.uint32)}
            for r in rows:
                for k, v in inputs.texts(r, r.blank).items():
                    if k in TEXT_KEYS:
                        host.setdefault(k, []).append(v)
            host = pad_rows({k: np.stack(v) if isinstance(v, list) else v for k, v in host.items()}, rows_per_batch)
            res = program(host["images"], host["uid"], host["iid"], {k: host[k] for k in TEXT_KEYS})
            for j, r in enumerate(rows):
                _write_row(out, inputs, r, host["images"][j], res["images"][j], res["score_before"][j],
                           res["score_after"][j])
            bar.update(len(rows))
        bar.close()
    settings_json = {**run_info, "rows": n, "bundle": bundle.info, "image_size": bundle.image_size}
    rows = _finalize(out, n, settings_json)
    return RunSummary(out, n, len(pending), n - len(pending), len(rows))
