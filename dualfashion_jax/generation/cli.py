"""`dualfashion-jax generate`: PFITB or GOR for every row of a split, resumable (rerun the same command).

  dualfashion-jax generate --task pfitb --checkpoint WORKDIR --split test --out results/pfitb \
      [--data DIR] [--num-images K] [--num-captions 1] [--seed 0] [--steps 28] [--shift 3] \
      [--guidance four_way|cfg|none] [--scales 8,7,8] [--guidance-interval 0,1] [--caption-steps 64] \
      [--rows-per-batch 4] [--max-rows K] \
      [--ema/--no-ema] [--param-sharding dp|fsdp] [--template budget|ground_truth] [--caption-cond original|train] \
      [--context-sample] [--gor-offset mlp|projector] [--original-layout]
Multi-host: start one process per host with --coordinator/--num-processes/--process-id (or the JAX_* / SLURM
variables, as `train`); rows are dealt round-robin over processes and --out must be a shared folder.
Bad input ends with one `error:` line naming the file/field (exit 1; exit 2 for an --out that is a file or a
foreign non-empty folder, checked before anything loads), not a traceback.
"""
from __future__ import annotations

import argparse
import sys

from dualfashion_jax.generation.settings import CAPTION_CONDS, DEFAULT_NUM_IMAGES, GOR_OFFSETS, TASKS
from dualfashion_jax.samplers.flow_euler import GUIDANCE_MODES
from dualfashion_jax.samplers.templates import TEMPLATE_SOURCES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualfashion-jax generate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--checkpoint", required=True, help="training workdir, or converted {transformer,t5,vae,tokenizer}")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="results dir (rerun to resume)")
    p.add_argument("--data", default=None, help="dataset dir (default: the training config's)")
    p.add_argument("--t5", default=None, help="converted T5 dir (overrides the checkpoint's)")
    p.add_argument("--vae", default=None, help="converted VAE dir (overrides the checkpoint's)")
    p.add_argument("--tokenizer", default=None, help="T5 tokenizer dir (overrides the checkpoint's)")
    p.add_argument("--num-images", type=int, default=None,
                   help="images per blank (GOR: samples per outfit); default pfitb 2 (LPIPS diversity needs >= 2; the "
                        "original used 1), gor 5 (the original's)")
    p.add_argument("--num-captions", type=int, default=1, help="captions per blank (GOR: per generated item)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=28, help="Euler steps")
    p.add_argument("--shift", type=float, default=3.0, help="SD3 schedule shift")
    p.add_argument("--guidance", choices=GUIDANCE_MODES, default="four_way")
    p.add_argument("--scales", default="8,7,8", help="four_way: text,context,preference; cfg: one scale")
    p.add_argument("--guidance-interval", default="0,1",
                   help="lo,hi: guide only the steps with lo <= sigma <= hi (the fully conditional branch elsewhere)")
    p.add_argument("--caption-steps", type=int, default=64)
    p.add_argument("--template", choices=TEMPLATE_SOURCES, default="budget",
                   help="caption template: GT-free length budget, or the original GT-item template")
    p.add_argument("--caption-cond", choices=CAPTION_CONDS, default="original",
                   help="caption conditioning: [pref, sent, T5(template)] (original) or [pref, sent] (training)")
    p.add_argument("--mask-padding", action="store_true", help="original caption prior (also masks padding)")
    p.add_argument("--context-sample", action="store_true", help="sample context latents (original) instead of the mean")
    p.add_argument("--match-train-input", action="store_true",
                   help="train-consistent image input (spec 7.2 item 7); the default now, kept for older scripts")
    p.add_argument("--guidance-space", choices=("x0", "velocity"), default=None,
                   help="space the guidance branches are mixed in (default x0, as training supervises; velocity: "
                        "the original)")
    p.add_argument("--original-guidance", action="store_true",
                   help="the original image sampler: input x + lam c (no (1-lam), no r_t), branches mixed in velocity "
                        "space (default: train input (1-lam)(x + (1-sigma) r_t) + lam m c, mixed in x0 space)")
    p.add_argument("--gor-offset", choices=GOR_OFFSETS, default="mlp")
    p.add_argument("--rows-per-batch", type=int, default=4,
                   help="rows per jitted call per process (rounded up to a multiple of its devices)")
    p.add_argument("--param-sharding", choices=("dp", "fsdp"), default="dp",
                   help="dp: params replicated on every device; fsdp: model width sharded over all devices")
    p.add_argument("--max-rows", type=int, default=None, help="only rows [0, K) of the split")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="EMA params of a workdir")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="compute dtype override")
    p.add_argument("--original-layout", action="store_true", help="also write the original gen.npy/grd.npy")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--coordinator", default=None, help="multi-host: coordinator host:port (or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: or JAX_NUM_PROCESSES")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: or JAX_PROCESS_ID")
    return p


def settings_from_args(args):
    """GenSettings from parsed flags (validates --scales against --guidance)."""
    from dualfashion_jax.generation.settings import GenSettings
    from dualfashion_jax.samplers.flow_euler import GuidanceConfig

    try:
        scales = [float(x) for x in args.scales.split(",")]
    except ValueError:
        raise ValueError(f"--scales {args.scales!r}: expected comma-separated numbers") from None
    try:
        interval = tuple(float(x) for x in args.guidance_interval.split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval {args.guidance_interval!r}: expected two numbers lo,hi") from None
    if len(interval) != 2:
        raise ValueError(f"--guidance-interval {args.guidance_interval!r}: expected two numbers lo,hi")
    if args.original_guidance and args.match_train_input:
        raise ValueError("--original-guidance uses the original input x + lam c; it excludes --match-train-input")
    space = args.guidance_space or ("velocity" if args.original_guidance else "x0")
    g = {"mode": args.guidance, "num_steps": args.steps, "shift": args.shift,
         "match_train_input": not args.original_guidance, "space": space, "interval": interval}
    if args.guidance == "four_way":
        if len(scales) != 3:
            raise ValueError(f"--scales {args.scales!r}: four_way guidance needs 3 scales (text,context,preference)")
        g.update(text_scale=scales[0], context_scale=scales[1], preference_scale=scales[2])
    elif args.guidance == "cfg":
        if len(scales) != 1:
            raise ValueError(f"--scales {args.scales!r}: cfg guidance needs 1 scale")
        g.update(cfg_scale=scales[0])
    num_images = DEFAULT_NUM_IMAGES[args.task] if args.num_images is None else args.num_images
    return GenSettings(num_images=num_images, num_captions=args.num_captions, seed=args.seed,
                       guidance=GuidanceConfig(**g), caption_steps=args.caption_steps, template_source=args.template,
                       caption_cond=args.caption_cond, mask_padding=args.mask_padding,
                       context_sample=args.context_sample, gor_offset=args.gor_offset)


def main(argv: list[str]) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.scales == "8,7,8" and args.guidance == "cfg":
        args.scales = "7"
    from dualfashion_jax.core.params import ConversionError
    from dualfashion_jax.data.safe_io import FormatError
    from dualfashion_jax.generation.outputs import check_out_dir

    try:
        check_out_dir(args.out)
    except FileExistsError as e:
        print(f"dualfashion-jax generate: error: {e}", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
        from dualfashion_jax.training import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any other JAX call
        from dualfashion_jax.generation import bundle as bundle_lib, runner

        b = bundle_lib.load_bundle(args.checkpoint, ema=args.ema, data=args.data, t5=args.t5, vae=args.vae,
                                   tokenizer=args.tokenizer, dtype=args.dtype)
        summary = runner.run(args.task, b, settings, out=args.out, split=args.split, data_dir=args.data,
                             rows_per_batch=args.rows_per_batch, max_rows=args.max_rows,
                             progress=not args.no_progress, original_layout=args.original_layout,
                             param_sharding=args.param_sharding)
    except (ValueError, FileNotFoundError, KeyError, FormatError, ConversionError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dualfashion-jax generate: error: {msg}", file=sys.stderr)
        return 1
    print(f"{args.task}: {summary.rows} rows ({summary.generated} generated now, {summary.skipped} already done) "
          f"-> {summary.out}/records.json, {summary.out}/index.html")
    return 0
