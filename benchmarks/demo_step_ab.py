"""The demo's stage-N train step (dualfashion_jax/demo.py DemoPlan), A/B'd in one process, interleaved.

    python benchmarks/demo_step_ab.py --stage 2 --rounds 12
    python benchmarks/demo_step_ab.py --stage 2 --rounds 8 --variants \
        '{"scan": {"model.overrides.scan_layers": true, "t5.overrides.scan_layers": true}, "unroll": {}}'
    python benchmarks/demo_step_ab.py --stage 2 --rounds 6 --variants \
        '{"O2": {}, "O1": {"xla_backend_optimization_level": 1}}'   # xla_* keys: XLA options of that compile
    python benchmarks/demo_step_ab.py --stage 2 --rounds 8 --variants '{"custom": {}, "autodiff": {"autodiff": true}}'
                                    # "autodiff": JAX's own backward for layer norm / GELU / attention
Round-robin comparisons, so all sides see the same load (median, min-max, load average printed):
  * step variants (`--variants`, config overrides of the demo's stage config): the compiled step alone on one
    fixed batch, and the loop: `--block` steps with the real data pipeline (next(data) + put_batch + step,
    metrics fetched once per block, as training/train.py does); each variant's compile time is printed;
  * for the first variant, the loop fetching the metrics every step (`float(v)`, the old training loop).
Demo inputs (synthetic data, VAE stand-in, tokenizer) are built under --out on first use.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
import time

import numpy as np

from dualfashion_jax.core import host_memory


def build(out: pathlib.Path, plan, stage: int, overrides: dict):
    """(compiled step, state, data iterator, frozen, mesh) of the demo's stage `stage` with config `overrides`."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from dualfashion_jax import demo
    from dualfashion_jax.models import custom_grads
    from dualfashion_jax.sharding import activations, mesh as mesh_lib, partition, rules as rules_lib
    from dualfashion_jax.training import step as step_lib, tasks, train

    c = demo.stage_config(out, plan, stage)
    c.init_from = ""
    overrides = dict(overrides)
    autodiff = overrides.pop("autodiff", False)  # models/custom_grads.py's rules off (the A/B of its backward)
    if autodiff:
        overrides["model.attention_backend"] = "xla_autodiff"
    xla = {k: v for k, v in overrides.items() if k.startswith("xla_")}  # XLA options of this one compile
    for k, v in ((k, v) for k, v in overrides.items() if not k.startswith("xla_")):
        node = c
        *ps, leaf = k.split(".")
        for p_ in ps:
            node = node[p_]
        node[leaf] = v
    mesh = mesh_lib.make_mesh(dict(c.mesh))
    rules = rules_lib.get(c.sharding.rules, {})
    task = tasks.build(c)
    spec = train.build_state_spec(c, task, mesh, rules)
    frozen_gd, frozen_sh, frozen = {}, {}, {}
    for name, fz in task.frozen.items():
        gd, abs_fz = nnx.split(nnx.eval_shape(fz.factory))
        frozen_gd[name], frozen_sh[name] = gd, partition.state_shardings(abs_fz, mesh, rules)
        frozen[name] = partition.sharded_init(lambda f=fz.factory: nnx.split(f())[1], frozen_sh[name])
    if task.make_consts is not None:
        rep = NamedSharding(mesh, P())
        for k, v in task.make_consts({n: nnx.merge(frozen_gd[n], frozen[n]) for n in frozen_gd}).items():
            frozen[k], frozen_sh[k] = partition.put_global(v, rep), rep
    state = partition.sharded_init(spec.init, spec.shardings)
    fn = step_lib.make_step_fn(spec.graphdef, frozen_gd, task.loss_fn, spec.tx, spec.schedule, c.optim,
                               c.grad_accum, mesh)
    jitted = step_lib.jit_step(fn, spec.shardings, partition.batch_sharding(mesh), frozen_sh, mesh)
    data = task.make_data(0, 1)
    b = next(data)
    b.pop("ids", None)
    t0 = time.perf_counter()
    grads = custom_grads.autodiff_norms() if autodiff else contextlib.nullcontext()
    with grads, jax.set_mesh(mesh), activations.use_rules(rules):
        comp = jitted.lower(state, partition.put_batch(b, mesh), frozen).compile(compiler_options=xla or None)
    return comp, state, data, frozen, mesh, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--out", default="/tmp/dualfashion_demo_bench")
    p.add_argument("--variants", default='{"scan": {}}', help="JSON {name: {config.path: value}}")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--block", type=int, default=10, help="steps per loop block (the demo's log_every)")
    a = p.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from dualfashion_jax import demo
    from dualfashion_jax.sharding import partition

    out, plan = pathlib.Path(a.out), demo.DemoPlan.default()
    demo.make_data(out, plan)
    demo.make_vae(out, plan)
    demo.make_tokenizer(out, plan)
    built = {n: list(build(out, plan, a.stage, o)) for n, o in json.loads(a.variants).items()}
    first = next(iter(built))
    fixed = {}  # one fixed batch per variant (a variant may change the batch size)
    for n, (_, _, data_n, _, mesh_n, compile_s) in built.items():
        print(f"  {n}: lower + compile {compile_s:.1f} s")
        b0 = next(data_n)
        b0.pop("ids", None)
        fixed[n] = partition.put_batch(b0, mesh_n)

    def step_only(n):
        comp, state, _, frozen, _, _ = built[n]
        t0 = time.perf_counter()
        state, m = comp(state, fixed[n], frozen)
        jax.block_until_ready(m)
        built[n][1] = state
        return time.perf_counter() - t0

    def loop(n, sync_every_step: bool):
        comp, state, data, frozen, mesh, _ = built[n]
        t0, ms = time.perf_counter(), []
        for _ in range(a.block):
            hb = next(data)
            hb.pop("ids", None)
            state, m = comp(state, partition.put_batch(hb, mesh), frozen)
            if sync_every_step:
                _ = {k: float(v) for k, v in jax.device_get(m).items()}
            else:
                ms.append(m)
        jax.device_get(ms)
        jax.block_until_ready(state)
        built[n][1] = state
        return (time.perf_counter() - t0) / a.block

    load0 = os.getloadavg()[0]
    times = {**{f"step[{n}]": [] for n in built}, **{f"loop[{n}]": [] for n in built},
             f"loop[{first}], sync every step": []}
    for r in range(a.rounds + 2):
        row = {f"step[{n}]": step_only(n) for n in built}
        row.update({f"loop[{n}]": loop(n, False) for n in built})
        row[f"loop[{first}], sync every step"] = loop(first, True)
        if r >= 2:
            for k, v in row.items():
                times[k].append(v)
    print(f"demo stage {a.stage} (batch {plan.batch[a.stage - 1]}), {a.rounds} interleaved rounds; "
          f"load avg {load0:.2f} -> {os.getloadavg()[0]:.2f}; cpus {len(os.sched_getaffinity(0))}")
    for k, t in times.items():
        t = np.asarray(t)
        print(f"  {k:>24}: {np.median(t) * 1e3:7.1f} ms/step ({t.min() * 1e3:.1f}-{t.max() * 1e3:.1f}), "
              f"{1 / np.median(t):.2f} steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
