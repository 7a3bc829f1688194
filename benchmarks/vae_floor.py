"""The demo VAE stand-in's own fidelity floor: a PFITB results folder whose "generated" images are the pixel
autoencoder's reconstructions of the GT items, scored by `dualfashion-jax evaluate` (issue #20, docs/demo.md).

    python benchmarks/vae_floor.py --demo demo_out --out /tmp/floor --latents 4x16,8x16,8x32,8x48
For each FACTORxCHANNELS the PCA autoencoder is fitted to the demo's item images exactly as the demo's `vae` phase
does (`pixel_ae.fit`), <out>/fFcC/ gets a copy of <demo>/generations/pfitb (records, GT images) with every generated
image replaced by the reconstruction of its GT item, and `evaluate --metrics oracle,fid_ratio,oracle_fidelity` runs
on it: the FID ratio and render error that a generator reproducing the GT latents exactly would get.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image

from dualfashion_jax import cli
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemImages
from dualfashion_jax.models import pixel_ae


def reconstructions(data: pathlib.Path, factor: int, channels: int) -> tuple[dict[int, np.ndarray], float]:
    """{item id: uint8 reconstruction [S, S, 3]} and the share of the (uncentred) pixel energy kept."""
    ds = SafeDataset(data)
    iids = [i for i in range(1, ds.num_items + 1) if ds.image_paths[i]]
    images = ItemImages(ds).many(np.asarray(iids))  # [N, S, S, 3] uint8
    cfg = pixel_ae.PixelAEConfig(factor=factor, sample_size=images.shape[1], basis="pca", latent_channels=channels)
    x = images.astype(np.float32) / 127.5 - 1.0
    rec = np.asarray(pixel_ae.fit(cfg, images)(x))  # [N, S, S, 3] in ~[-1, 1]
    kept = 1.0 - float(((rec - x) ** 2).sum() / (x ** 2).sum())
    return dict(zip(iids, np.clip(np.rint((rec + 1.0) * 127.5), 0, 255).astype(np.uint8))), kept


def floor_folder(src: pathlib.Path, dst: pathlib.Path, recs: dict[int, np.ndarray]) -> None:
    """dst = src's records and GT images, each generated image replaced by its GT item's reconstruction."""
    if dst.exists():
        raise FileExistsError(f"{dst} exists; choose an empty --out (nothing is overwritten)")
    records = json.loads((src / "records.json").read_text())
    for r in records["records"]:
        grd = {g["slot"]: g for g in r["grd"]}
        for g in r["gen"]:
            (dst / g["image"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / grd[g["slot"]]["image"], dst / grd[g["slot"]]["image"])
            Image.fromarray(recs[int(grd[g["slot"]]["iid"])]).save(dst / g["image"])
    for name in ("records.json", "settings.json", "run.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", required=True, help="a finished demo folder (its data/ and generations/pfitb/)")
    p.add_argument("--out", required=True)
    p.add_argument("--latents", default="4x16,8x48", help="comma-separated FACTORxCHANNELS")
    a = p.parse_args(argv)
    demo, out = pathlib.Path(a.demo), pathlib.Path(a.out)
    for spec in a.latents.split(","):
        factor, channels = (int(v) for v in spec.split("x"))
        recs, kept = reconstructions(demo / "data", factor, channels)
        dst = out / f"f{factor}c{channels}"
        floor_folder(demo / "generations" / "pfitb", dst, recs)
        print(f"factor {factor} x {channels} channels: {kept:.2%} of the pixel energy kept -> {dst}")
        rc = cli.main(["evaluate", "--results", str(dst), "--task", "pfitb", "--data", str(demo / "data"),
                       "--metrics", "oracle,fid_ratio,oracle_fidelity", "--no-progress"])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
