"""Train-step benchmark: the jitted JAX step vs the PyTorch reference step, same config/batch/AdamW.

CPU, side by side (default):
    python benchmarks/train_step.py --configs tiny,small --batch 4 --txt_len 64
GPU/TPU, JAX only (step time, images/s, MFU, XLA's FLOP count and memory):
    python benchmarks/train_step.py --device gpu --config sd3_medium --batch 8 --txt_len 256 --dtype bfloat16 \
        --remat dots_with_no_batch_dims --attention auto
The step is one optimizer update (AdamW, clip 2.0, EMA) of the DualMMDiT on a rectified-flow x0 loss on the
image head + cross-entropy on the text head (both heads run), with random latents and random "T5" states:
frozen encoders and data loading are excluded by design (jax_anchors.md §5.2).

Model FLOPs per sample come from `dualfashion_jax/flops.py` (fwd + bwd, remat recompute excluded: trunk
72 L d^2 N, attention 12 L N^2 d, text head 6 d V N_txt, patch/context/AdaLN terms; docs/performance.md).
MFU = FLOPs/sample * batch / (step time * devices * peak bf16 FLOP/s) via `flops.mfu`. XLA's
`compiled.cost_analysis()["flops"]` is printed beside it (per device; counts remat recompute and elementwise
ops, and counts a scanned layer loop's body once: use --no_scan for a like-for-like count).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from dualfashion_jax import flops

PEAK_BF16 = flops.PEAK_BF16  # re-exported for callers of this script


def train_flops_per_sample(cfg, n_img: int, n_txt: int) -> dict[str, float]:
    """Model FLOPs of one benchmark sample (fwd+bwd, both heads, text head on all n_txt), by term (flops.py)."""
    return flops.train_from_forward(flops.forward_flops(cfg, n_img, n_txt, image_head=True, text_kept=n_txt))

def _time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def jax_step(cfg, batch: int, txt_len: int, accum: int = 1):
    """(run_once, compiled) for one sharded, donated train step over all local devices (fsdp mesh)."""
    import jax
    import jax.numpy as jnp
    import ml_collections as mlc
    import numpy as np
    from flax import nnx

    import dualfashion_jax.models  # noqa: F401
    from dualfashion_jax.models import mmdit
    from dualfashion_jax.sharding import mesh as mesh_lib, partition, rules
    from dualfashion_jax.training import optim, step as step_lib

    ocfg = mlc.ConfigDict(dict(lr=3e-5, warmup_steps=2000, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2,
                               clip_norm=2.0, ema_decay=0.9999, ema_start_step=0))
    mesh = mesh_lib.make_mesh({"fsdp": -1})
    r = rules.get("fsdp")
    factory = lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    g, ap, ar = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    tx, sched = optim.make_optimizer(ocfg)
    psh = partition.state_shardings(ap, mesh, r)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ssh = {"params": psh, "rest": partition.state_shardings(ar, mesh, r),
           "opt": partition.opt_state_shardings(tx, ap, psh, mesh), "ema": psh, "step": rep, "rng": rep}
    state = partition.sharded_init(
        lambda: step_lib.init_state(*nnx.split(factory(), nnx.Param, ...)[1:], tx, 0, True), ssh)

    def loss_fn(model, frozen, b, key):
        x0 = b["latents"]
        sigma = jax.random.uniform(key, (x0.shape[0],))
        s = sigma[:, None, None, None]
        x_in = (1 - s) * x0 + s * jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
        v, logits = model(x_in, b["txt"], sigma * 1000.0)
        l_img = jnp.mean(jnp.square(x_in - s * v.astype(jnp.float32) - x0))
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), b["ids"][..., None], -1))
        return l_img + 0.2 * ce, {}

    h, w = cfg.latent_hw
    rng = np.random.default_rng(0)
    host = {"latents": rng.standard_normal((batch, h, w, cfg.in_channels), np.float32),
            "txt": rng.standard_normal((batch, txt_len, cfg.joint_attention_dim), np.float32),
            "ids": rng.integers(0, cfg.vocab_size, (batch, txt_len)).astype(np.int32)}
    b = partition.put_batch(host, mesh)
    fn = step_lib.jit_step(step_lib.make_step_fn(g, {}, loss_fn, tx, sched, ocfg, accum, mesh), ssh,
                           partition.batch_sharding(mesh), {}, mesh)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):  # the context mesh lets the splash backend run per shard (attention_splash.py)
        compiled = fn.lower(state, b, {}).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def run():
        box["state"], m = compiled(box["state"], b, {})
        jax.block_until_ready(m["loss"])

    return run, compiled, compile_s, host


def torch_step(cfg, host):
    """The PyTorch reference step (diffusers-based SD3JointModelFlexible, AdamW, clip 2.0) on the same batch."""
    import torch

    from dualfashion_jax.reference.torch_mmdit import build_reference

    torch.manual_seed(0)
    model = build_reference(cfg, stage2=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    x0 = torch.from_numpy(host["latents"]).permute(0, 3, 1, 2).contiguous()  # NCHW
    txt = torch.from_numpy(host["txt"])
    ids = torch.from_numpy(host["ids"]).long()

    def run():
        sigma = torch.rand(x0.shape[0])
        s = sigma[:, None, None, None]
        x_in = (1 - s) * x0 + s * torch.randn_like(x0)
        v, logits = model(x_in, txt, sigma * 1000.0)
        l_img = torch.mean((x_in - s * v - x0) ** 2)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1))
        loss = l_img + 0.2 * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()

    return run


def _cost_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca["flops"])
    except Exception:  # noqa: BLE001
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "tpu"])
    p.add_argument("--configs", default="tiny,small", help="CPU mode: comma-separated MMDiT presets")
    p.add_argument("--config", default="sd3_medium", help="GPU/TPU mode: one MMDiT preset")
    p.add_argument("--batch", type=int, default=4, help="global batch (GPU/TPU: use a multiple of devices)")
    p.add_argument("--txt_len", type=int, default=64)
    p.add_argument("--dtype", default=None, help="compute dtype (default fp32 on CPU, bfloat16 on GPU/TPU)")
    p.add_argument("--remat", default="none")
    p.add_argument("--attention", default="xla")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chip", default="h100", choices=sorted(flops.PEAK_BF16), help="peak FLOP/s used for MFU")
    p.add_argument("--no_scan", action="store_true", help="unroll the layer loop (exact cost_analysis FLOPs)")
    p.add_argument("--no_torch", action="store_true")
    a = p.parse_args(argv)
    if a.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    from dualfashion_jax.models import mmdit_config

    dtype = jnp.dtype(a.dtype or ("float32" if a.device == "cpu" else "bfloat16"))
    names = a.configs.split(",") if a.device == "cpu" else [a.config]
    print(f"devices: {jax.devices()}")
    for name in names:
        cfg = mmdit_config.get(name, stage2=False, dtype=dtype, remat_policy=a.remat, attention_backend=a.attention,
                               scan_layers=not a.no_scan)
        h, w = cfg.latent_hw
        n_img = (h // cfg.patch_size) * (w // cfg.patch_size)
        run, compiled, compile_s, host = jax_step(cfg, a.batch, a.txt_len)
        t_jax = _time(run, a.warmup, a.iters)
        fl = train_flops_per_sample(cfg, n_img, a.txt_len)
        step_flops = fl["total"] * a.batch
        n_dev = jax.device_count()
        line = (f"[{name}] B={a.batch} N_img={n_img} N_txt={a.txt_len} {dtype.name}: JAX {t_jax * 1e3:.1f} ms/step "
                f"(compile {compile_s:.1f}s), {a.batch / t_jax:.1f} images/s")
        xla = _cost_flops(compiled)
        if xla:
            line += f"; model FLOPs/step {step_flops:.3e} vs XLA cost_analysis {xla * n_dev:.3e} (x{n_dev} dev)"
        if a.device != "cpu":
            mfu = flops.mfu(step_flops, t_jax, n_dev, a.chip)
            line += f"; MFU {100 * mfu:.1f}% of {a.chip} bf16 peak"
        try:
            mem = compiled.memory_analysis()
            peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                    - mem.alias_size_in_bytes) / 2**30
            line += f"; XLA memory/device {peak:.2f} GiB"
        except Exception:  # noqa: BLE001
            pass
        print(line, flush=True)
        if a.device == "cpu" and not a.no_torch:
            try:
                import torch
                torch.set_num_threads(os.cpu_count() or 1)
                t_torch = _time(torch_step(cfg, host), a.warmup, a.iters)
                print(f"[{name}] PyTorch reference {t_torch * 1e3:.1f} ms/step; JAX/PyTorch time ratio "
                      f"{t_jax / t_torch:.2f} (<1 = JAX faster)", flush=True)
            except ImportError as e:
                print(f"[{name}] PyTorch reference skipped: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
