"""Where DVBPR's catalogue scoring spends its time: each conv stage of the item encoder, JAX vs PyTorch, CPU.

    PYTHONPATH=. python benchmarks/dvbpr_profile.py [--size demo] [--items 960] [--rounds 15]
For every conv stage (its real input shape at `--items` rows) it times, after warm-up, interleaved: the Flax conv
as XLA compiles it (`nnx.Conv`), the library's matmul form (`models.dvbpr.small_map_conv`) and the PyTorch conv,
median (min) ms, and prints the op XLA:CPU runs for the Flax conv. This is how the slow stage was found: on the
demo's 8x8 latents the last stage (2x2 map, 3x3 kernel, stride 1) was rewritten by XLA into a convolution with
swapped operands that runs outside the fast conv library (~110 of the encoder's ~130 ms); `ItemEncoder` now runs
such stages as `small_map_conv`.
"""
from __future__ import annotations

import argparse
import os
import re

import jax
import numpy as np
import torch
from flax import nnx

from benchmarks.dvbpr import SIZES, build, fmt, timed
from dualfashion_jax.models.dvbpr import DVBPR, small_map_conv
from dualfashion_jax.reference import torch_dvbpr


def conv_op(fn, x) -> str:
    """The optimised HLO line that computes the conv: an XLA conv library call (ynn/onednn fusion) or a plain loop."""
    hlo = fn.lower(x).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    for line in entry.splitlines():
        if "convolution(" in line or "custom-call" in line or ("fusion(" in line and "ynn" in line):
            line = re.sub(r", metadata=\{.*?\}", "", line.strip())
            return re.sub(r",? ?backend_config=.*", "", line)[:150]
    return "(no convolution op)"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="demo", choices=sorted(SIZES))
    p.add_argument("--items", type=int, default=960)
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args(argv)
    cfg = build(a.size, 8)
    model = DVBPR(cfg, rngs=nnx.Rngs(0))
    tm = torch_dvbpr.from_jax(model)
    h = np.random.default_rng(0).standard_normal((a.items, cfg.input_size, cfg.input_size, cfg.in_channels))
    h = h.astype(np.float32)
    print(f"DVBPR {a.size}, {a.items} items; jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.2f}; ms median (min-max)")
    print("| stage | input | stride | nnx.Conv (XLA) | small_map_conv | PyTorch | XLA op of nnx.Conv |")
    print("|---|---|---|---|---|---|---|")
    for k, (c, tc, s) in enumerate(zip(model.encoder.convs, tm.convs, cfg.strides())):
        xj = jax.numpy.asarray(h)
        xt = torch.from_numpy(np.ascontiguousarray(h.transpose(0, 3, 1, 2)))
        native = jax.jit(lambda x, c=c: c(x))
        matmul = jax.jit(lambda x, c=c, s=s: small_map_conv(x, c, s))
        progs = {"native": lambda: native(xj).block_until_ready(), "matmul": lambda: matmul(xj).block_until_ready()}
        progs["torch"] = torch.no_grad()(lambda tc=tc: tc(xt))
        res = {n: [] for n in progs}
        for i in range(a.rounds + 2):
            for n in (list(progs) if i % 2 == 0 else list(progs)[::-1]):
                t = timed(progs[n])
                if i >= 2:  # two warm-up rounds (compile included in the first)
                    res[n].append(t)
        print(f"| {k} | {list(h.shape[1:])} | {s} | {fmt(res['native'])} | {fmt(res['matmul'])} | "
              f"{fmt(res['torch'])} | `{conv_op(native, xj)}` |")
        h = np.asarray(jax.nn.relu(native(xj)))


if __name__ == "__main__":
    main()
