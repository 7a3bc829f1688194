"""`dualfashion-jax demo --out OUT [--fast | --quality]`: the whole pipeline offline on the built-in synthetic dataset.

Phases (OUT/phases.json records what each was built from: a rerun skips finished ones, resumes an interrupted one and
redoes, after moving its old output to OUT/stale/, any phase whose inputs changed; OUT/plan.json ties OUT to one plan):
  data       `data make-demo` equivalent: OUT/data (safe format + oracle truth)
  vae        the stand-in VAE (space-to-depth pixel autoencoder, models/pixel_ae.py) fitted to the images'
             mean/std, its learned decoder head fitted as a latent denoiser (training/pixel_refiner.py), saved as a
             converted VAE (OUT/vae), and `encode-latents` -> OUT/data/latents
  tokenizer  a sentencepiece tokenizer with T5's id layout trained on the demo texts -> OUT/tokenizer
  t5         `--t5 pretrained` (the full sizes' default is the random T5, configs/demo.py): a `small_demo` T5 v1.1
             encoder-decoder pretrained with span corruption on the demo texts, its encoder saved as a converted
             T5 -> OUT/t5
  stage1..3  `train` with configs/stage{1,2,3}.py:demo,out=OUT -> OUT/stage{1,2,3} (t5.checkpoint = OUT/t5;
             with the random T5 it is saved by training to OUT/stage*/frozen/t5)
  generate   PFITB and GOR for the whole test split from the stage-3 workdir -> OUT/generations/{pfitb,gor}
  evaluate   oracle + network metrics per task -> OUT/generations/<task>/report.{json,md}; table printed
OUT/README.md says where everything is; OUT/timings.json has each phase's wall time. SIGTERM / SIGINT stop the
whole demo (exit 143 / 130) after the running stage saved a checkpoint; rerun the same command to resume.
The settings live in configs/demo.py and configs/stage{1,2,3}.py (sizes demo, demo_quality, demo_fast;
`DemoPlan` is their view); they were tuned on a 2-core CPU, see docs/demo.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from typing import Callable

from dualfashion_jax import demo_report, demo_state
from dualfashion_jax.core import compile_cache, config as config_lib
from dualfashion_jax.demo_plan import T5_ENCODERS, DemoPlan


# --------------------------------------------------------------------------------------------------- phases
def make_data(out: pathlib.Path, plan: DemoPlan) -> pathlib.Path:
    """The built-in synthetic dataset (skipped when OUT/data/meta.json exists)."""
    from dualfashion_jax.data.synthetic.make import make_dataset

    data = out / "data"
    if (data / "meta.json").is_file():
        return data
    return make_dataset(data, seed=0, image_size=plan.image_size, num_users=plan.num_users, verbose=True)


def make_vae(out: pathlib.Path, plan: DemoPlan) -> pathlib.Path:
    """Pixel-autoencoder VAE stand-in (+ its refiner) fitted to the images, saved to OUT/vae; latents via
    `encode_dataset` (encode is linear: the refiner changes only decoding)."""
    import numpy as np

    from dualfashion_jax.data import encode_latents
    from dualfashion_jax.data.format import SafeDataset
    from dualfashion_jax.data.images import ItemImages
    from dualfashion_jax.models import pixel_ae
    from dualfashion_jax.training import pixel_refiner

    data, vae_dir = out / "data", out / "vae"
    if not (vae_dir / "config.json").is_file():
        ds = SafeDataset(data)
        iids = [i for i in range(1, ds.num_items + 1) if ds.image_paths[i]]
        images = ItemImages(ds).many(np.asarray(iids))  # [N, S, S, 3] uint8
        refiner = dict(plan.vae_refiner)
        cfg = pixel_ae.PixelAEConfig(factor=plan.vae_factor, sample_size=plan.image_size, basis=plan.vae_basis,
                                     latent_channels=plan.vae_channels, refiner_width=refiner.pop("width", 0),
                                     refiner_depth=refiner.pop("depth", 0))
        ae = pixel_ae.fit(cfg, images)
        if ae.refiner is not None:  # the learned decoder head, fitted on the same catalogue images as the basis
            pixel_refiner.fit_refiner(ae, images, pixel_refiner.RefinerFit(**refiner))
        pixel_ae.save(ae, vae_dir)
    if not (data / "latents" / "latents.npy").is_file():
        ae = encode_latents.load_vae(vae_dir)  # the same loader as `dualfashion-jax encode-latents --vae`
        encode_latents.encode_dataset(data, ae, mode="mean", batch_size=64, vae_name=str(vae_dir))
    return vae_dir


def make_tokenizer(out: pathlib.Path, plan: DemoPlan) -> pathlib.Path:
    """A T5-layout sentencepiece tokenizer trained on every text the demo tokenizes (captions, prefs, sentences)."""
    from dualfashion_jax.text import tokenizer as tk

    tok_dir = out / "tokenizer"
    if (tok_dir / "spiece.model").is_file():
        return tok_dir
    texts = demo_texts(out / "data")
    tk.build_test_tokenizer(texts, tok_dir, vocab_size=plan.vocab_size, max_length=plan.max_length, model_type="bpe",
                            user_symbols=fixed_phrases(texts))
    return tok_dir


def demo_texts(data: pathlib.Path) -> list[str]:
    """Every text the demo tokenizes: item captions, preferences (all splits), stage-1 captions and re-captions,
    category sentences, the empty caption."""
    from dualfashion_jax.data.format import SafeDataset, sentence_text
    from dualfashion_jax.text import tokenizer as tk

    ds = SafeDataset(data)
    texts = [tk.caption_json(v["elements"]) for v in ds.item_info.values()]
    for split in ("train", "valid", "test"):
        for per_user in ds.preference(split).values():
            texts += [tk.caption_json(v.get("Frequency", {})) for v in per_user.values()]
    texts += [t for r in ds.stage1 for t in (r["caption"], r["re_caption"])] if ds.has_text("stage1.json") else []
    return texts + [sentence_text(name) for name in ds.categories.values()] + [tk.caption_json({})]


def fixed_phrases(texts: list[str]) -> list[str]:
    """The demo texts' fixed parts, one token each: the caption JSON scaffolding of every key they use and the
    category sentence's two halves (its tail "on white background." also ends every stage-1 re-caption)."""
    from dualfashion_jax.data.format import sentence_text
    from dualfashion_jax.text import tokenizer as tk

    keys = dict.fromkeys(tk.CAPTION_KEYS)
    for t in texts:
        if t.startswith("{"):
            try:
                keys.update(dict.fromkeys(json.loads(t)))
            except json.JSONDecodeError:
                pass
    head, tail = (part.strip() for part in sentence_text("\0").split("\0"))
    return tk.caption_scaffold(keys) + [head, tail, tail.split(",")[-1].strip()]


def make_t5(out: pathlib.Path, plan: DemoPlan) -> pathlib.Path:
    """The stand-in T5: the plan's T5 v1.1 architecture pretrained with span corruption on the demo texts, its
    encoder saved as a converted T5 to OUT/t5 (written to OUT/t5.partial, then renamed)."""
    from dualfashion_jax.models import t5
    from dualfashion_jax.text import tokenizer as tk
    from dualfashion_jax.training import t5_pretrain

    t5_dir, partial = out / "t5", out / "t5.partial"
    if (t5_dir / "config.json").is_file():
        return t5_dir
    if partial.exists():  # this phase's own unfinished output
        shutil.rmtree(partial)
    tok = tk.CaptionTokenizer.from_pretrained(out / "tokenizer", max_length=plan.max_length)
    opts = dict(plan.t5_pretrain)
    pcfg = t5_pretrain.PretrainConfig(warmup_steps=min(50, opts["steps"] // 10), **opts)
    cfg = t5.get_config(plan.t5_preset, vocab_size=tok.vocab_size)
    s = t5_pretrain.train_and_save(demo_texts(out / "data"), tok, cfg, pcfg, partial)
    partial.replace(t5_dir)
    print(f"t5: {pcfg.steps} steps on {s['texts']} texts, loss {s['loss_first10']:.3f} -> {s['loss_last10']:.3f}; "
          f"cosine between masked caption slots {s['masked_slot_cosine']:.4f}")
    return t5_dir


def stage_config(out: pathlib.Path, plan: DemoPlan, stage: int):
    """configs/stage{n}.py at the plan's size, reading and writing under OUT (the frozen T5: OUT/t5 when pretrained)."""
    i = stage - 1
    c = config_lib.load(f"stage{stage}.py:{plan.size},out={out},steps={plan.steps[i]},batch={plan.batch[i]}")
    if plan.t5 == "pretrained":
        c.t5.checkpoint = str(out / "t5")
    return c


def train_stage(out: pathlib.Path, plan: DemoPlan, stage: int) -> pathlib.Path:
    """Trains one stage (skipped when its final checkpoint exists; an interrupted stage resumes)."""
    from dualfashion_jax.training import train

    wd = out / f"stage{stage}"
    if (wd / "checkpoints" / str(plan.steps[stage - 1])).is_dir():
        return wd
    res = train.run(stage_config(out, plan, stage), str(wd))
    if res["exit"] != "done":  # SIGTERM / SIGINT: the stage saved its checkpoint; later stages must not start
        raise demo_state.DemoInterrupted(res["exit"].upper(), f"stage{stage}")
    print(f"stage {stage}: step {res['step']}, last loss {res['metrics'].get('loss', float('nan')):.4f}; "
          f"loss curve {res['loss_curve']}")
    return wd


def generate(out: pathlib.Path, plan: DemoPlan, task: str) -> pathlib.Path:
    """`dualfashion-jax generate` on the test split from the final (stage-3) workdir; resumes in the results dir."""
    res = out / "generations" / task
    argv = ["generate", "--task", task, "--checkpoint", str(out / "stage3"), "--split", "test", "--out", str(res),
            "--data", str(out / "data"), "--steps", str(plan.image_steps), "--caption-steps", str(plan.caption_steps),
            "--guidance", plan.guidance, "--scales", plan.scales, "--rows-per-batch", str(plan.rows_per_batch),
            "--num-images", str(plan.num_images)]
    rows = plan.gor_rows if task == "gor" else plan.gen_rows
    if rows:
        argv += ["--max-rows", str(rows)]
    if plan.match_train_input:
        argv += ["--match-train-input"]
    argv += ["--caption-cond", plan.caption_cond, "--caption-image", plan.caption_image,
             "--caption-temperature", str(plan.caption_temperature), "--caption-order", plan.caption_order]
    if plan.caption_image_scale:
        argv += ["--caption-image-scale", str(plan.caption_image_scale), "--caption-image-keys",
                 plan.caption_image_keys]
    _cli(argv, f"generate {task}")
    return res


def evaluate(out: pathlib.Path, plan: DemoPlan, task: str, strict: bool = False) -> None:
    """`dualfashion-jax evaluate` on one task's results -> report.json / report.md beside them."""
    res = out / "generations" / task
    metrics = plan.metrics if task == "pfitb" else plan.gor_metrics
    _cli(["evaluate", "--results", str(res), "--task", task, "--data", str(out / "data"), "--metrics", metrics,
          "--collage-size", str(2 * plan.image_size), "--no-progress"] + (["--strict"] if strict else []),
         f"evaluate {task}")


def _cli(argv: list[str], what: str) -> None:
    from dualfashion_jax import cli

    rc = cli.main(argv)
    if rc:
        raise RuntimeError(f"demo: `dualfashion-jax {' '.join(argv)}` ({what}) exited with status {rc}")


# --------------------------------------------------------------------------------------------------- driver
Phase = tuple[str, tuple[str, ...], tuple[str, ...], Callable[[], object]]


def phases(out: pathlib.Path, plan: DemoPlan, strict: bool = False) -> list[Phase]:
    """(name, input phases, outputs under OUT, run) in order; `demo_state.Ledger` decides skip / resume / redo."""
    text = [("t5", ("data", "tokenizer"), ("t5",), lambda: make_t5(out, plan))] if plan.t5 == "pretrained" else []
    inputs = ("data", "vae", "tokenizer") + tuple(name for name, *_ in text)
    steps = [(f"stage{s}", inputs + ((f"stage{s - 1}",) if s > 1 else ()), (f"stage{s}",),
              lambda s=s: train_stage(out, plan, s)) for s in (1, 2, 3)]
    gens = [(f"generate_{t}", ("stage3",), (f"generations/{t}",), lambda t=t: generate(out, plan, t))
            for t in ("pfitb", "gor")]
    evals = [(f"evaluate_{t}", (f"generate_{t}",), (f"generations/{t}/report.json",),
              lambda t=t: evaluate(out, plan, t, strict)) for t in ("pfitb", "gor")]
    return [("data", (), ("data",), lambda: make_data(out, plan)),
            ("vae", ("data",), ("vae", "data/latents"), lambda: make_vae(out, plan)),
            ("tokenizer", ("data",), ("tokenizer",), lambda: make_tokenizer(out, plan))] + text + steps + gens + evals


def run(out: str | os.PathLike, plan: DemoPlan | None = None, *, log: Callable[[str], None] = print,
        strict: bool = False) -> dict:
    """Runs every phase in order (resumable, see demo_state); returns this run's {"timings": {phase: s}, "reports"}.

    `strict`: a metric that cannot be computed fails the demo (default: listed as not available). SIGTERM / SIGINT
    stop the whole demo (`DemoInterrupted`) after the running stage saved its checkpoint. OUT/timings.json keeps,
    per phase, the wall time of the run that built it."""
    out = pathlib.Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    plan = plan or DemoPlan.default()
    demo_state.claim_plan(out, plan.record())
    ledger = demo_state.Ledger(out, log)
    timings: dict[str, float] = {}
    current = {"phase": ""}

    def interrupt(num, _frame):
        raise demo_state.DemoInterrupted(signal.Signals(num).name, current["phase"])

    handlers = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        with compile_cache.scoped(out / ".jax_cache") as cache_dir:
            log(f"demo: compiled programs are cached in {cache_dir} (a rerun or resume loads them, not compiles)")
            for name, deps, outputs, fn in phases(out, plan, strict):
                current["phase"] = name
                if ledger.is_current(name, deps, outputs):
                    log(f"demo: {name}: done earlier from the same inputs (skipped)")
                    timings[name] = 0.0
                    continue
                log(f"\n{'=' * 24} demo: {name} {'=' * 24}")
                ledger.start(name, deps, outputs)
                t0 = time.perf_counter()
                fn()
                timings[name] = round(time.perf_counter() - t0, 1)
                ledger.finish(name)
                log(f"---- {name}: {timings[name]:.1f}s")
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
    timings["total"] = round(sum(timings.values()), 1)
    built = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}
    built.update({k: v for k, v in timings.items() if v or k not in built})  # skipped phases keep their time
    built["total"] = round(sum(v for k, v in built.items() if k != "total"), 1)
    (out / "timings.json").write_text(json.dumps(built, indent=2))
    reports = {t: json.loads((out / "generations" / t / "report.json").read_text()) for t in ("pfitb", "gor")}
    table = "\n\n".join((out / "generations" / t / "report.md").read_text().split("\n## Details")[0].strip()
                         for t in reports)
    summary = demo_report.personalization_summary(reports)
    log("\n" + table + "\n\n" + summary)
    demo_report.write_readme(out, built, table, summary, plan.t5)
    return {"timings": timings, "reports": reports}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dualfashion-jax demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (reused: finished phases are skipped)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fast", action="store_true", help="a tiny run (few users, steps and rows) for tests")
    size.add_argument("--quality", action="store_true",
                      help="the tuned full demo: 500 / 2500 / 20 steps (14-21 min with the install; default 10-14)")
    p.add_argument("--t5", choices=T5_ENCODERS, default=None,
                   help="the frozen text encoder: 'pretrained' (span corruption on the demo texts, OUT/t5) or "
                        "'random' (the seeded random init); default: configs/demo.py (random, --fast: pretrained)")
    p.add_argument("--strict", action="store_true", help="fail when a metric cannot be computed (default: the "
                   "table lists it as 'not available' with the reason)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = DemoPlan.fast() if a.fast else DemoPlan.quality() if a.quality else DemoPlan.default()
    if a.t5:
        plan = dataclasses.replace(plan, t5=a.t5)
    try:
        run(a.out, plan, strict=a.strict)
    except demo_state.DemoInterrupted as e:
        print(f"dualfashion-jax demo: {e}", file=sys.stderr)
        return 130 if e.signal_name == "SIGINT" else 143
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"dualfashion-jax demo: {e}", file=sys.stderr)
        return 1
    return 0
