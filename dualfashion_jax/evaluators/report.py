"""Evaluation report: one JSON document plus a markdown table laid out like the papers' tables
(Fidelity | Personalization | Compatibility | Retrieval | Text [| Oracle]) and, when computed, DiFashion's grounding
table (the same groups on the retrieved real items), with every network labelled **real-weight** / **random-weight**
/ **trained-here** and every setting needed to reproduce the numbers."""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Mapping

from dualfashion_jax.evaluators.context import RANDOM as RANDOM_WEIGHT, REAL as REAL_WEIGHT
from dualfashion_jax.evaluators.metrics import METRICS
from dualfashion_jax.evaluators.registry import GROUPS


# The "Grounding" group is its own table, laid out like DiFashion's grounding table: (metric, key, sub-group, label).
GROUNDING_TABLE = [
    ("grounded_clip_score", "grounded_clip_score", "Fidelity", "CS"),
    ("grounded_clip_image_score", "grounded_clip_image_score", "Fidelity", "CIS"),
    ("grounded_lpips", "grounded_lpips", "Fidelity", "LPIPS↓"),
    ("grounded_personal_sim", "grounded_personal_sim", "Personalization", "Personal Sim"),
    ("grounded_compatibility", "grounded_compatibility", "Compatibility", "Compat."),
    ("grounded_retrieval_acc", "grounded_retrieval_acc", "Retrieval", "Acc"),
]
GOR_GROUNDING_RECALL = [("grounding_recall", f"recall@{k}", "Retrieval", f"R@{k}") for k in (10, 20, 50, 100)]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}")
    return str(v)


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def build_report(*, task: str, model_name: str, results: Mapping[str, dict], errors: Mapping[str, str],
                 networks: Mapping[str, Any], settings: Mapping[str, Any], timings: Mapping[str, float],
                 uses: Mapping[str, tuple[str, ...]] | None = None) -> dict:
    """The report document; `uses` (metric -> network names) marks metrics computed by a random-weight network."""
    nets = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else dict(v) for k, v in networks.items()}
    comparable = bool(nets) and all(n["weights"] == "real-weight" for n in nets.values())
    random = sorted(m for m in results if any(nets.get(n, {}).get("weights") == RANDOM_WEIGHT
                                              for n in (uses or {}).get(m, ())))
    return _clean({"task": task, "model": model_name, "metrics": dict(results), "errors": dict(errors),
                   "random_weight_metrics": random, "networks": nets, "paper_comparable_networks": comparable,
                   "settings": dict(settings), "seconds": dict(timings)})


def _value(metrics: Mapping[str, Any], name: str, key: str) -> str | None:
    if name not in metrics or key not in metrics[name]:
        return None
    v = metrics[name][key]
    return _fmt(v if v is not None else float("nan"))


def _table(cols: list[tuple[str, str, str]], model: str) -> list[str]:
    """(group, label, value) columns -> a markdown table with a group header row (each group named once)."""
    if not cols:
        return []
    groups_row, prev = [], None
    for g, _, _ in cols:
        groups_row.append(g if g != prev else "")
        prev = g
    return ["| | " + " | ".join(groups_row) + " |", "|---|" + "---|" * len(cols),
            "| **Model** | " + " | ".join(f"**{lab}**" for _, lab, _ in cols) + " |",
            f"| {model} | " + " | ".join(v for _, _, v in cols) + " |", ""]


def _grounding_layout(task: str) -> list[tuple[str, str, str, str]]:
    """PFITB: GROUNDING_TABLE; GOR: the hit rate is labelled R@1, followed by grounding_recall's R@K."""
    if task.lower() == "pfitb":
        return GROUNDING_TABLE
    return [(n, k, g, "R@1" if n == "grounded_retrieval_acc" else lab) for n, k, g, lab in GROUNDING_TABLE] + \
        GOR_GROUNDING_RECALL


def _headline_cols(metrics: Mapping[str, Any], names: set[str]) -> list[tuple[str, str, str]]:
    """(group, label, value) of the headline keys of `names`, in the papers' group order (grounding apart)."""
    cols: list[tuple[str, str, str]] = []
    for group in GROUPS:
        for name, spec in METRICS.items():
            if spec.group == group and group != "Grounding" and name in names:
                for key, label in spec.headline:  # (key, column label) pairs registered with the metric
                    if (v := _value(metrics, name, key)) is not None:
                        cols.append((group, label, v))
    return cols


def to_markdown(report: Mapping[str, Any]) -> str:
    """The paper-style tables; random-weight metrics get their own section and failed ones a 'not available' list."""
    task, all_metrics = report["task"].upper(), report["metrics"]
    random = set(report.get("random_weight_metrics", ()))
    metrics = {k: v for k, v in all_metrics.items() if k not in random}
    cols = _headline_cols(metrics, set(metrics))
    lines = [f"# DualFashion evaluation: {task}", ""]
    s = report["settings"]
    lines.append(f"Results `{s.get('results_dir')}`, data `{s.get('data_dir')}`, split `{s.get('split')}`, "
                 f"{s.get('num_records')} rows, {s.get('num_generated')} generated images.")
    lines.append("")
    if s.get("partial"):
        lines += [f"partial: {s['partial']} (evaluated with --allow-partial; not comparable with a full run)", ""]
    lines += _table(cols, report["model"])
    if any(n in METRICS and METRICS[n].group == "Grounding" for n in metrics):
        grounded = [(g, lab, v) for name, key, g, lab in _grounding_layout(task)
                    if (v := _value(metrics, name, key)) is not None]
        how = "argmax CLIP cosine among the row's 5 candidates" if task == "PFITB" else \
            "top-1 CLIP cosine among all catalogue items of the same category"
        lines += ["## Grounding (generate-then-retrieve)", "",
                  f"Each generated image is replaced by a real item ({how}); the metrics below are recomputed on the "
                  "retrieved items.", ""] + _table(grounded, report["model"])
    if report["errors"]:
        lines += ["## Not available", ""] + [f"- `{k}`: not available: {v}" for k, v in report["errors"].items()] + [""]
    if random:
        lines += ["## Random-weight stand-ins (not meaningful)", "",
                  "Computed by randomly initialised networks (no real weights installed or given): they only show "
                  "that the code runs, and compare nothing.", ""]
        grounded = [(g, f"Grd {lab}", v) for name, key, g, lab in _grounding_layout(task)
                    if name in random and (v := _value(all_metrics, name, key)) is not None]
        lines += _table(_headline_cols(all_metrics, random) + grounded, report["model"])
    if any(n["weights"] != REAL_WEIGHT for n in report["networks"].values()):
        lines += ["**Not paper-comparable:** at least one network below is a random-weight stand-in or was trained "
                  "here; numbers only compare runs evaluated with the same networks and settings.", ""]
    lines += ["## Networks", "", "| network | weights | source |", "|---|---|---|"]
    for name, n in report["networks"].items():
        lines.append(f"| {name} | **{n['weights']}** | {n['source']} |")
    if not report["networks"]:
        lines.append("| (none: these metrics need no network) | | |")
    lines += ["", "## Details", "", "| metric | key | value |", "|---|---|---|"]
    for name, vals in all_metrics.items():
        for k, v in vals.items():
            lines.append(f"| {name} | {k} | {_fmt(v if v is not None else float('nan'))} |")
    lines += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=1, default=str), "```", ""]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out_json: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes report.json and the markdown next to it (same stem, .md)."""
    out_json = pathlib.Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=1, default=str))
    md = out_json.with_suffix(".md")
    md.write_text(to_markdown(report))
    return out_json, md


INDEX_BEGIN, INDEX_END = "<!-- evaluation:begin -->", "<!-- evaluation:end -->"


def embed_in_index(report: Mapping[str, Any], results_dir: str | pathlib.Path) -> pathlib.Path | None:
    """Puts the report's headline table (fidelity beside personalization and the oracle) at the top of the results'
    index.html, replacing the one of an earlier evaluation; returns the page, or None if there is none."""
    page = pathlib.Path(results_dir) / "index.html"
    if not page.is_file():
        return None
    metrics = {k: v for k, v in report["metrics"].items() if k not in set(report.get("random_weight_metrics", ()))}
    cols = _headline_cols(metrics, set(metrics))
    esc = lambda t: str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    head = "".join(f"<th>{esc(g)}<br>{esc(lab)}</th>" for g, lab, _ in cols)
    row = "".join(f"<td>{esc(v)}</td>" for _, _, v in cols)
    block = (f"{INDEX_BEGIN}<h2>Evaluation</h2><table border='1' style='border-collapse:collapse'>"
             f"<tr><th>model</th>{head}</tr><tr><td>{esc(report['model'])}</td>{row}</tr></table>"
             "<p>Fidelity (FID, its ratio to random real items, the oracle's re-render error) is shown beside the "
             f"personalization figures on purpose: tune neither alone. Full tables: report.md.</p>{INDEX_END}")
    html = page.read_text(encoding="utf-8")
    if INDEX_BEGIN in html and INDEX_END in html:
        html = html[:html.index(INDEX_BEGIN)] + block + html[html.index(INDEX_END) + len(INDEX_END):]
    elif "</h1>" in html:
        html = html.replace("</h1>", "</h1>" + block, 1)
    else:
        html = block + html
    page.write_text(html, encoding="utf-8")
    return page
