"""Where the CPU train step's time goes: forward, forward+backward, optimizer+EMA and the whole step, interleaved.

    python benchmarks/cpu_step_profile.py --config small --batch 4 --txt_len 64 --rounds 15 [--ops]
    python benchmarks/cpu_step_profile.py --config demo --batch 16 --txt_len 72 --rounds 15 [--ops] [--autodiff]
Each part is its own jitted program on the bench step's shapes (`dualfashion_jax/perf/step.py`); all parts are
timed round-robin in one process (median, min-max) with the load average printed beside them.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as ts  # noqa: E402  (benchmarks/train_step.py: presets incl. 'demo')

from dualfashion_jax.core import host_memory


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--txt_len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--no_scan", action="store_true")
    p.add_argument("--ops", action="store_true", help="also: per-op-category thread time of the whole step (trace)")
    p.add_argument("--autodiff", action="store_true",
                   help="JAX's own backward for layer norm / GELU / attention (not models/custom_grads.py's)")
    a = p.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if a.ops:
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from dualfashion_jax.perf import step as bench_step
    from dualfashion_jax.models import custom_grads, mmdit
    from dualfashion_jax.training import optim

    grads = contextlib.ExitStack()  # holds the switch for the rest of main(): every program is traced below
    if a.autodiff:
        grads.enter_context(custom_grads.autodiff_norms())
    cfg = ts.preset(a.config, stage2=False, scan_layers=not a.no_scan,
                    attention_backend="xla_autodiff" if a.autodiff else "xla")
    shape = bench_step.StepShape(a.batch, a.txt_len)
    model = mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    h, w = cfg.latent_hw
    b = {"latents": jnp.asarray(rng.standard_normal((a.batch, h, w, cfg.in_channels)), jnp.float32),
         "txt": jnp.asarray(rng.standard_normal((a.batch, a.txt_len, cfg.joint_attention_dim)), jnp.float32),
         "ids": jnp.asarray(rng.integers(0, cfg.vocab_size, (a.batch, a.txt_len)), jnp.int32)}
    key = jax.random.key(0)

    def loss(pr, bb):
        return bench_step.loss_fn(nnx.merge(gd, pr, rest), {}, bb, key, kept=shape.kept)[0]

    def loss_gather(pr, bb):  # the CE as it was: log_softmax + take_along_axis (scatter in the backward)
        m = nnx.merge(gd, pr, rest)
        v, logits = m(bb["latents"], bb["txt"], jnp.full((a.batch,), 500.0))
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), bb["ids"][..., None], -1))
        return jnp.mean(jnp.square(v)) + 0.2 * ce

    def loss_onehot(pr, bb):  # logsumexp - one-hot-picked logit: no scatter in the backward pass
        m = nnx.merge(gd, pr, rest)
        v, logits = m(bb["latents"], bb["txt"], jnp.full((a.batch,), 500.0))
        picked = jnp.sum(logits * jax.nn.one_hot(bb["ids"], logits.shape[-1]), -1)
        return jnp.mean(jnp.square(v)) + 0.2 * jnp.mean(jax.nn.logsumexp(logits, -1) - picked)

    def trunk_only(pr, bb):  # forward without the text head's log-softmax / CE (image loss only)
        m = nnx.merge(gd, pr, rest)
        v, _ = m(bb["latents"], bb["txt"], jnp.full((a.batch,), 500.0), heads=("image",))
        return jnp.mean(jnp.square(v))

    tx, _ = optim.make_optimizer(bench_step.mlc.ConfigDict(bench_step.OPTIM))
    opt_state = tx.init(params)
    ema = jax.tree.map(jnp.copy, params)

    def opt_ema(g, o, pr, e):
        u, o = tx.update(g, o, pr)
        pr = optax.apply_updates(pr, u)
        return pr, o, optim.ema_update(e, pr, jnp.int32(5), 0.9999, 0)

    def opt_only(g, o, pr):
        u, o = tx.update(g, o, pr)
        return optax.apply_updates(pr, u), o

    grads = jax.tree.map(jnp.ones_like, params)
    parts = {
        "forward (loss)": (jax.jit(loss), (params, b)),
        "fwd+bwd (grad)": (jax.jit(jax.grad(loss)), (params, b)),
        "fwd+bwd, CE gather": (jax.jit(jax.grad(loss_gather)), (params, b)),
        "fwd+bwd, CE one-hot": (jax.jit(jax.grad(loss_onehot)), (params, b)),
        "fwd+bwd image head only": (jax.jit(jax.grad(trunk_only)), (params, b)),
        "optimizer (clip+AdamW)": (jax.jit(opt_only), (grads, opt_state, params)),
        "optimizer + EMA": (jax.jit(opt_ema), (grads, opt_state, params, ema)),
    }
    run_full = bench_step.run_step(cfg, shape, warmup=1, iters=1)["compiled"]
    fn, _, _, init, mesh = bench_step.build(cfg, shape)
    with jax.set_mesh(mesh):
        state = init()
    box = {"s": state}

    def full():
        box["s"], m = run_full(box["s"], b, {})
        return m

    load0 = os.getloadavg()[0]
    times: dict[str, list[float]] = {n: [] for n in list(parts) + ["whole step"]}
    for r in range(a.rounds + 2):
        for n, (f, args) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            if r >= 2:
                times[n].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(full())
        if r >= 2:
            times["whole step"].append(time.perf_counter() - t0)
    print(f"[{a.config}] B={a.batch} txt={a.txt_len} scan={not a.no_scan} autodiff={a.autodiff} "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} cpus {len(os.sched_getaffinity(0))}; "
          f"load avg {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    for n, t in times.items():
        t = np.array(t) * 1e3
        print(f"  {n:>26}: median {np.median(t):7.1f} ms  (min {t.min():.1f}, max {t.max():.1f})")
    if a.ops:
        op_categories(run_full, box, b, rounds=5)
    return 0


CATEGORIES = (  # first match wins, on "<opcode> <op_name metadata>" of the HLO op a trace event names
    ("text head / CE", r"log_softmax|take_along_axis|text_proj_out|logsumexp|32100"),
    ("attention (QK^T, PV, softmax)", r"bqhd|bhqk|bkhd|softmax"),
    ("optimizer + EMA", r"^\S+ jit\(step\)/(?!.*jvp)"),
    ("linear layers (dot_general)", r"dot_general|^dot "),
    ("scan stacking / slicing / copies", r"^(dynamic-slice|dynamic-update-slice|copy|broadcast|transpose|concatenate)"
                                         r"|dynamic_slice|dynamic_update_slice|broadcast_in_dim"),
    ("layer norm / modulate / GELU / residual", r"reduce|rsqrt|tanh|square|mean|integer_pow|mul|add|sub|div|exp"),
)
NESTED = re.compile(r"^(while|call|conditional)")  # their trace events enclose their body's ops: not counted


def op_categories(compiled, box, b, rounds: int) -> None:
    """Thread time per op category of the compiled step, from an XLA CPU trace (one line per category)."""
    import jax
    from jax._src.lib import _profiler
    from jax.profiler import ProfileData

    hlo = compiled.as_text()
    meta = {m.group(1): (m.group(2) + " " + m.group(3)) for m in
            re.finditer(r"%([\w.-]+) = .*? (\w[\w-]*)\(.*?op_name=\"([^\"]*)\"", hlo)}
    sess = _profiler.ProfilerSession()
    t0 = time.perf_counter()
    for _ in range(rounds):
        box["s"], m = compiled(box["s"], b, {})
        jax.block_until_ready(m)
    wall = (time.perf_counter() - t0) / rounds
    agg = collections.Counter()
    for plane in ProfileData.from_serialized_xspace(sess.stop()).planes:
        for line in plane.lines:
            for ev in line.events:
                if "Eigen" in line.name and not ev.name.startswith(("ThunkExecutor", "Slinky")):
                    info = meta.get(ev.name, ev.name)
                    if NESTED.match(info) or NESTED.match(ev.name):
                        continue
                    cat = next((c for c, rx in CATEGORIES if re.search(rx, info)), "other")
                    agg[cat] += ev.duration_ns / rounds / 1e6
    total = sum(agg.values())
    print(f"  per-op thread time of the whole step: {total:.1f} ms (wall {wall * 1e3:.1f} ms)")
    for c, v in agg.most_common():
        print(f"    {c:>34}: {v:7.1f} ms ({100 * v / total:4.1f} %)")


if __name__ == "__main__":
    sys.exit(main())
