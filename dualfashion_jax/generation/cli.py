"""`dualfashion-jax generate`: PFITB or GOR for every row of a split, resumable (rerun the same command).

  dualfashion-jax generate --task pfitb --checkpoint WORKDIR --split test --out results/pfitb \
      [--config configs/generate.py:pfitb] [--data DIR] [--num-images K] [--num-captions 1] [--seed 0] [--steps 28] [--shift 3] \
      [--guidance four_way|cfg|none] [--scales 8,7,8] [--guidance-interval 0,1] [--caption-steps 64] \
      [--rows-per-batch 4] [--max-rows K] \
      [--ema/--no-ema] [--param-sharding dp|fsdp] [--template budget|ground_truth] [--caption-cond original|train] \
      [--caption-image context|generated|null] [--caption-temperature 1] [--caption-order random|confidence] \
      [--caption-image-scale 0] [--caption-checkpoint STAGE3_WORKDIR] \
      [--context-sample] [--gor-offset mlp|projector] [--original-layout] [--dvbpr WORKDIR --dvbpr-eta 0.1]
  dualfashion-jax generate --task design --checkpoint WORKDIR --dvbpr DVBPR_WORKDIR --out results/design \
      [--strength 0.6] [--dvbpr-eta 1] [--guidance cfg|none] [--scales 4] [--steps 28] [--max-rows K]
Design (issue #17) edits each row's GT blank item toward the row's user with the DVBPR score term (no outfit
context, so cfg or no text guidance); its results are design.json + index.html (source, edited, score before/after).
Multi-host: start one process per host with --coordinator/--num-processes/--process-id (or the JAX_* / SLURM
variables, as `train`); rows are dealt round-robin over processes and --out must be a shared folder.
Bad input ends with one `error:` line naming the file/field (exit 1; exit 2 for an --out that is a file or a
foreign non-empty folder, checked before anything loads), not a traceback.
The sampling settings come from `configs/generate.py:TASK` (or --config); each of their flags overrides its field.
"""
from __future__ import annotations

import argparse
import sys

from dualfashion_jax.generation import settings as settings_lib
from dualfashion_jax.generation.settings import CAPTION_CONDS, CAPTION_IMAGES, GOR_OFFSETS, TASKS, GenSettings
from dualfashion_jax.samplers.flow_euler import GUIDANCE_MODES
from dualfashion_jax.samplers.masked_caption import ORDERS
from dualfashion_jax.samplers.templates import TEMPLATE_SOURCES


# flags that override the same-named field of the generation config (configs/generate.py)
CONFIG_FLAGS = ("num_images", "num_captions", "seed", "steps", "shift", "guidance", "scales", "guidance_interval",
                "caption_steps", "template", "caption_cond", "caption_image", "caption_temperature", "caption_order",
                "caption_image_scale", "caption_image_keys", "mask_padding", "context_sample", "match_train_input",
                "guidance_space", "original_guidance", "gor_offset", "dvbpr_eta")
DESIGN_TASK = "design"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualfashion-jax generate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS + (DESIGN_TASK,))
    p.add_argument("--checkpoint", required=True, help="training workdir, or converted {transformer,t5,vae,tokenizer}")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="results dir (rerun to resume)")
    p.add_argument("--config", default=None, help="sampling settings FILE.py[:arg] (default configs/generate.py:TASK); "
                   "the flags below marked 'config' override its fields")
    p.add_argument("--data", default=None, help="dataset dir (default: the training config's)")
    p.add_argument("--t5", default=None, help="converted T5 dir (overrides the checkpoint's)")
    p.add_argument("--vae", default=None, help="converted VAE dir (overrides the checkpoint's)")
    p.add_argument("--tokenizer", default=None, help="T5 tokenizer dir (overrides the checkpoint's)")
    # config fields (default None: the config's value; see configs/generate.py for the defaults and their reasons)
    p.add_argument("--num-images", type=int, help="config: images per blank (GOR: samples per outfit); pfitb 2, gor 5")
    p.add_argument("--num-captions", type=int, help="config: captions per blank (GOR: per generated item); 1")
    p.add_argument("--seed", type=int, help="config: 0")
    p.add_argument("--steps", type=int, help="config: Euler steps; 28")
    p.add_argument("--shift", type=float, help="config: SD3 schedule shift; 3")
    p.add_argument("--guidance", choices=GUIDANCE_MODES, help="config: four_way")
    p.add_argument("--scales", help="config: four_way: text,context,preference; cfg: one scale; 8,7,8 (cfg: 7)")
    p.add_argument("--guidance-interval",
                   help="config: lo,hi: guide only the steps with lo <= sigma <= hi (the fully conditional branch "
                        "elsewhere); 0,1")
    p.add_argument("--caption-steps", type=int, help="config: 64")
    p.add_argument("--template", choices=TEMPLATE_SOURCES,
                   help="config: caption template: GT-free length budget, or the original GT-item template; budget")
    p.add_argument("--caption-cond", choices=CAPTION_CONDS,
                   help="config: caption conditioning: [pref, sent, T5(template)] (original) or [pref, sent] "
                        "(training); original")
    p.add_argument("--caption-image", choices=CAPTION_IMAGES,
                   help="config: the caption branch's image stream: context mean (original), the blank's own "
                        "generated image, or null tokens; context")
    p.add_argument("--caption-temperature", type=float,
                   help="config: caption tokens drawn from p^(1/T); 0 = argmax tokens; 1 (original)")
    p.add_argument("--caption-order", choices=ORDERS,
                   help="config: caption unmasking order: the original random race, or most probable first; random")
    p.add_argument("--caption-image-scale", type=float,
                   help="config: caption guidance toward the image stream vs the null tokens (2 passes); 0 = off")
    p.add_argument("--caption-image-keys",
                   help="config: the caption values that --caption-image-scale guides: all, or comma-separated keys "
                        "(e.g. Color; budget template); all")
    p.add_argument("--caption-checkpoint", default=None,
                   help="a stage-3 workdir whose model and T5 write the captions (same tokenizer and latents; "
                        "default: --checkpoint's)")
    p.add_argument("--mask-padding", action="store_true", default=None,
                   help="config: original caption prior (also masks padding)")
    p.add_argument("--context-sample", action="store_true", default=None,
                   help="config: sample context latents (original) instead of the mean")
    p.add_argument("--match-train-input", action="store_true", default=None,
                   help="config: train-consistent image input (spec 7.2 item 7); the default now, kept for older "
                        "scripts")
    p.add_argument("--guidance-space", choices=("x0", "velocity"),
                   help="config: space the guidance branches are mixed in (default x0, as training supervises; "
                        "velocity: the original)")
    p.add_argument("--original-guidance", action="store_true", default=None,
                   help="config: the original image sampler: input x + lam c (no (1-lam), no r_t), branches mixed in "
                        "velocity space (default: train input (1-lam)(x + (1-sigma) r_t) + lam m c, mixed in x0 space)")
    p.add_argument("--gor-offset", choices=GOR_OFFSETS, help="config: mlp")
    p.add_argument("--dvbpr", default=None, help="trained DVBPR workdir (configs/dvbpr.py): its user score guides "
                   "the sampler (--dvbpr-eta); required by --task design")
    p.add_argument("--dvbpr-eta", type=float,
                   help="config: DVBPR preference guidance weight (0 = off, the plain sampler); design default 1")
    p.add_argument("--strength", type=float, default=0.6,
                   help="design: share of the schedule re-run from the noised source item (1 = from pure noise)")
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


def settings_from_args(args) -> GenSettings:
    """GenSettings from the task's generation config with the given flags applied over it."""
    c = settings_lib.load_config(args.task, args.config)
    for name in CONFIG_FLAGS:
        if getattr(args, name) is not None:
            c[name] = getattr(args, name)
    return settings_lib.from_config(c)


def design_settings_from_args(args):
    """DesignSettings: steps/shift/seed/interval from the pfitb config and flags; cfg text guidance (scale 4 unless
    --scales); eta from --dvbpr-eta (default 1)."""
    from dualfashion_jax.generation.design import DesignSettings
    from dualfashion_jax.samplers.score_guidance import ScoreGuidanceConfig

    if args.guidance == "four_way":
        raise ValueError("--task design has no outfit context: use --guidance cfg (default) or none")
    args = argparse.Namespace(**{**vars(args), "task": "pfitb", "guidance": args.guidance or "cfg",
                                 "scales": args.scales or "4"})
    s = settings_from_args(args)
    eta = 1.0 if args.dvbpr_eta is None else float(args.dvbpr_eta)
    return DesignSettings(strength=args.strength, score=ScoreGuidanceConfig(eta=eta), guidance=s.guidance,
                          seed=s.seed)


def _load_dvbpr(path: str | None, needed: bool, what: str):
    """(model, provenance) of --dvbpr, or (None, None) when it is not needed; a missing --dvbpr names `what`."""
    if not needed:
        return None, None
    if path is None:
        raise ValueError(f"{what} needs --dvbpr WORKDIR (a trained DVBPR workdir, configs/dvbpr.py)")
    from dualfashion_jax.modeling.dvbpr import load_dvbpr

    model, step = load_dvbpr(path)
    return model, {"source": str(path), "step": step, "input_kind": model.cfg.input_kind}


def main(argv: list[str]) -> int:
    p = _parser()
    args = p.parse_args(argv)
    from dualfashion_jax.core.params import ConversionError
    from dualfashion_jax.data.safe_io import FormatError
    from dualfashion_jax.generation.outputs import check_out_dir

    try:
        check_out_dir(args.out)
    except FileExistsError as e:
        print(f"dualfashion-jax generate: error: {e}", file=sys.stderr)
        return 2
    try:
        design = args.task == DESIGN_TASK
        settings = design_settings_from_args(args) if design else settings_from_args(args)
        from dualfashion_jax.training import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any other JAX call
        from dualfashion_jax.generation import bundle as bundle_lib, runner

        b = bundle_lib.load_bundle(args.checkpoint, ema=args.ema, data=args.data, t5=args.t5, vae=args.vae,
                                   tokenizer=args.tokenizer, dtype=args.dtype)
        if args.caption_checkpoint:
            cap = bundle_lib.load_bundle(args.caption_checkpoint, ema=args.ema, data=args.data, dtype=args.dtype)
            b = bundle_lib.with_captioner(b, cap)
        dv, dv_info = _load_dvbpr(args.dvbpr, design or settings.score.eta > 0,
                                  "--task design" if design else f"--dvbpr-eta {settings.score.eta}")
        if design:
            from dualfashion_jax.generation.design_run import run_design

            summary = run_design(b, dv, settings, out=args.out, split=args.split, data_dir=args.data,
                                 rows_per_batch=args.rows_per_batch, max_rows=args.max_rows,
                                 progress=not args.no_progress, dvbpr_info=dv_info)
        else:
            summary = runner.run(args.task, b, settings, out=args.out, split=args.split, data_dir=args.data,
                                 rows_per_batch=args.rows_per_batch, max_rows=args.max_rows,
                                 progress=not args.no_progress, original_layout=args.original_layout,
                                 param_sharding=args.param_sharding, dvbpr=dv, dvbpr_info=dv_info)
    except (ValueError, FileNotFoundError, KeyError, FormatError, ConversionError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dualfashion-jax generate: error: {msg}", file=sys.stderr)
        return 1
    print(f"{args.task}: {summary.rows} rows ({summary.generated} generated now, {summary.skipped} already done) "
          f"-> {summary.out}/{'design.json' if design else 'records.json'}, {summary.out}/index.html")
    return 0
