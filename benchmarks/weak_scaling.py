"""Weak scaling of the synthetic train step: 1/2/4/8 devices, fixed per-device batch, dp vs fsdp.

    python benchmarks/weak_scaling.py --config tiny --per_device_batch 2 --devices 1,2,4,8
    python benchmarks/weak_scaling.py --device gpu --config sd3_medium --per_device_batch 8 --devices 8

CPU: one subprocess per device count with XLA_FLAGS=--xla_force_host_platform_device_count=N. Fake CPU devices
share the host's cores, so step time grows with N by construction: on CPU the table shows the partitioning
(per-device memory from memory_analysis, collectives' overhead), not speed-up. On GPU/TPU it runs once over
the real devices (--devices is then the list of counts to slice the device list to).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODES = ("dp", "fsdp")


def _child(a) -> int:
    """Runs inside the subprocess: every mode on jax.devices()[:n]; prints one JSON line per mode."""
    import jax
    import jax.numpy as jnp

    from dualfashion_jax.perf import flops, memory, step as bench_step
    from dualfashion_jax.models import mmdit_config

    dtype = jnp.dtype(a.dtype or ("float32" if a.device == "cpu" else "bfloat16"))
    cfg = mmdit_config.get(a.config, stage2=False, dtype=dtype, remat_policy=a.remat, attention_backend=a.attention)
    for n in [int(x) for x in a.devices.split(",")]:
        if n > jax.device_count():
            continue
        for mode in a.modes.split(","):
            mesh = bench_step.make_mesh(mode, jax.devices()[:n])
            shape = bench_step.StepShape(a.per_device_batch * n, a.txt_len)
            r = bench_step.run_step(cfg, shape, rules_name=mode, mesh=mesh, warmup=a.warmup, iters=a.iters)
            s = memory.MemoryStats.from_compiled(r["compiled"])
            f = flops.synthetic_step_flops(cfg, a.txt_len)["total"] * shape.batch
            print("RESULT " + json.dumps({
                "devices": n, "mode": mode, "global_batch": shape.batch, "step_ms": 1e3 * r["step_s"],
                "samples_per_s": shape.batch / r["step_s"], "compile_s": r["compile_s"],
                "args_mib": s.argument / 2**20, "temp_mib": s.temp / 2**20, "peak_mib": s.peak / 2**20,
                "model_tflops_per_s_per_dev": f / r["step_s"] / n / 1e12}), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "tpu"])
    p.add_argument("--config", default="tiny")
    p.add_argument("--per_device_batch", type=int, default=2)
    p.add_argument("--txt_len", type=int, default=32)
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--dtype", default=None)
    p.add_argument("--remat", default="none")
    p.add_argument("--attention", default="xla")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    bad = [m for m in a.modes.split(",") if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {bad}; expected a subset of {MODES}")
    if a._child:
        return _child(a)
    passthrough = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--_child"]
    counts = [a.devices] if a.device != "cpu" else a.devices.split(",")
    rows = []
    for n in counts:
        env = dict(os.environ)
        if a.device == "cpu":
            env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        argv_child = [sys.executable, os.path.abspath(__file__), *passthrough, "--_child"]
        if a.device == "cpu":
            argv_child += ["--devices", n]
        proc = subprocess.run(argv_child, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"weak_scaling: the {n}-device run failed (exit {proc.returncode})")
        rows += [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    base = {r["mode"]: r["step_ms"] for r in rows if r["devices"] == min(x["devices"] for x in rows)}
    print(f"{'devices':>7s} {'mode':>5s} {'global B':>8s} {'step ms':>9s} {'eff.':>6s} {'args MiB/dev':>12s} "
          f"{'temp MiB/dev':>12s} {'peak MiB/dev':>12s}")
    for r in sorted(rows, key=lambda r: (r["mode"], r["devices"])):
        r["weak_efficiency"] = base[r["mode"]] / r["step_ms"]
        print(f"{r['devices']:7d} {r['mode']:>5s} {r['global_batch']:8d} {r['step_ms']:9.1f} {r['weak_efficiency']:6.2f} "
              f"{r['args_mib']:12.2f} {r['temp_mib']:12.2f} {r['peak_mib']:12.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
