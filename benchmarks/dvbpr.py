"""DVBPR side by side: the jitted JAX train step and catalogue scoring vs the PyTorch transcription, CPU.

    PYTHONPATH=. python benchmarks/dvbpr.py [--size demo] [--rounds 30] [--warmup 5] [--batch 64] [--items 960]
Train step = one AdamW update on the BPR loss of a batch of (user, positive, negative) triples (the same model,
init and loss on both sides; data loading excluded). Scoring = Phi of `--items` catalogue items and the
[users, items] score matrix (inference), through the library's `DVBPR.users` / `ItemEncoder`. After JAX compilation
and `--warmup` untimed rounds, `--rounds` interleaved rounds each time all four programs once, in an order that
alternates between JAX-first and PyTorch-first so neither side always runs on the other's cache or clock state;
median (min-max) milliseconds. The load averages before and after are printed, with a warning when the 1-minute
load exceeds a quarter of the CPUs: then the figures are disturbed by other processes.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig
from dualfashion_jax.reference import torch_dvbpr
from dualfashion_jax.training.dvbpr import bpr_loss

SIZES = {  # (input kind, input size, channels, conv widths, hidden, K): configs/dvbpr.py's model blocks
    "demo": ("latent", 8, 16, (32, 64, 128), 128, 32),
    "demo_images": ("image", 32, 3, (32, 64, 128), 128, 32),
    "ifashion": ("latent", 32, 16, (64, 128, 256, 256), 512, 100),
}


def build(size: str, users: int) -> DVBPRConfig:
    kind, s, c, widths, hidden, k = SIZES[size]
    return DVBPRConfig(num_users=users, input_kind=kind, in_channels=c, input_size=s, channels=widths, hidden=hidden,
                       embed_dim=k)


def jax_programs(model: DVBPR, lr: float, user_l2: float):
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(lr, weight_decay=1e-4)

    @jax.jit
    def step(params, opt, u, pos, neg):
        def loss(p):
            m = nnx.merge(graphdef, p)
            sp, sn = m(u, pos, neg)
            return bpr_loss(sp, sn) + user_l2 * jnp.mean(jnp.sum(jnp.square(m.users(u)), -1))
        l, g = jax.value_and_grad(loss)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, l

    @jax.jit
    def score(params, u, items):
        m = nnx.merge(graphdef, params)
        return m.users(u) @ m.encoder(items).T  # [U, N]

    return params, tx.init(params), step, score


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def fmt(ms: list[float]) -> str:
    return f"{np.median(ms):8.2f} ({min(ms):.2f}-{max(ms):.2f})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="demo", choices=sorted(SIZES))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--items", type=int, default=960)
    p.add_argument("--users", type=int, default=64)
    a = p.parse_args(argv)
    cfg = build(a.size, a.users)
    load0 = os.getloadavg()
    model = DVBPR(cfg, rngs=nnx.Rngs(0))
    tm = torch_dvbpr.from_jax(model)
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=1e-4)
    params, opt, jstep, jscore = jax_programs(model, 1e-3, 1e-4)
    r = np.random.default_rng(0)
    shape = (cfg.input_size, cfg.input_size, cfg.in_channels)
    u = r.integers(0, a.users, a.batch).astype(np.int32)
    pos, neg = (r.standard_normal((a.batch, *shape)).astype(np.float32) for _ in range(2))
    items = r.standard_normal((a.items, *shape)).astype(np.float32)
    su = np.arange(a.users, dtype=np.int32)
    ju, jp, jn, ji, jsu = (jnp.asarray(x) for x in (u, pos, neg, items, su))
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
    tu, tp, tn, ti, tsu = torch.from_numpy(u).long(), nchw(pos), nchw(neg), nchw(items), torch.from_numpy(su).long()
    state = {"params": params, "opt": opt}

    def j_train():
        state["params"], state["opt"], l = jstep(state["params"], state["opt"], ju, jp, jn)
        l.block_until_ready()

    def t_train():
        torch_dvbpr.bpr_step(tm, topt, tu, tp, tn, 1e-4)

    def j_score():
        jscore(state["params"], jsu, ji).block_until_ready()

    def t_score():
        with torch.no_grad():
            tm.theta[tsu] @ tm.encode(ti).T

    t0 = time.perf_counter()
    j_train(), j_score()
    compile_s = time.perf_counter() - t0
    programs = {"jax_train": j_train, "torch_train": t_train, "jax_score": j_score, "torch_score": t_score}
    for _ in range(a.warmup):
        for fn in programs.values():
            fn()
    res = {k: [] for k in programs}
    for i in range(a.rounds):
        order = list(programs) if i % 2 == 0 else ["torch_train", "jax_train", "torch_score", "jax_score"]
        for k in order:
            res[k].append(timed(programs[k]))
    load1 = os.getloadavg()
    print(f"DVBPR {a.size}: {cfg}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {os.cpu_count()} CPUs; load average (1/5/15 min) "
          f"{'/'.join(f'{x:.2f}' for x in load0)} -> {'/'.join(f'{x:.2f}' for x in load1)}; JAX compile "
          f"{compile_s:.1f}s; {a.warmup} warm-up + {a.rounds} interleaved rounds, ms median (min-max)")
    if max(load0[0], load1[0]) > 0.25 * (os.cpu_count() or 1):
        print("WARNING: the machine is loaded (1-minute load average above a quarter of the CPUs): figures are "
              "disturbed; rerun on an idle machine before quoting them")
    print("| program | JAX ms | PyTorch ms | PyTorch / JAX (medians) | (mins) |\n|---|---|---|---|---|")
    for what in ("train", "score"):
        j, t = res[f"jax_{what}"], res[f"torch_{what}"]
        print(f"| {what} (batch {a.batch if what == 'train' else f'{a.users}x{a.items}'}) | {fmt(j)} | {fmt(t)} | "
              f"{np.median(t) / np.median(j):.2f}x | {min(t) / min(j):.2f}x |")


if __name__ == "__main__":
    main()
