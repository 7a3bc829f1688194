"""Diagnostic (issue #20): a stage-1 (text -> image) model generating items from their own stage-1 prompts
(re-captions), written as a PFITB-shaped results folder so `dualfashion-jax evaluate` scores it.

    python scripts/diag_stage1_t2i.py --demo /work/runs/demo_base --ckpt /work/runs/demo_base/stage1 --items test --out OUT
--items test: the 160 PFITB test GT items (the folder is a copy of <demo>/generations/pfitb with every generated
image replaced); --items train: 160 items of the training outfits that are not test GT items (GT images = those
items, the generated ones from their prompts). Sampler: Euler, --steps, shift 3, conditional only (T5(prompt),
no guidance), as stage 1 trained: one L-token segment, T5 without a mask.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from dualfashion_jax import cli
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.diffusion.flow import inference_sigmas, NUM_TRAIN_TIMESTEPS
from dualfashion_jax.diffusion.pure_fn import as_pure
from dualfashion_jax.generation.bundle import load_bundle
from dualfashion_jax.models import vae as vae_lib


def sample(bundle, prompts: list[str], seed: int, steps: int, shift: float) -> np.ndarray:
    """uint8 images [N, S, S, 3] for N prompts (conditional Euler flow)."""
    ids, _ = bundle.tokenizer.encode(prompts)  # [N, L]
    g, st = nnx.split(bundle.model)
    tg, tst = nnx.split(bundle.t5)
    vg, vst = nnx.split(bundle.vae)
    h, w = bundle.latent_hw
    c = bundle.model.config.in_channels
    sig = jnp.asarray(inference_sigmas(steps, shift))

    @jax.jit
    def run(st, tst, vst, ids, key):
        model, t5, vae = nnx.merge(g, st), nnx.merge(tg, tst), nnx.merge(vg, vst)
        txt = t5(ids, None).astype(jnp.float32)  # [B, L, D]
        model = as_pure(model)
        x = jax.random.normal(key, (ids.shape[0], h, w, c), jnp.float32)

        def step(i, x):
            s = sig[i]
            t = jnp.full((x.shape[0],), s * NUM_TRAIN_TIMESTEPS, jnp.float32)
            v = model(x, txt, t, heads=("image",), text_logits_len=None)[0].astype(jnp.float32)
            return x + (sig[i + 1] - s) * v

        x = jax.lax.fori_loop(0, steps, step, x)
        return vae_lib.decode_latents(vae, x)

    out = []
    for i in range(0, len(prompts), 32):
        im = run(st, tst, vst, jnp.asarray(ids[i:i + 32]), jax.random.fold_in(jax.random.key(seed), i))
        out.append(vae_lib.to_uint8(im))
    return np.concatenate(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--demo", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--items", choices=("test", "train"), default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    demo, out = pathlib.Path(a.demo), pathlib.Path(a.out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new --out")
    src = demo / "generations" / "pfitb"
    records = json.loads((src / "records.json").read_text())
    prompts = {d["iid"]: d["re_caption"] for d in json.loads((demo / "data/text/stage1.json").read_text())}
    gt_iids = [int(g["iid"]) for r in records["records"] for g in r["grd"]]
    if a.items == "train":
        tr = np.load(demo / "data/splits/train.npz")
        key = [k for k in tr.files if "item" in k or "outfit" in k][0]
        cand = [int(i) for i in np.unique(tr[key]) if int(i) > 0 and int(i) not in set(gt_iids) and int(i) in prompts]
        pick = np.random.default_rng(0).choice(cand, size=len(gt_iids), replace=False).tolist()
        print(f"train items from {key}: {len(cand)} candidates, {len(pick)} picked")
    else:
        pick = gt_iids
    bundle = load_bundle(a.ckpt, ema=True, data=str(demo / "data"))
    gen = sample(bundle, [prompts[i] for i in pick], a.seed, a.steps, a.shift)
    ds = SafeDataset(demo / "data")
    real = ItemImages(ds).many(np.asarray(pick))
    k = 0
    for r in records["records"]:
        grd = {g["slot"]: g for g in r["grd"]}
        for gi in r["gen"]:
            gt = grd[gi["slot"]]
            (out / gi["image"]).parent.mkdir(parents=True, exist_ok=True)
            (out / gt["image"]).parent.mkdir(parents=True, exist_ok=True)
            if a.items == "train":  # GT = the train item itself; its iid recorded for the oracle
                gt["iid"] = int(pick[k])
                r["outfit"][gi["slot"]] = int(pick[k])
                r["categories"][gi["slot"]] = int(ds.iid_category[pick[k]])
                Image.fromarray(real[k]).save(out / gt["image"])
            else:
                shutil.copy(src / gt["image"], out / gt["image"])
            Image.fromarray(gen[k]).save(out / gi["image"])
            k += 1
    (out / "records.json").write_text(json.dumps(records))
    for name in ("settings.json", "run.json"):
        shutil.copy(src / name, out / name)
    return cli.main(["evaluate", "--results", str(out), "--task", "pfitb", "--data", str(demo / "data"),
                     "--metrics", "oracle,fid_ratio,oracle_fidelity", "--no-progress"])


if __name__ == "__main__":
    sys.exit(main())
