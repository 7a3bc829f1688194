"""`dualfashion-jax encode-latents`: VAE-encode every item image of a dataset once into `latents/latents.npy`.

Output: `<data>/latents/latents.npy` float32 [num_items+1, h, w, C] in MODEL space ((z - shift) * scale, what the
MMDiT consumes) and `latents/meta.json` (mode, seed, vae, batch_size, image_size, shape). Index 0, the blank
item, is all zeros: DualFashion's zero context/null latent (spec §5.4), not the latent of a white image.
Items without an image path also stay zero and are counted in meta.json. `mode`: `sample` draws from the
posterior like DualFashion's training (key = fold_in(key(seed), batch index), so the batch size is recorded),
`mean` takes the posterior mode. Examples read the file memory-mapped (`data/images.ItemLatents`).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

from dualfashion_jax.data.format import SafeDataset, write_json
from dualfashion_jax.data.images import ItemImages

MODES = ("mean", "sample")


def load_vae(ckpt: str | os.PathLike):
    """(model, config) from a converted VAE checkpoint folder (`dualfashion-jax convert vae`)."""
    from flax import nnx

    from dualfashion_jax.core.converted import load_converted
    from dualfashion_jax.core.params import module_from_flat
    from dualfashion_jax.models import pixel_ae, vae

    meta, flat = load_converted(ckpt, kind="vae")
    if pixel_ae.is_pixel_config(meta.get("config")):  # the demo's space-to-depth stand-in VAE
        model = pixel_ae.load(ckpt)
        return model, model.cfg
    cfg = vae.VAEConfig.from_dict(meta["config"], source=str(Path(ckpt) / "config.json"))
    model = module_from_flat(lambda: vae.AutoencoderKL(cfg, rngs=nnx.Rngs(0)), flat, source=str(ckpt))
    return model, cfg


@functools.lru_cache(maxsize=8)
def _encoder(graphdef, vae_cfg, mode: str):
    """A jitted (state, uint8 images [B, S, S, 3], key) -> model-space latents [B, h, w, C]; cached per model."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from dualfashion_jax.models import vae

    @jax.jit
    def encode(state, x, key):
        model = nnx.merge(graphdef, state)
        post = model.encode(x.astype(jnp.float32) / 127.5 - 1.0)
        z = post.mode() if mode == "mean" else post.sample(key)
        return vae.to_model_latents(z, vae_cfg).astype(jnp.float32)

    return encode


def encode_dataset(data_dir: str | os.PathLike, ae, vae_cfg, *, mode: str = "sample", seed: int = 0,
                   batch_size: int = 16, vae_name: str = "<in-memory>", image_size: int | None = None,
                   progress: bool = True) -> Path:
    """Encode all items of the dataset at `data_dir`; returns the path of latents.npy."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ds = SafeDataset(data_dir)
    images = ItemImages(ds, image_size)
    n, size = ds.num_items, images.size
    paths = ds.image_paths
    todo = np.array([i for i in range(1, n + 1) if paths[i]], np.int64)
    graphdef, state = nnx.split(ae)
    encode = _encoder(graphdef, vae_cfg, mode)

    x0 = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8)
    out_shape = jax.eval_shape(encode, state, x0, jax.random.key(0)).shape[1:]
    out_dir = ds.latents_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "latents.npy.tmp"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n + 1, *out_shape))
    arr[0] = 0.0
    missing = np.setdiff1d(np.arange(1, n + 1), todo)
    arr[missing] = 0.0
    base = jax.random.key(seed)
    starts = range(0, len(todo), batch_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"encode-latents {ds.name}", unit="img", file=sys.stderr)
    for b, s in enumerate(starts):
        ids = todo[s:s + batch_size]
        x = images.many(ids)  # [k, S, S, 3]
        if len(ids) < batch_size:  # pad to a fixed shape: one compile
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - len(ids), 0)])
        z = np.asarray(encode(state, x, jax.random.fold_in(base, b)))
        arr[ids] = z[: len(ids)]
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    arr.flush()
    del arr
    os.replace(tmp, out_dir / "latents.npy")
    write_json(out_dir / "meta.json", {
        "mode": mode, "seed": int(seed), "vae": str(vae_name), "batch_size": int(batch_size),
        "image_size": int(size), "shape": [n + 1, *map(int, out_shape)], "space": "model ((z - shift) * scale)",
        "blank": "zeros", "items_without_image": int(len(missing))})
    return out_dir / "latents.npy"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dualfashion-jax encode-latents", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="safe-format dataset folder (with images/)")
    p.add_argument("--vae", required=True, help="converted VAE checkpoint folder (dualfashion-jax convert vae)")
    p.add_argument("--mode", choices=MODES, default="sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=None, help="default: the dataset's meta.json image_size")
    a = p.parse_args(argv)
    ae, cfg = load_vae(a.vae)
    out = encode_dataset(a.data, ae, cfg, mode=a.mode, seed=a.seed, batch_size=a.batch_size,
                         vae_name=str(Path(a.vae).resolve()), image_size=a.image_size)
    print(f"wrote {out} {json.loads((out.parent / 'meta.json').read_text())['shape']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
