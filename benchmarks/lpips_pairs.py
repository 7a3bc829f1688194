"""Benchmark (issue #20): LPIPS-VGG of N (generated, GT) pairs as `evaluate` computes it, before vs after vs PyTorch.

Same N random S px image pairs in [-1, 1] for every side, batches as `lpips_metrics.distance_to_gt` runs them:
  before: every 3x3 conv through `nnx.Conv` (XLA's convolution) and the default compile options
  after:  the forward `lpips_metrics.distance_to_gt` jits, as shipped (`lpips_vgg.conv3x3`: maps of side <= 2 as
          one GEMM; `inception_blocks.compiler_options()`)
  torch:  upstream `lpips.LPIPS(net='vgg', version='0.1')` with the same real weights, `torch.set_num_threads(2)`
`--convs` instead times one 3x3 conv per VGG stage shape, XLA's convolution vs the GEMM (the cause: XLA:CPU's
convolution on 2 x 2 maps). Sides interleaved per round; one warm-up call each; median (min-max), load average.

    python benchmarks/lpips_pairs.py --pairs 160 --size 32 64 --rounds 3
    python benchmarks/lpips_pairs.py --convs
Needs the LPIPS material (`bash scripts/test_material.sh`; torch and `lpips` for the torch side: `scripts/test.sh`).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402  (benchmarks/timing.py)

SIDES = ("before", "after", "torch")


def jax_sides(batch_size: int):
    """{'before', 'after'}: (gen, gt) [N, S, S, 3] in [-1, 1] -> LPIPS [N]; each side one jitted pair function held
    across rounds (`distance_to_gt` jits anew per call: its compile is timed in the demo, not here)."""
    import jax
    from flax import nnx

    from dualfashion_jax.evaluators import batched
    from dualfashion_jax.evaluators.nets import inception_blocks, lpips_vgg
    from dualfashion_jax.evaluators.nets import weights as ev

    model = ev.load_real_lpips_vgg()
    graphdef, state = nnx.split(model)

    def forward(s, pair):  # pair [b, 2, S, S, 3] -> [b]
        return nnx.merge(graphdef, s)(pair[:, 0], pair[:, 1])

    def previous(s, pair):
        keep = lpips_vgg.GEMM_MAX_SIDE
        lpips_vgg.GEMM_MAX_SIDE = 0  # traced with every conv through nnx.Conv
        try:
            return forward(s, pair)
        finally:
            lpips_vgg.GEMM_MAX_SIDE = keep

    fns = {"before": jax.jit(previous),  # default compiler options
           "after": jax.jit(forward, compiler_options=inception_blocks.compiler_options())}  # = distance_to_gt's
    return {k: (lambda a, b, f=f: batched.map_batches(lambda p: f(state, p), np.stack([a, b], 1),
                                                      batch_size=batch_size, show_progress=False))
            for k, f in fns.items()}


def torch_side(batch_size: int):
    import torch

    from dualfashion_jax.evaluators.nets import weights as ev
    from eval_nets_support import upstream_modules

    torch.set_num_threads(2)
    ref = upstream_modules()["lpips"].LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ev.cached_lpips_torch_layout().items()}, strict=False)

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for s in range(0, len(a), batch_size):
                x, y = (torch.from_numpy(np.ascontiguousarray(v[s:s + batch_size].transpose(0, 3, 1, 2))) for v in (a, b))
                outs.append(ref(x, y).numpy().reshape(-1))
        return np.concatenate(outs)
    return run


def conv_table(rounds: int) -> None:
    """One 3x3 'same' conv per VGG16 stage at 32 px input (batch 32), XLA convolution vs `conv3x3`'s GEMM."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from dualfashion_jax.evaluators.nets import lpips_vgg

    print("| map [B, H, W, Cin] -> Cout | XLA conv ms | GEMM ms | GFLOP/s conv / GEMM | load (1 min) |")
    print("|---|---|---|---|---|")
    for side, cin, cout in ((32, 64, 64), (16, 128, 128), (8, 256, 256), (4, 512, 512), (2, 512, 512), (1, 512, 512)):
        conv = nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
        x = jnp.asarray(np.random.RandomState(0).standard_normal((32, side, side, cin)), jnp.float32)
        graphdef, state = nnx.split(conv)
        keep, fns = lpips_vgg.GEMM_MAX_SIDE, {}
        for name, limit in (("conv", 0), ("gemm", 10 ** 6)):  # the path is chosen at trace time
            lpips_vgg.GEMM_MAX_SIDE = limit
            fns[name] = jax.jit(lambda st, v: lpips_vgg.conv3x3(nnx.merge(graphdef, st), v)).lower(state, x).compile()
        lpips_vgg.GEMM_MAX_SIDE = keep
        calls = {k: (lambda fn=fn: jax.block_until_ready(fn(state, x))) for k, fn in fns.items()}
        for call in calls.values():
            call()  # warm-up
        times, load = timing.interleaved_rounds(calls, rounds)
        med = {k: float(np.median(t)) * 1e3 for k, t in times.items()}
        gflop = 2 * 32 * side * side * 9 * cin * cout / 1e9
        print(f"| [32, {side}, {side}, {cin}] -> {cout} | {med['conv']:.2f} | {med['gemm']:.2f} | "
              f"{gflop / med['conv'] * 1e3:.0f} / {gflop / med['gemm'] * 1e3:.0f} | {load} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/lpips_pairs.py", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=160, help="the demo's PFITB: 160 (generated, GT) pairs")
    p.add_argument("--size", type=int, nargs="+", default=[32, 64], help="32: PFITB items, 64: GOR 2x2 collages")
    p.add_argument("--batch-size", type=int, default=4, help="`evaluate` runs LPIPS at its batch size / 4 = 4")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma list of {SIDES}")
    p.add_argument("--convs", action="store_true", help="the per-stage conv table instead")
    args = p.parse_args(argv)
    import jax

    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}; median (min-max) of {args.rounds} "
          "interleaved rounds after one warm-up call")
    if args.convs:
        conv_table(args.rounds)
        return 0
    sides = [s for s in args.sides.split(",") if s]
    if not sides or set(sides) - set(SIDES):
        p.error(f"--sides must name some of {SIDES}, got {args.sides!r}")
    print("| size | side | seconds | pairs/s | speed-up vs before | mean LPIPS | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.size:
        rng = np.random.RandomState(size)
        a, b = (rng.uniform(-1, 1, (args.pairs, size, size, 3)).astype(np.float32) for _ in range(2))
        fns = {}
        if {"before", "after"} & set(sides):
            fns.update({k: v for k, v in jax_sides(args.batch_size).items() if k in sides})
        if "torch" in sides:
            fns["torch"] = torch_side(args.batch_size)
        outs = {k: float(np.mean(fn(a, b))) for k, fn in fns.items()}  # warm-up: compile
        times, load = timing.interleaved_rounds(fns, args.rounds, a, b)
        for k in times:
            med, cell, up = timing.spread(times, k, digits=2)
            print(f"| {size} | {k} | {cell} | {args.pairs / med:.1f} | {up} | {outs[k]:.6f} | {load} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
