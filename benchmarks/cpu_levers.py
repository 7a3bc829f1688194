"""CPU levers of the bench train step, A/B'd in one process: variants and the PyTorch reference step interleaved.

    python benchmarks/cpu_levers.py --config small --variants base,ynn_off,unroll,unroll_ynn_off
    python benchmarks/cpu_levers.py --config demo --variants base,ynn_off
    python benchmarks/cpu_levers.py --config small --variants unroll,unroll_autodiff
A variant = scan/unroll of the layer loop x XLA compile options (per-program `compiler_options`, so every variant
lives in the same process and sees the same load) x the backward of layer norm / GELU / attention (the
hand-written rules of models/custom_grads.py, or `*autodiff`: JAX's own). Prints median (min-max) ms/step,
JAX/PyTorch time, load average.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as ts  # noqa: E402  (benchmarks/train_step.py: presets, torch step, interleaved timing)

from dualfashion_jax.core import host_memory
from dualfashion_jax.models import custom_grads

YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}  # XLA's own (Eigen) dots/fusions instead of YNNPACK's
VARIANTS = {"base": (True, {}), "ynn_off": (True, YNN_OFF), "unroll": (False, {}), "unroll_ynn_off": (False, YNN_OFF),
            "autodiff": (True, {}), "unroll_autodiff": (False, {})}


def jax_variant(cfg, batch: int, txt_len: int, options: dict):
    """run() for the bench step compiled with `options` (the default options of `step.jit_step` are replaced)."""
    import jax

    from dualfashion_jax.perf import step as bench_step
    from dualfashion_jax.sharding import partition

    fn, _, _, init, mesh = bench_step.build(cfg, bench_step.StepShape(batch, txt_len))
    host = ts.host_batch(cfg, batch, txt_len)
    with jax.set_mesh(mesh):
        b = partition.put_batch(host, mesh)
        box = {"state": init()}
        compiled = fn.lower(box["state"], b, {}).compile(compiler_options=options)

    def run():
        box["state"], m = compiled(box["state"], b, {})
        jax.block_until_ready(m["loss"])

    return run, host


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="small", help="small | demo | tiny")
    p.add_argument("--variants", default="base,ynn_off,unroll,unroll_ynn_off")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--extra", default="{}", help='more variants: JSON {name: {"scan": bool, "options": {...}}}')
    a = p.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    batch, txt_len = (16, 72) if a.config == "demo" else (4, 64)
    fns, host = {}, None
    extra = {n: (v.get("scan", True), v.get("options", {})) for n, v in json.loads(a.extra).items()}
    table = {**VARIANTS, **extra}
    for name in [v for v in a.variants.split(",") if v] + list(extra):
        scan, opts = table[name]
        autodiff = name.endswith("autodiff")
        backend = "xla_autodiff" if autodiff else "xla"
        cfg = ts.preset(a.config, stage2=False, scan_layers=scan, attention_backend=backend)
        with custom_grads.autodiff_norms() if autodiff else contextlib.nullcontext():  # traced + compiled inside
            fns[name], host = jax_variant(cfg, batch, txt_len, opts)
    if not a.no_torch:
        import torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        fns["torch"] = ts.torch_step(ts.preset(a.config, stage2=False), host)
    load0 = os.getloadavg()[0]
    t = ts.interleaved(fns, a.warmup, a.iters)
    print(f"[{a.config}] B={batch} txt={txt_len}; load avg {load0:.2f} -> {os.getloadavg()[0]:.2f}; "
          f"{a.iters} interleaved rounds after {a.warmup}")
    for n, x in t.items():
        extra = ""
        if "torch" in t and n != "torch":
            r = x / t["torch"]
            extra = f"  JAX/PyTorch {np.median(x) / np.median(t['torch']):.2f} (per-round {np.median(r):.2f})"
        print(f"  {n:>16}: {ts.fmt(x)}{extra}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
