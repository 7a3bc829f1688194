"""PFITB sampling benchmark: the JAX batched jitted sampler vs a PyTorch loop written as the original does it,
same config, same weights (the torch reference model converted to Flax), interleaved runs; items/s.

CPU, side by side (default):
    python benchmarks/sampling.py --config tiny --rows 8 --batch 8 --steps 28 --caption-steps 64
The demo's sampling shape (DemoPlan: 12 Euler steps, 8 caption steps, 16 rows per batch, 24-token segments):
    python benchmarks/sampling.py --config demo --rows 16 --batch 16 --steps 12 --caption-steps 8 --txt-len 24
    ... --scales 1,1,4   (the demo's guidance: JAX runs the 2 branches of weight != 0, the original loop all 4)
GPU (JAX batched vs torch per-row on CUDA when torch sees a GPU, else JAX only):
    python benchmarks/sampling.py --config sd3_medium --device gpu --dtype bfloat16 --rows 32 --batch 8
One PFITB item = one row: 1 image (`--steps` Euler steps, 4-way guidance = a batch of 4 per step) + 1 caption
(`--caption-steps` masked-diffusion steps, logits of the first L positions of [x_t, pref, sent, template]).
JAX: B rows per jitted call (image and caption samplers of dualfashion_jax.samplers), `lax.fori_loop` over steps.
Torch: per row, a Python loop over steps (batch 4 for guidance), the caching rule of the original caption sampler.
Frozen encoders are excluded on both sides (as benchmarks/train_step.py): the text segments are fixed random
"T5" states and the caption branch's T5(x_t) is a shared embedding table lookup; the VAE is not run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from dualfashion_jax.core import host_memory


def _inputs(cfg, rows: int, txt_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = cfg.latent_hw
    d = cfg.joint_attention_dim
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    mask_id = cfg.vocab_size - 1
    tmpl = rng.integers(0, cfg.vocab_size - 1, (rows, txt_len)).astype(np.int32)
    labels = np.zeros((rows, txt_len), np.int32)
    labels[:, 2: 2 + txt_len // 2] = 1  # half of the caption positions are attribute values to generate
    return {"ctx": f(rows, h, w, cfg.in_channels), "noise": f(rows, h, w, cfg.in_channels),
            "pref": f(rows, txt_len, d), "sent": f(rows, txt_len, d), "neg": f(1, txt_len, d),
            "tmpl_emb": f(rows, txt_len, d), "table": 0.1 * f(cfg.vocab_size, d), "tmpl": tmpl,
            "labels": labels, "mask_id": mask_id}


def jax_sampler(cfg, model, inp, batch: int, steps: int, caption_steps: int, scales=(8.0, 7.0, 8.0)):
    """run(rows) -> None: all rows in batches of `batch` through one jitted image + caption program."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from dualfashion_jax.samplers.flow_euler import GuidanceConfig, sample_images
    from dualfashion_jax.samplers.masked_caption import caption_logits_fn, sample_caption

    g = GuidanceConfig(num_steps=steps, text_scale=scales[0], context_scale=scales[1], preference_scale=scales[2])
    graph, state = nnx.split(model)
    table = jnp.asarray(inp["table"])
    length = inp["tmpl"].shape[1]

    @jax.jit
    def program(state, ctx, noise, pref, sent, tmpl_emb, tmpl, labels, key):
        m = nnx.merge(graph, state)
        off = m.stage2.offset(ctx, deterministic=True)
        neg = jnp.broadcast_to(jnp.asarray(inp["neg"]), pref.shape)
        lat = sample_images(m, noise, off, neg, sent, pref, g)
        logits_fn = caption_logits_fn(m, lambda ids, _: table[ids], ctx, [pref, sent, tmpl_emb], length)
        ids = sample_caption(logits_fn, tmpl, jnp.ones_like(tmpl), labels, mask_id=inp["mask_id"], key=key,
                             steps=caption_steps)
        return lat, ids

    n = inp["ctx"].shape[0]

    def run():
        outs = []
        for s in range(0, n, batch):
            sl = slice(s, s + batch)
            outs.append(program(state, *(jnp.asarray(inp[k][sl]) for k in ("ctx", "noise", "pref", "sent",
                                                                               "tmpl_emb", "tmpl", "labels")),
                                jax.random.key(s)))
        jax.block_until_ready(outs)
    return run


def torch_sampler(cfg, ref, inp, steps: int, caption_steps: int, device: str, dtype, scales=(8.0, 7.0, 8.0)):
    """run() -> None: the original's per-row loops (4-way guidance batch of 4; ddpm_cache caption sampler)."""
    import torch

    from dualfashion_jax.diffusion.flow import inference_sigmas

    ref = ref.to(device=device, dtype=dtype)
    T = lambda a: torch.as_tensor(np.asarray(a), device=device)  # noqa: E731
    sig = inference_sigmas(steps, 3.0).tolist()
    table, neg = T(inp["table"]).to(dtype), T(inp["neg"]).to(dtype)
    mask_id, (sT, sM, sP) = inp["mask_id"], scales

    @torch.no_grad()
    def row(i):
        nchw = lambda a: T(a[i:i + 1]).permute(0, 3, 1, 2).to(dtype)  # noqa: E731
        ctx, x = nchw(inp["ctx"]), nchw(inp["noise"]).float()
        pref, sent, tmpl_emb = (T(inp[k][i:i + 1]).to(dtype) for k in ("pref", "sent", "tmpl_emb"))
        c = ref.stage2_offset(ctx)
        txt = torch.cat([torch.cat([neg, neg], 1), torch.cat([neg, sent], 1), torch.cat([neg, sent], 1),
                         torch.cat([pref, sent], 1)])
        for k in range(steps):
            xi = x.to(dtype)
            lat = torch.cat([xi, xi, xi + 0.1 * c, xi + 0.1 * c])
            v = ref(lat, txt, torch.full((4,), sig[k] * 1000.0, device=device, dtype=dtype))[0].float()
            v0, vt, vm, vp = v.chunk(4)
            x = x + (sig[k + 1] - sig[k]) * (v0 + sT * (vt - v0) + sM * (vm - vt) + sP * (vp - vm))
        ids = T(inp["tmpl"][i:i + 1]).long()
        ids = torch.where(T(inp["labels"][i:i + 1]) > 0, torch.full_like(ids, mask_id), ids)
        ts = np.linspace(1.0, 1e-5, caption_steps + 1)
        dt, p = (1 - 1e-5) / caption_steps, None
        for k in range(caption_steps):
            if p is None:
                logits = ref(ctx, torch.cat([table[ids], pref, sent, tmpl_emb], 1),
                             torch.zeros(1, device=device, dtype=dtype))[1][:, : ids.shape[1]].float()
                logits[..., mask_id] = -1e6
                lp = torch.log_softmax(logits, -1)
                keep = ids != mask_id
                lp = torch.where(keep[..., None], torch.full_like(lp, -1e6), lp)
                lp.scatter_(-1, ids[..., None], torch.where(keep[..., None], 0.0, lp.gather(-1, ids[..., None])))
                p = lp.exp()
            t, s = ts[k], ts[k] - dt
            q = p * (t - s)
            q[..., mask_id] = s
            new = (q / (1e-10 - torch.log(torch.rand_like(q) + 1e-10))).argmax(-1)
            nxt = torch.where(ids != mask_id, ids, new)
            if not torch.equal(nxt, ids):
                p = None  # the original reuses p only while nothing changed
            ids = nxt
        if device == "cuda":
            torch.cuda.synchronize()

    return lambda: [row(i) for i in range(inp["ctx"].shape[0])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny", help="MMDiT preset: tiny | small | demo | sd3_medium")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--txt-len", type=int, default=32, help="tokens per text segment (256 in the original)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--caption-steps", type=int, default=64)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs of each side (after a warm-up)")
    p.add_argument("--no_scan", action="store_true", help="unroll the layer loop (the demo's CPU setting)")
    p.add_argument("--scales", default="8,7,8", help="4-way guidance text,context,preference scales (the "
                   "original's 8,7,8; the demo's 1,1,4 runs 2 branches in JAX, the original loop always 4)")
    a = p.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")
    if a.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from dualfashion_jax.conversion import mmdit as conv
    from dualfashion_jax.models import mmdit_config
    from dualfashion_jax.samplers.flow_euler import GuidanceConfig

    if a.config == "demo":  # the demo's trunk (benchmarks/train_step.py DEMO) with its stage-2 modules
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from train_step import DEMO
        cfg = mmdit_config.get("small", **DEMO, dtype=a.dtype, scan_layers=not a.no_scan)
    else:
        cfg = mmdit_config.get(a.config, dtype=a.dtype, scan_layers=not a.no_scan)  # compute dtype (params fp32)
    inp = _inputs(cfg, a.rows, a.txt_len)
    ref = None
    if a.config == "sd3_medium" and a.no_torch:
        from flax import nnx
        from dualfashion_jax.models import mmdit
        model = mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))
    else:
        from dualfashion_jax.reference.torch_mmdit import build_reference
        ref = build_reference(cfg, seed=0)
        weights = {k: v.detach().float().numpy() for k, v in ref.state_dict().items()}
        model = conv.model_from_flat(cfg, conv.convert_weights(weights, cfg, source="torch reference"))
    print(f"config {a.config} ({cfg.num_layers} layers, D={cfg.hidden_size}, latent {cfg.latent_hw}, vocab "
          f"{cfg.vocab_size}), {a.rows} rows, image steps {a.steps} (4-way), caption steps {a.caption_steps}, "
          f"text segments {a.txt_len}, {a.dtype}, JAX on {jax.devices()[0].platform} x{jax.device_count()}")
    scales = tuple(float(v) for v in a.scales.split(","))
    g = GuidanceConfig(text_scale=scales[0], context_scale=scales[1], preference_scale=scales[2])
    print(f"guidance scales {a.scales}: JAX runs branches {','.join(g.branches)}, the torch loop 0,T,M,P")
    run = jax_sampler(cfg, model, inp, a.batch, a.steps, a.caption_steps, scales)
    t0 = time.perf_counter()
    run()
    print(f"JAX  compile+first run {time.perf_counter() - t0:.1f}s")
    fns = {"jax": run}
    if not (a.no_torch or ref is None):
        import torch

        dev = "cuda" if a.device == "gpu" and torch.cuda.is_available() else "cpu"
        if dev == "cpu" and a.device == "gpu":
            print("torch sees no GPU: skipping the torch side")
        else:
            torch.manual_seed(0)
            if a.torch_threads:
                torch.set_num_threads(a.torch_threads)
            tdt = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32
            fns["torch"] = torch_sampler(cfg, ref, inp, a.steps, a.caption_steps, dev, tdt, scales)
            fns["torch"]()  # warm-up
    load0 = os.getloadavg()[0]
    times = {n: [] for n in fns}
    for _ in range(a.repeats):  # interleaved: one JAX pass, one torch pass per round
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)
    med = {n: float(np.median(t)) for n, t in times.items()}
    for n, t in times.items():
        label = f"JAX  batched jit (batch {a.batch})" if n == "jax" else "torch per-row loop"
        print(f"{label}: {a.rows / med[n]:8.3f} items/s (median {med[n]:.2f}s, {min(t):.2f}-{max(t):.2f}s "
              f"over {a.repeats} interleaved runs)")
    print(f"load avg {load0:.2f} -> {os.getloadavg()[0]:.2f}; cpus {len(os.sched_getaffinity(0))}")
    if "torch" in med:
        r = np.asarray(times["torch"]) / np.asarray(times["jax"])
        print(f"speed-up JAX / torch: {med['torch'] / med['jax']:.2f}x (per-round {r.min():.2f}-{r.max():.2f}x)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
