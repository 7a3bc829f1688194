"""How the step is partitioned: AOT-compiles programs on N fake CPU devices and reads the optimized HLO.

    python benchmarks/partitioning.py                       # the BENCHMARKS.md table (small config, N = 1,2,4,8)
    python benchmarks/partitioning.py --workload issue13 --programs bench --modes fsdp --layers scan --devices 64

Per (program, mode, layers, N): matmul GFLOPs per device (while-loop trip counts applied), memory_analysis
args / temp / peak MiB per device, and every collective's count and MiB per device by what it moves
(sharding/hlo_stats.py). One subprocess per N (XLA_FLAGS=--xla_force_host_platform_device_count=N). Nothing is
allocated or timed: these are compiler figures, valid on a loaded machine. `--no_constraints` traces without the
activation constraints (sharding/activations.py) to show the layout XLA picks on its own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PROGRAMS = ("bench", "stage1", "stage2", "sampling", "generation")
MODES = ("dp", "fsdp", "fsdp_tp")
LAYERS = ("scan", "unroll")


def workload(name: str, n: int, per_device_batch: int, layers: str, dtype: str = "float32"):
    """The configs of a named workload at global batch per_device_batch * n (scanned or unrolled layers; the
    MMDiT's compute dtype, params stay fp32)."""
    import dataclasses

    from dualfashion_jax.perf import programs as bp
    from dualfashion_jax.models import mmdit_config, t5, vae

    scan = layers == "scan"
    if name == "small":  # d 64 (4 heads), 2 layers, 8x8 latents (16 image tokens), 12-token segments, V 160
        cfg = mmdit_config.get("tiny", num_heads=4, head_dim=16, joint_attention_dim=48, vocab_size=160,
                               scan_layers=scan, dtype=dtype)
        return bp.Workload(cfg, t5.get_config("tiny", d_model=48, scan_layers=scan), vae.get_config("tiny"),
                           batch=per_device_batch * n, seg_len=12)
    if name == "issue13":  # issue #13: sd3_medium width (1536, 24 heads), 2 layers, 32x32 latents, 64 text tokens
        cfg = mmdit_config.get("sd3_medium", num_layers=2, latent_size=32, sample_size=32, scan_layers=scan,
                               dtype=dtype)
        return bp.Workload(dataclasses.replace(cfg, stage2=False), t5.get_config("tiny", d_model=4096),
                           vae.get_config("tiny"), batch=per_device_batch * n, seg_len=64)
    raise ValueError(f"--workload: unknown {name!r}; expected small or issue13")


def mesh_sizes(mode: str, n: int) -> dict[str, int]:
    if mode == "dp":
        return {"data": n}
    if mode == "fsdp":
        return {"fsdp": n}
    return {"fsdp": max(n // 2, 1), "tensor": 2 if n >= 2 else 1}


def _child(a) -> int:
    import contextlib

    from dualfashion_jax.perf import programs as bp
    from dualfashion_jax.sharding import activations, hlo_stats, mesh as mesh_lib

    n = int(a.devices)
    for layers in a.layers.split(","):
        for program in a.programs.split(","):
            for mode in a.modes.split(","):
                if mode == "fsdp_tp" and (n == 1 or program == "generation"):
                    continue  # generation shards params dp | fsdp only (`generate --param-sharding`)
                w = workload(a.workload, n, a.per_device_batch, layers, a.dtype)
                mesh = mesh_lib.make_mesh(mesh_sizes(mode, n))
                t0 = time.perf_counter()
                with activations.disabled() if a.no_constraints else contextlib.nullcontext():
                    c = bp.compile_program(program, w, mesh, mode)
                w = c.workload  # generation: with its rows per chain
                row = hlo_stats.report(c.compiled, weight_shapes=c.weight_shapes, stacked_layers=c.stacked_layers,
                                       weight_bytes=c.weight_bytes, global_batch=w.batch,
                                       per_device_batch=w.batch // (mesh.shape["data"] * mesh.shape["fsdp"]),
                                       token_counts=w.token_counts(), shard_factors=mesh.shape.values())
                row.update(program=program, mode=mode, layers=layers, devices=n, global_batch=w.batch, dtype=a.dtype,
                           constraints=not a.no_constraints, compile_s=time.perf_counter() - t0)
                print("RESULT " + json.dumps(row), flush=True)
    return 0


def _fmt_collectives(row) -> str:
    parts = []
    for key, v in row["collectives"].items():
        if key.endswith(":scalars") or v["mib"] < 0.005:
            continue
        op, what = key.split(":")
        parts.append(f"{op} {what} {v['count']:.0f}x/{v['mib']:.2f}")
    return "; ".join(parts) or "-"


def print_table(rows) -> None:
    print("| program | mode | layers | N | global B | GF/dev | args MiB | temp MiB | peak MiB | gathered W / W | "
          "full-batch act MiB | collectives per device (op what count/MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['program']} | {r['mode']} | {r['layers']} | {r['devices']} | {r['global_batch']} | "
              f"{r['gflops']:.4g} | {r['args_mib']:.2f} | {r['temp_mib']:.2f} | {r['peak_mib']:.2f} | "
              f"{r['gathered_weight_ratio']:.2f} | {r['full_batch_mib']:.3f} | {_fmt_collectives(r)} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="small", choices=["small", "issue13"])
    p.add_argument("--programs", default=",".join(PROGRAMS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--layers", default=",".join(LAYERS))
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--per_device_batch", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the MMDiT's compute dtype (params stay fp32; bf16 weights are cast before the gather)")
    p.add_argument("--no_constraints", action="store_true", help="trace without activation constraints (before)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for flag, allowed in (("programs", PROGRAMS), ("modes", MODES), ("layers", LAYERS)):
        bad = [x for x in getattr(a, flag).split(",") if x not in allowed]
        if bad:
            p.error(f"--{flag}: unknown {bad}; expected a subset of {allowed}")
    if a._child:
        return _child(a)
    rows, t0 = [], time.perf_counter()
    passthrough = [x for x in (argv if argv is not None else sys.argv[1:])]
    for n in a.devices.split(","):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--_child", "--devices", n]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"partitioning: the {n}-device run failed (exit {proc.returncode})")
        rows += [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    rows.sort(key=lambda r: (PROGRAMS.index(r["program"]), MODES.index(r["mode"]), r["layers"], r["devices"]))
    print_table(rows)
    print(f"\n{len(rows)} programs compiled in {time.perf_counter() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
