"""Train-step benchmark: the jitted JAX step vs the PyTorch reference step, same config/batch/AdamW/EMA.

CPU, side by side, interleaved (one JAX step, one PyTorch step per round; median and min-max; load average):
    python benchmarks/train_step.py --configs tiny,small,demo
GPU/TPU, JAX only (step time, images/s, MFU, XLA's FLOP count):
    python benchmarks/train_step.py --device gpu --config sd3_medium --batch 8 --txt_len 256 --dtype bfloat16 \
        --remat dots_with_no_batch_dims --attention auto
The step is one optimizer update (AdamW, clip 2.0, EMA) of the DualMMDiT on a rectified-flow x0 loss on the
image head + cross-entropy on the text head (both heads run), with random latents and random "T5" states:
frozen encoders and data loading are excluded by design (jax_anchors.md §5.2). The PyTorch side does the same
work, EMA included (`--no_torch_ema` drops it there only).

Model FLOPs per sample come from `dualfashion_jax/perf/flops.py` (fwd + bwd, remat recompute excluded; see
docs/performance.md). MFU = FLOPs/sample * batch / (step time * devices * peak bf16 FLOP/s). Beside it: the
compiled HLO's matmul FLOPs with loop trip counts (`flops.compiled_matmul_flops`) and XLA's
`cost_analysis()["flops"]`, which counts a scanned layer loop's body once (hence its ~1.7x under-count).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from dualfashion_jax.core import host_memory
from dualfashion_jax.perf import flops

PEAK_BF16 = flops.PEAK_BF16  # re-exported for callers of this script


def train_flops_per_sample(cfg, n_img: int, n_txt: int) -> dict[str, float]:
    """Model FLOPs of one benchmark sample (fwd+bwd, both heads, text head on all n_txt), by term (flops.py)."""
    return flops.train_from_forward(flops.forward_flops(cfg, n_img, n_txt, image_head=True, text_kept=n_txt))

# The demo's stage-2 trunk (dualfashion_jax/demo.py DemoPlan.model): 4 x (2 heads x 32), patch 1 on 8x8x16 latents,
# T5 `small_demo` width 64, ~400-token vocab; run here with 3 text segments of 24 tokens (--txt_len 72, --batch 16).
DEMO = dict(num_layers=4, num_heads=2, head_dim=32, patch_size=1, sample_size=8, latent_size=8, pos_embed_max_size=16,
            joint_attention_dim=64, vocab_size=400, matching_hidden=64)


def preset(name: str, **over):
    """An MMDiT preset by name ('demo' = the demo's trunk on top of 'small'), stage-2 modules off."""
    from dualfashion_jax.models import mmdit_config
    return mmdit_config.get("small", **DEMO, **over) if name == "demo" else mmdit_config.get(name, **over)


def host_batch(cfg, batch: int, txt_len: int) -> dict[str, np.ndarray]:
    """The bench step's seeded host batch: latents [B, h, w, C], T5-like txt [B, L, D], caption ids [B, L]."""
    h, w = cfg.latent_hw
    rng = np.random.default_rng(0)
    return {"latents": rng.standard_normal((batch, h, w, cfg.in_channels), np.float32),
            "txt": rng.standard_normal((batch, txt_len, cfg.joint_attention_dim), np.float32),
            "ids": rng.integers(0, cfg.vocab_size, (batch, txt_len)).astype(np.int32)}


def jax_step(cfg, batch: int, txt_len: int):
    """(run_once, compiled, compile_s, host batch) for the bench step (`bench_step.build`: sharded, donated)."""
    import jax
    import numpy as np

    from dualfashion_jax.perf import step as bench_step
    from dualfashion_jax.sharding import partition

    fn, _, _, init, mesh = bench_step.build(cfg, bench_step.StepShape(batch, txt_len))
    host = host_batch(cfg, batch, txt_len)
    with jax.set_mesh(mesh):  # the context mesh lets the splash backend run per shard (attention_splash.py)
        b = partition.put_batch(host, mesh)
        state = init()
        t0 = time.perf_counter()
        compiled = fn.lower(state, b, {}).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def run():
        box["state"], m = compiled(box["state"], b, {})
        jax.block_until_ready(m["loss"])

    return run, compiled, compile_s, host


def interleaved(fns: dict, warmup: int, iters: int) -> dict[str, np.ndarray]:
    """Seconds per call of each fn, timed round-robin (one call of each per round) after `warmup` rounds."""
    times = {n: [] for n in fns}
    for r in range(warmup + iters):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return {n: np.asarray(t) for n, t in times.items()}


def fmt(t: np.ndarray) -> str:
    """'median (min-max) ms'."""
    return f"{np.median(t) * 1e3:.1f} ms ({t.min() * 1e3:.1f}-{t.max() * 1e3:.1f})"


def torch_step(cfg, host, ema_decay: float | None = 0.9999):
    """The PyTorch reference step (diffusers-based SD3JointModelFlexible, AdamW, clip 2.0, the same x0 + CE loss)
    on the same batch; with `ema_decay`, the same fp32 parameter EMA as the JAX step (`torch._foreach_lerp_`)."""
    import torch

    from dualfashion_jax.reference.torch_mmdit import build_reference

    torch.manual_seed(0)
    model = build_reference(cfg, stage2=False).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params] if ema_decay is not None else None
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
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, params, 1.0 - ema_decay)

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
    p.add_argument("--configs", default="tiny,small,demo", help="CPU mode: comma-separated presets ('demo': see DEMO)")
    p.add_argument("--config", default="sd3_medium", help="GPU/TPU mode: one MMDiT preset")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 4; 16 for 'demo')")
    p.add_argument("--txt_len", type=int, default=None, help="text tokens (default 64; 72 = 3 x 24 for 'demo')")
    p.add_argument("--dtype", default=None, help="compute dtype (default fp32 on CPU, bfloat16 on GPU/TPU)")
    p.add_argument("--remat", default="none")
    p.add_argument("--attention", default="xla")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chip", default="h100", choices=sorted(flops.PEAK_BF16), help="peak FLOP/s used for MFU")
    p.add_argument("--no_scan", action="store_true", help="unroll the layer loop")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--torch_threads", type=int, default=None, help="default: the CPUs this process may run on")
    p.add_argument("--no_torch_ema", action="store_true", help="PyTorch side without the EMA the JAX step does")
    a = p.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")
    if a.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(a.dtype or ("float32" if a.device == "cpu" else "bfloat16"))
    names = a.configs.split(",") if a.device == "cpu" else [a.config]
    print(f"devices: {jax.devices()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for name in names:
        cfg = preset(name, stage2=False, dtype=dtype, remat_policy=a.remat, attention_backend=a.attention,
                     scan_layers=not a.no_scan)
        batch = a.batch or (16 if name == "demo" else 4)
        txt_len = a.txt_len or (72 if name == "demo" else 64)
        h, w = cfg.latent_hw
        n_img = (h // cfg.patch_size) * (w // cfg.patch_size)
        run, compiled, compile_s, host = jax_step(cfg, batch, txt_len)
        fns = {"jax": run}
        if a.device == "cpu" and not a.no_torch:
            import torch
            torch.set_num_threads(a.torch_threads or len(os.sched_getaffinity(0)))
            fns["torch"] = torch_step(cfg, host, None if a.no_torch_ema else 0.9999)
        load0 = os.getloadavg()[0]
        t = interleaved(fns, a.warmup, a.iters)
        t_jax = float(np.median(t["jax"]))
        fl = train_flops_per_sample(cfg, n_img, txt_len)
        step_flops = fl["total"] * batch
        n_dev = jax.device_count()
        line = (f"[{name}] B={batch} N_img={n_img} N_txt={txt_len} {dtype.name}: JAX {fmt(t['jax'])}/step "
                f"(compile {compile_s:.1f}s), {batch / t_jax:.1f} images/s")
        xla = _cost_flops(compiled)
        line += (f"; model FLOPs/step {step_flops:.3e}, HLO matmul FLOPs (loop trip counts) "
                 f"{flops.compiled_matmul_flops(compiled) * n_dev:.3e}")
        if xla:
            line += f", cost_analysis {xla * n_dev:.3e} (counts a scanned layer once)"
        if a.device != "cpu":
            line += f"; MFU {100 * flops.mfu(step_flops, t_jax, n_dev, a.chip):.1f}% of {a.chip} bf16 peak"
        print(line, flush=True)
        if "torch" in fns:
            ratios = t["jax"] / t["torch"]
            print(f"[{name}] PyTorch reference {fmt(t['torch'])}/step (EMA {'off' if a.no_torch_ema else 'on'}, "
                  f"{torch.get_num_threads()} threads); JAX/PyTorch time {t_jax / np.median(t['torch']):.2f} "
                  f"(per-round {np.median(ratios):.2f}, {ratios.min():.2f}-{ratios.max():.2f}; <1 = JAX faster); "
                  f"load avg {load0:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
