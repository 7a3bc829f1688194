"""`dualfashion-jax convert {transformer,vae,t5,clip,compat} SRC OUT`: PyTorch/diffusers/transformers weights -> orbax.

Each target's converter is imported only when used. Bad input ends with one clear message (exit 1; exit 2 for a
torch file holding pickled Python objects, which is refused unread), not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from dualfashion_jax.conversion.common import UnsafePickleError
from dualfashion_jax.core.params import ConversionError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualfashion-jax convert",
                                description="Convert a PyTorch checkpoint to a torch-free orbax checkpoint.")
    sub = p.add_subparsers(dest="target", required=True)
    t = sub.add_parser("transformer", help="DualFashion/diffusers SD3 joint transformer (safetensors file or folder)")
    t.add_argument("src", help="weights file, safetensors folder, diffusers transformer/ folder or pipeline export")
    t.add_argument("out", help="output folder (must not hold a converted checkpoint yet)")
    t.add_argument("--config", default=None, help="diffusers config.json (default: the one next to the weights)")
    t.add_argument("--stage2-variant", choices=("mlp", "gor_projector"), default=None,
                   help="stage-2 offset network to build (default: whichever the checkpoint holds)")
    v = sub.add_parser("vae", help="SD3 16-channel AutoencoderKL (diffusers folder or weights file)")
    v.add_argument("src")
    v.add_argument("out")
    t5 = sub.add_parser("t5", help="T5 v1.1 encoder (transformers folder or weights file)")
    t5.add_argument("src")
    t5.add_argument("out")
    t5.add_argument("--mask-emb", default=None, help="aligned mask embedding (.pth/.pt/.safetensors) for row <extra_id_0>")
    t5.add_argument("--mask-token-id", type=int, default=32099,
                    help="embedding row of <extra_id_0> in the tokenizer (32099 for the real T5 vocabulary)")
    c = sub.add_parser("clip", help="open_clip ViT (image + text towers) state dict, e.g. ViT-H-14 laion2b_s32b_b79k")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--vision-heads", type=int, default=None, help="image-tower heads (default: open_clip's convention)")
    c.add_argument("--text-heads", type=int, default=None, help="text-tower heads (default: open_clip's convention)")
    k = sub.add_parser("compat", help="DiFashion outfit compatibility evaluator (FashionEvaluator .pth)")
    k.add_argument("src")
    k.add_argument("out")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.target == "transformer":
            mod = importlib.import_module("dualfashion_jax.conversion.mmdit")
            out = mod.convert(args.src, args.out, config=args.config, stage2_variant=args.stage2_variant)
        elif args.target == "vae":
            out = importlib.import_module("dualfashion_jax.conversion.vae").convert(args.src, args.out)
        elif args.target == "t5":
            out = importlib.import_module("dualfashion_jax.conversion.t5").convert(
                args.src, args.out, mask_emb=args.mask_emb, mask_token_id=args.mask_token_id)
        elif args.target == "clip":
            out = importlib.import_module("dualfashion_jax.evaluators.nets.clip_weights").convert(
                args.src, args.out, vision_heads=args.vision_heads, text_heads=args.text_heads)
        else:
            out = importlib.import_module("dualfashion_jax.evaluators.nets.compat_weights").convert(args.src, args.out)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"dualfashion-jax convert {args.target}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UnsafePickleError) else 1
    print(f"wrote {out}")
    return 0
