"""CPU lever (issue #19), A/B'd in one process with the PyTorch step: the bench train step with the linear layers'
N-d dot_general ("nd", before) vs the same dots on inputs flattened to 2-D ("flat": `models.layers.flat_dot_general`,
the default since f4768cd), and flattened with the weight gradient as a plain [K, R] x [R, N] GEMM on an explicitly
transposed copy ("flat_vjp", custom_vjp; gradients equal, not adopted: no gain beyond flat).

    python benchmarks/cpu_flat_dots.py small 20      # config (small | demo), interleaved rounds
"""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_levers as cl  # noqa: E402
import train_step as ts  # noqa: E402

from dualfashion_jax.core import host_memory  # noqa: E402
from dualfashion_jax.models import layers  # noqa: E402


def _flat(x: jax.Array) -> jax.Array:
    """[..., K] -> [R, K]."""
    return x.reshape(-1, x.shape[-1])


@jax.custom_vjp
def mm(x2: jax.Array, w: jax.Array) -> jax.Array:
    """[R, K] x [K, N] -> [R, N]; backward: dx = g w^T, dw = (x^T materialised) g."""
    return x2 @ w


def _mm_fwd(x2, w):
    return x2 @ w, (x2, w)


def _mm_bwd(res, g):
    x2, w = res
    xt = jax.lax.optimization_barrier(jnp.transpose(x2))  # [K, R] materialised: a plain GEMM, no transposed operand
    return g @ w.T, xt @ g


mm.defvjp(_mm_fwd, _mm_bwd)


def flat_dot(mode: str):
    """An nnx.Linear `dot_general` that flattens the inputs to 2-D and uses `mm` ("vjp")."""
    def dot(x, w, dims, precision=None, preferred_element_type=None, out_sharding=None):
        y = mm(_flat(x), w)  # [R, N]
        return y.reshape(*x.shape[:-1], w.shape[-1])  # [..., N]
    return dot


def main() -> None:
    """Builds the three JAX variants and the PyTorch step, times them interleaved, prints medians."""
    host_memory.keep_freed_memory()
    cfgname = sys.argv[1] if len(sys.argv) > 1 else "small"
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    batch, txt = (16, 72) if cfgname == "demo" else (4, 64)
    orig = layers.flat_dot_general  # the variants differ only in the dot_general layers.linear gives nnx.Linear
    fns = {}
    for name, dg in [("nd", jax.lax.dot_general), ("flat", orig), ("flat_vjp", flat_dot("vjp"))]:
        layers.flat_dot_general = dg
        cfg = ts.preset(cfgname, stage2=False, scan_layers=True)
        fns[name], host = cl.jax_variant(cfg, batch, txt, {})
    layers.flat_dot_general = orig
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    fns["torch"] = ts.torch_step(ts.preset(cfgname, stage2=False), host)
    load0 = os.getloadavg()[0]
    t = ts.interleaved(fns, 2, iters)
    print(f"[{cfgname}] B={batch} txt={txt}; load avg {load0:.2f} -> {os.getloadavg()[0]:.2f}; {iters} interleaved rounds")
    for n, x in t.items():
        print(f"  {n:>10}: {ts.fmt(x)}  JAX/PyTorch {np.median(x) / np.median(t['torch']):.2f}", flush=True)


if __name__ == "__main__":
    main()
