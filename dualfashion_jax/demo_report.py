"""The demo's reports: the acceptance summary (personalization beside fidelity, captions) and OUT/README.md."""
from __future__ import annotations

import pathlib


def personalization_summary(reports: dict) -> str:
    """The demo's acceptance figures per task: oracle category match, preferred-colour hit rate vs chance, and the
    captions' parse / vocabulary / colour agreement rates."""
    lines = ["## Personalization (oracle) beside fidelity", "",
             "| task | category match | preferred colour | chance | lift | FID / random real | render error (GT) |",
             "|---|---|---|---|---|---|---|"]
    for task, rep in reports.items():
        m = rep.get("metrics", {})
        o, fr, of = m.get("oracle", {}), m.get("fid_ratio", {}), m.get("oracle_fidelity", {})
        f = {k: o.get(f"oracle_{k}", float("nan")) for k in ("category_acc", "pref_colour_match",
                                                               "pref_colour_chance", "pref_colour_lift")}
        ratio = f"{fr['fid_ratio']:.2f}x ({fr['fid']:.1f} / {fr['fid_random_real']:.1f})" if fr else "-"
        render = (f"{of['oracle_render_err']:.1f} ({of['oracle_render_err_real']:.1f})" if of else "-")
        lines.append(f"| {task.upper()} | {f['category_acc']:.1%} | {f['pref_colour_match']:.1%} | "
                     f"{f['pref_colour_chance']:.1%} | {f['pref_colour_lift']:.2f}x | {ratio} | {render} |")
    lines += ["", "## Captions (oracle)", "", "| task | parse | value in its key's vocabulary | colour = image's "
              "oracle colour | colour = preference | chance | lift |", "|---|---|---|---|---|---|---|"]
    for task, rep in reports.items():
        m = rep.get("metrics", {})
        c = {**m.get("caption_oracle", {}), "parse": m.get("oracle", {}).get("oracle_caption_parse_rate")}
        f = {k: float("nan") if c.get(k) is None else c[k] for k in (
            "parse", "caption_value_in_vocab", "caption_colour_image", "caption_pref_colour_match",
            "caption_pref_colour_chance", "caption_pref_colour_lift")}
        lines.append(f"| {task.upper()} | {f['parse']:.1%} | {f['caption_value_in_vocab']:.1%} | "
                     f"{f['caption_colour_image']:.1%} | {f['caption_pref_colour_match']:.1%} | "
                     f"{f['caption_pref_colour_chance']:.1%} | {f['caption_pref_colour_lift']:.2f}x |")
    return "\n".join(lines)


def write_readme(out: pathlib.Path, timings: dict, table: str, summary: str, t5: str) -> None:
    """OUT/README.md: where every artefact is, the phase timings and the evaluation tables."""
    t5_text = ("pretrained with span corruption on the demo texts, `t5/`" if t5 == "pretrained"
               else "seeded random init")
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.items())
    (out / "README.md").write_text(f"""# DualFashion-JAX offline demo

Produced by `dualfashion-jax demo --out {out}` (see docs/demo.md). Everything is on the built-in synthetic
dataset with stand-in encoders: a space-to-depth pixel autoencoder for the SD3 VAE and a frozen `small_demo` T5
({t5_text}) with a tokenizer trained on the demo texts. Rerunning the command skips finished phases.

| where | what |
|---|---|
| `data/` | synthetic dataset (safe format), `data/truth/` oracle ground truth, `data/latents/` stand-in VAE latents |
| `vae/` | the stand-in VAE (converted-VAE format, architecture `pixel_s2d`: PCA encode / decode + a learned decoder head) |
| `tokenizer/` | sentencepiece tokenizer with T5's id layout (`<extra_id_0>` = MASK) |
| `t5/` | the stand-in T5 encoder (converted-T5 format; absent with `--t5 random`) |
| `stage1/` .. `stage3/` | `checkpoints/`, `metrics.jsonl`, TensorBoard, `loss_curve.png`, `frozen/t5` (random T5) |
| `generations/{{pfitb,gor}}/` | images, captions, `records.json`, `index.html`, `report.json`, `report.md` |
| `plan.json`, `timings.json` | the demo settings and each phase's wall time |
| `.jax_cache/` | the compiled XLA programs (a rerun or resume loads them; safe to delete) |

## Wall time (s)

| phase | seconds |
|---|---|
{rows}

## Evaluation

{table}

{summary}
""")
