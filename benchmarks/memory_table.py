"""Train-step memory tables: XLA memory_analysis per config/policy, and the largest sd3_medium batch per policy.

    python benchmarks/memory_table.py                         # CPU memory_analysis table (tiny, small) + sd3 table
    python benchmarks/memory_table.py --aot_sd3               # + sd3_medium compiled AOT on CPU at B=1, 2 (~5 min)
    python benchmarks/memory_table.py --configs "" --aot_sd3 --aot_batches 4,8 --policies dots_with_no_batch_dims,full
    python benchmarks/memory_table.py --json out.json         # also write every number as JSON
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory_table.py --devices 8 --configs small
                                                              # the partitioned (fsdp) step per device vs the model

The sd3_medium table is COMPUTED, not measured: analytic fixed bytes (20 B/param fp32 state + bf16 T5-XXL when
in-step) + per-sample activations per remat policy (memory.py), on an 80 GB device, 512 px (N_img 1024),
256-token segments; with `--aot_sd3` also from XLA's own buffer assignment of the sd3_medium step compiled on
CPU (bf16, XLA attention). GPU/TPU measurement: not yet (no accelerator in this session).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

POLICIES = ("none", "dots_saveable", "dots_with_no_batch_dims", "save_named", "save_attn_out", "offload_named", "full")


def cpu_table(names, batch: int, txt_len: int, policies) -> list[dict]:
    """memory_analysis of the synthetic train step (1 device, dp) for each config x policy."""
    from dualfashion_jax.perf import memory, step as bench_step
    from dualfashion_jax.models import mmdit_config

    rows = []
    for name in names:
        for pol in policies:
            cfg = mmdit_config.get(name, stage2=False, remat_policy=pol)
            compiled, secs = bench_step.lower_step(cfg, bench_step.StepShape(batch, txt_len), rules_name="dp")
            s = memory.MemoryStats.from_compiled(compiled)
            rows.append({"config": name, "policy": pol, "batch": batch, "txt_len": txt_len, "compile_s": secs,
                         **dataclasses.asdict(s), "peak": s.peak})
            print(f"{name:6s} {pol:24s} B={batch} args {s.argument / 2**20:9.1f} MiB  out {s.output / 2**20:9.1f}  "
                  f"alias {s.alias / 2**20:9.1f}  temp {s.temp / 2**20:9.1f}  peak {s.peak / 2**20:9.1f} MiB", flush=True)
    return rows


def partitioned_table(names, devices: int, batches: tuple[int, int], txt_len: int, policies) -> list[dict]:
    """The fsdp step on `devices` devices at two per-device batches: measured per-device fixed and per-sample
    peak bytes next to the analytic model (20 B/param / N fixed; activations per sample are not sharded)."""
    import jax

    from dualfashion_jax.perf import flops, memory, step as bench_step
    from dualfashion_jax.models import mmdit_config

    if jax.device_count() < devices:
        raise SystemExit(f"--devices {devices}: only {jax.device_count()} devices; run with "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}")
    mesh = bench_step.make_mesh("fsdp", jax.devices()[:devices])
    rows = []
    for name in names:
        for pol in policies:
            cfg = mmdit_config.get(name, stage2=False, remat_policy=pol)
            stats = [memory.MemoryStats.from_compiled(bench_step.lower_step(
                cfg, bench_step.StepShape(b * devices, txt_len), rules_name="fsdp", mesh=mesh)[0]) for b in batches]
            fixed, per = memory.measured_per_sample(stats[0], stats[1], *batches)
            n_params = memory.param_count(cfg)
            model_fixed = memory.fixed_bytes(n_params, shards=devices)
            model_per = memory.activation_bytes_per_sample(cfg, flops.image_tokens(cfg), txt_len, txt_len, pol,
                                                           flash=False)
            rows.append({"config": name, "policy": pol, "devices": devices, "per_device_batches": list(batches),
                         "peaks_mib": [x.peak / 2**20 for x in stats], "fixed_mib": fixed / 2**20,
                         "per_sample_mib": per / 2**20, "model_fixed_mib": model_fixed / 2**20,
                         "model_per_sample_mib": model_per / 2**20})
            r = rows[-1]
            print(f"{name:6s} {pol:24s} N={devices} B/dev={batches} peak/dev {r['peaks_mib'][0]:8.2f} | "
                  f"{r['peaks_mib'][1]:8.2f} MiB  fixed/dev {r['fixed_mib']:8.2f} (model {r['model_fixed_mib']:8.2f})"
                  f"  per sample {r['per_sample_mib']:7.2f} (model {r['model_per_sample_mib']:7.2f})", flush=True)
    return rows


def sd3_table(capacity_gb: float, seg_len: int, aot: bool, policies, aot_batches=(1, 2)) -> list[dict]:
    """Largest per-device sd3_medium batch per policy: analytic (flash / XLA attention), stages, optional CPU AOT."""
    import jax.numpy as jnp

    from dualfashion_jax.perf import flops, memory, step as bench_step
    from dualfashion_jax.models import mmdit_config, t5

    cap = capacity_gb * memory.GB
    base = mmdit_config.get("sd3_medium", dtype=jnp.bfloat16)
    n_params = memory.param_count(base)  # stage-2 model (incl. the matching MLP)
    t5_params = memory.t5_param_count(t5.get_config("t5_v1_1_xxl"))
    n_img, L = flops.image_tokens(base), seg_len
    fixed = memory.fixed_bytes(n_params, t5_params=t5_params)
    fixed_fsdp8 = memory.fixed_bytes(n_params, t5_params=t5_params, shards=8)
    # The partitioned step measured on 8 fake CPU devices (`--devices 8`) holds one full fp32 gradient copy
    # beyond the ZeRO-3 model (XLA:CPU all-reduces full-size gradient buffers): the conservative column adds it.
    fixed_fsdp8_cpu = fixed_fsdp8 + 4 * n_params
    print(f"\nsd3_medium: {n_params / 1e9:.3f} B params (fp32 state {20 * n_params / 1e9:.1f} GB), T5-XXL "
          f"{t5_params / 1e9:.2f} B (bf16 {2 * t5_params / 1e9:.1f} GB); capacity {capacity_gb:.0f} GB; fixed "
          f"{fixed / 1e9:.1f} GB (1 device) / {fixed_fsdp8 / 1e9:.1f} GB (FSDP x8)")
    rows = []
    for pol in policies:
        act = lambda n_txt, kept, flash: memory.activation_bytes_per_sample(  # noqa: E731
            base, n_img, n_txt, kept, pol, flash=flash)
        syn_flash, syn_xla = act(L, L, True), act(L, L, False)
        st1 = act(L, 0, True) + act(L, L, True)            # t2i image branch + i2t caption branch
        st2 = act(2 * L, 0, True) + act(3 * L, L, True)    # image branch [pref; sent] + caption [cap; pref; sent]
        row = {"policy": pol, "act_gb_flash": syn_flash / 1e9, "act_gb_xla": syn_xla / 1e9,
               "B_flash": memory.largest_batch(cap, fixed, syn_flash),
               "B_xla": memory.largest_batch(cap, fixed, syn_xla),
               "B_stage1_flash": memory.largest_batch(cap, fixed, st1),
               "B_stage2_flash": memory.largest_batch(cap, fixed, st2),
               "B_stage2_flash_fsdp8": memory.largest_batch(cap, fixed_fsdp8, st2),
               "B_stage2_flash_fsdp8_cpu_fixed": memory.largest_batch(cap, fixed_fsdp8_cpu, st2),
               "measured": "not yet (no GPU)"}
        if aot:
            cfg = dataclasses.replace(base, stage2=False, remat_policy=pol)
            b0, b1 = aot_batches
            stats = [memory.MemoryStats.from_compiled(
                bench_step.lower_step(cfg, bench_step.StepShape(b, L), rules_name="dp")[0]) for b in (b0, b1)]
            f_aot, per_aot = memory.measured_per_sample(stats[0], stats[1], b0, b1)
            # XLA's fixed part has no T5 (the synthetic step feeds T5 states): add it for the 80 GB budget.
            # At B <= 2 the peak may be the optimizer update (grads + AdamW temporaries), not the activations:
            # then the B=1 -> 2 slope says nothing about activations and no batch is derived from it.
            ok = per_aot > 0.05 * syn_xla
            row.update(aot_batches=[b0, b1], aot_peaks_gb=[x.peak / 1e9 for x in stats], aot_fixed_gb=f_aot / 1e9,
                       aot_act_gb=per_aot / 1e9 if ok else None,
                       B_aot=memory.largest_batch(cap, f_aot + 2 * t5_params, per_aot) if ok else None)
        rows.append(row)
    hdr = (f"{'policy':24s} {'act/sample GB flash|xla':>24s} {'B flash':>8s} {'B xla':>6s} {'B st1':>6s} "
           f"{'B st2':>6s} {'B st2 fsdp8':>11s} {'(+grad copy)':>12s}" + (f" {'AOT act GB':>10s} {'B AOT':>6s}" if aot else ""))
    print(hdr)
    for r in rows:
        line = (f"{r['policy']:24s} {r['act_gb_flash']:11.2f} | {r['act_gb_xla']:10.2f} {r['B_flash']:8d} "
                f"{r['B_xla']:6d} {r['B_stage1_flash']:6d} {r['B_stage2_flash']:6d} {r['B_stage2_flash_fsdp8']:11d} "
                f"{r['B_stage2_flash_fsdp8_cpu_fixed']:12d}")
        if aot and r["B_aot"] is not None:
            line += f" {r['aot_act_gb']:10.2f} {r['B_aot']:6d}"
        elif aot:
            line += f" {'n/a':>10s} {'n/a':>6s}"
        print(line + "   measured: not yet (no GPU)", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="tiny,small", help="CPU memory_analysis table configs ('' to skip)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--txt_len", type=int, default=64)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--capacity_gb", type=float, default=80.0)
    p.add_argument("--seg_len", type=int, default=256, help="tokens per T5 segment in the sd3_medium table")
    p.add_argument("--aot_sd3", action="store_true", help="also compile sd3_medium on CPU at two batches per policy")
    p.add_argument("--aot_batches", default="1,2", help="the two batches of --aot_sd3 (the slope is per sample)")
    p.add_argument("--devices", type=int, default=0, help="measure the fsdp step on this many (fake) devices instead")
    p.add_argument("--device_batches", default="1,2", help="the two per-device batches of --devices")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    policies = [x for x in a.policies.split(",") if x]
    configs = [c for c in a.configs.split(",") if c]
    if a.devices:
        out = {"partitioned": partitioned_table(configs, a.devices, tuple(int(x) for x in a.device_batches.split(",")),
                                                a.txt_len, policies)}
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
        return 0
    out = {"cpu": cpu_table(configs, a.batch, a.txt_len, policies),
           "sd3_medium": sd3_table(a.capacity_gb, a.seg_len, a.aot_sd3, policies,
                                   tuple(int(x) for x in a.aot_batches.split(",")))}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
