"""Benchmark: CLIP image embeddings (images/s) on CPU, JAX (jit) vs open_clip's torch `VisionTransformer`, side by side.

Both towers have the same random weights (ours converted from the torch state dict) and the same CLIP-normalised
224x224 inputs (network only, preprocessing excluded on both sides); prints images/s per batch size, the JAX/torch
ratio and the max |diff| of the embeddings. Default config = the "small" preset (ViT, patch 16, width 384, 6 layers,
6 heads), small but not tiny; `--preset vit_h_14` runs the real architecture (slow on CPU).

    .venv/bin/python benchmarks/eval_clip.py --batch-sizes 8 32 --iters 3
Needs open-clip-torch==3.3.0 installed with --no-deps (see dualfashion_jax/reference/open_clip_ref.py).
"""
from __future__ import annotations

import argparse
import os
import platform

import numpy as np

from timing import median_seconds

from dualfashion_jax.core import host_memory

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv: list[str] | None = None) -> int:
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from dualfashion_jax.core import params as core_params
    from dualfashion_jax.evaluators.nets import clip_weights as oc_conv
    from dualfashion_jax.evaluators.nets import clip_text, clip_vit
    from dualfashion_jax.reference import open_clip_ref

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", choices=sorted(clip_text.PRESETS))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="also time JAX with bf16 compute")
    args = p.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")

    vc = clip_text.get_config(args.preset).vision
    oc = open_clip_ref.load()
    torch.manual_seed(0)
    ref = oc["transformer"].VisionTransformer(vc.image_size, vc.patch_size, vc.width, vc.layers, vc.heads,
                                              vc.mlp_dim / vc.width, output_dim=vc.output_dim).eval()
    flat = {k[len("visual/"):]: v for k, v in oc_conv.convert_state_dict(
        {f"visual.{k}": v.numpy() for k, v in ref.state_dict().items()}).items()}
    variants = [("fp32", jnp.float32)] + ([("bf16", jnp.bfloat16)] if args.bf16 else [])
    models = {}
    for name, dtype in variants:
        import dataclasses

        m = nnx.eval_shape(lambda: clip_vit.VisionTransformer(dataclasses.replace(vc, dtype=dtype), rngs=nnx.Rngs(0)))
        core_params.load_flat_into(m, flat, source="open_clip VisionTransformer")
        models[name] = m
    print(f"# CLIP image tower ({args.preset}: {vc.image_size}px, patch {vc.patch_size}, width {vc.width}, "
          f"{vc.layers} layers), CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print("| batch | torch img/s | " + " | ".join(f"JAX {n} img/s | JAX {n}/torch" for n, _ in variants) +
          " | max abs diff (fp32) |")
    print("|---|---|" + "---|---|" * len(variants) + "---|")
    for bs in args.batch_sizes:
        x = np.random.default_rng(bs).normal(size=(bs, vc.image_size, vc.image_size, 3)).astype(np.float32)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        with torch.inference_mode():
            t_torch = median_seconds(lambda: ref(xt), args.iters)
            want = ref(xt).numpy()
        cells, diff = [], None
        for name, _ in variants:
            graphdef, state = nnx.split(models[name])
            fn = jax.jit(lambda s, a: nnx.merge(graphdef, s)(a))
            xj = jnp.asarray(x)
            t_jax = median_seconds(lambda: fn(state, xj).block_until_ready(), args.iters)
            if name == "fp32":
                diff = float(np.abs(np.asarray(fn(state, xj)) - want).max())
            cells.append(f"{bs / t_jax:.1f} | {t_torch / t_jax:.2f}x")
        print(f"| {bs} | {bs / t_torch:.1f} | " + " | ".join(cells) + f" | {diff:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
