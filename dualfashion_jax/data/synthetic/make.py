"""`make_dataset`: write the built-in "synthetic outfits" dataset (safe format + oracle truth) in seconds.

The world (see `world.py`): 8 DiFashion-style categories (t-shirt, casual pants, sweater, dress, wool coat,
shoe, crossbody bag, ankle boot), 8 colours, 5 materials drawn as patterns (solid, twill, stripes, checks,
dots), 4 design-feature marks and 4 styles implied by colour x material. Every (category, colour, material)
triple appears `items_per_combo` times (960 items by default), drawn at 32x32 (or up to 256) on white.
`num_users` users (160) each have a dominant style and per-category favourite colour/material; each user has
6-10 train outfits and one valid and one test outfit, 4 role-distinct items obeying the outfit rules
(`world.rule_compatible`), with one uniformly placed FITB blank and 5 retrieval candidates (GT first).
Captions use DualFashion's 4-key JSON; preference texts are the most frequent values of each user's
per-category history. Ground truth for the oracle metrics goes to truth/ (see `truth.py`).
Everything is a deterministic function of the arguments (the seed included).
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dualfashion_jax.data.format import read_json, write_json
from dualfashion_jax.data.writer import DatasetWriter
from dualfashion_jax.data.synthetic import appearance as AP
from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic import captions as C
from dualfashion_jax.data.synthetic import fashion_mnist, render, truth, world as W

SHAPES = ("procedural", "fashion_mnist")
NAME = "synthetic_outfits"
_OWNED = ("images", "splits", "text", "truth", "latents", "meta.json", "categories.json", "items.npz",
          "image_paths.json")


def _prepare_dir(out: Path) -> None:
    """Create `out`; clear a previous synthetic dataset there; refuse to write into any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        meta = out / "meta.json"
        if not meta.is_file() or read_json(meta).get("source") != "synthetic":
            raise FileExistsError(f"{out} is a non-empty folder that is not a synthetic dataset; "
                                  "choose an empty or new --out folder")
        for name in _OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def render_catalogue(cat: W.Catalogue, image_size: int, shapes: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All item images uint8 [N, S, S, 3] and the Fashion-MNIST index per item ([N], -1 = procedural)."""
    if shapes not in SHAPES:
        raise ValueError(f"shapes must be one of {SHAPES}, got {shapes!r}")
    fm_index = np.full(len(cat), -1, np.int64)
    fm_images = None
    if shapes == "fashion_mnist":
        fm_images, fm_labels = fashion_mnist.load()
        pools = fashion_mnist.pool_by_category(fm_labels)
        rng = np.random.default_rng([seed, 7])  # its own stream: the world is identical in both modes
        fm_index = np.asarray([pools[c][rng.integers(len(pools[c]))] for c in cat.category], np.int64)
    images = np.empty((len(cat), image_size, image_size, 3), np.uint8)
    for i in range(len(cat)):
        sil = fashion_mnist.silhouette(fm_images[fm_index[i]]) if fm_index[i] >= 0 else None
        images[i] = render.render_item(int(cat.category[i]), int(cat.colour[i]), int(cat.material[i]),
                                       int(cat.feature[i]), cat.jitter[i], image_size, silhouette=sil)
    return images, fm_index


def _text_files(w: W.World, seed: int, num_augmented: int) -> tuple[dict, list, dict, dict]:
    """item_info, stage-1 records, stage-3 augmentations and the per-user preference texts."""
    cat = w.catalogue
    item_info, stage1, augmented = {}, [], {}
    rng = np.random.default_rng([seed, 3])
    for i in range(len(cat)):
        a = cat.attrs(i + 1)
        args = (a["colour"], a["material"], a["feature"], a["style"])
        item_info[i + 1] = {"elements": C.elements(*args)}
        stage1.append({"iid": i + 1, "caption": C.stage1_caption(a["category"], *args),
                       "re_caption": C.re_caption(a["category"], *args)})
        augmented[i + 1] = C.augmented_captions(rng, *args, n=num_augmented)
    prefs = {u: {c: C.frequency_preference([cat.attrs(i) for i in items]) for c, items in per.items()}
             for u, per in w.history.items()}
    return item_info, stage1, augmented, prefs


def _truth(w: W.World, fm_index: np.ndarray) -> tuple[dict, dict, dict]:
    cat, users = w.catalogue, w.users
    items = {str(i + 1): {**cat.attrs(i + 1), "jitter": cat.jitter[i].to_json(), "fm_index": int(fm_index[i])}
             for i in range(len(cat))}
    r6 = lambda a: np.round(a, 6).tolist()  # noqa: E731  (compact, deterministic floats)
    user_json = {str(int(u)): {"dominant_style": int(users.dominant_style[r]),
                               "style_taste": r6(users.style_taste[r]), "colour_pref": r6(users.colour_pref[r]),
                               "material_pref": r6(users.material_pref[r]), "fav_colour": users.fav_colour[r].tolist(),
                               "fav_material": users.fav_material[r].tolist()}
                 for r, u in enumerate(users.uids)}
    pad = lambda a: np.concatenate([[-1], a])  # noqa: E731  index by iid
    col, mat = truth.priors_from(pad(cat.category), pad(cat.colour), pad(cat.material), w.splits["train"].outfits)
    return items, user_json, {"colour": r6(col), "material": r6(mat), "from": "train outfits"}


def make_dataset(out_dir: str | os.PathLike, seed: int = 0, image_size: int = 32, num_users: int = 160,
                 shapes: str = "procedural", items_per_combo: int = 3, train_outfits: tuple[int, int] = (6, 10),
                 preference_strength: float = 0.7, num_augmented: int = 4, appearance: bool = False,
                 verbose: bool = True) -> Path:
    """Generate the dataset into `out_dir` (created; an old synthetic dataset there is replaced). Returns it.

    `appearance=True` adds per-user appearance (text/appearance.json, truth/appearance_rules.json, meta's
    generator.appearance); without it the files are byte-identical to datasets made before appearance existed.
    """
    t0 = time.perf_counter()
    if shapes not in SHAPES:
        raise ValueError(f"shapes must be one of {SHAPES}, got {shapes!r}")
    if not render.MIN_SIZE <= image_size <= render.MAX_SIZE:
        raise ValueError(f"image_size must be in [{render.MIN_SIZE}, {render.MAX_SIZE}], got {image_size}")
    if shapes == "fashion_mnist" and not fashion_mnist.available():
        raise FileNotFoundError(f"shapes='fashion_mnist' needs {fashion_mnist.DEFAULT_ROOT}/t10k-*.gz; install "
                                "`apt-get install dataset-fashion-mnist` or use shapes='procedural'")
    if num_augmented < 1:
        raise ValueError(f"num_augmented must be >= 1, got {num_augmented}")
    out = Path(out_dir)
    w = W.make_world(seed, num_users=num_users, items_per_combo=items_per_combo, train_outfits=train_outfits,
                     preference_strength=preference_strength)
    images, fm_index = render_catalogue(w.catalogue, image_size, shapes, seed)
    _prepare_dir(out)
    cat, n = w.catalogue, len(w.catalogue)
    wr = DatasetWriter(out)
    params = {"seed": seed, "num_users": num_users, "items_per_combo": items_per_combo, "shapes": shapes,
              "train_outfits": list(train_outfits), "preference_strength": preference_strength,
              "num_augmented": num_augmented, **({"appearance": True} if appearance else {})}
    wr.write_meta(name=NAME, num_items=n, num_categories=len(A.CATEGORIES), image_size=image_size,
                  source="synthetic", generator=params, num_users=num_users)
    wr.write_categories(dict(enumerate(A.CATEGORIES)))
    wr.write_items(np.concatenate([[-1], cat.category]).astype(np.int32))
    paths = [""] + [f"{i:05d}.png" for i in range(1, n + 1)]
    wr.write_image_paths(paths)
    wr.images_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(images[i]).save(wr.images_dir / paths[i + 1], format="PNG")
    for name, sp in w.splits.items():
        wr.write_split(name, sp.uids, sp.oids, sp.outfits, sp.category)
        wr.write_fitb(name, sp.uids, sp.oids, sp.fitb_outfits, sp.category)
        wr.write_candidates(name, sp.uids, sp.oids, sp.candidates)
        wr.write_history(name, w.history)
    item_info, stage1, augmented, prefs = _text_files(w, seed, num_augmented)
    wr.write_item_info(item_info)
    wr.write_stage1(stage1)
    wr.write_augmented(augmented)
    for name in w.splits:
        wr.write_preference(name, prefs)
    truth.write_truth(out, *_truth(w, fm_index))
    if appearance:
        wr.write_appearance(dict(enumerate(AP.draw(seed, num_users))))
        write_json(out / "truth" / "appearance_rules.json", AP.rules_json())
    if verbose:
        print(summary(w, out, time.perf_counter() - t0))
    return out


def summary(w: W.World, out: Path, seconds: float) -> str:
    """A short description of the generated world, with its built-in personalization headroom."""
    cat, users, test = w.catalogue, w.users, w.splits["test"]
    rows = np.arange(test.uids.shape[0])
    gt = test.outfits[rows, test.blank] - 1
    fav = users.fav_colour[test.uids, cat.category[gt]]
    pad = lambda a: np.concatenate([[-1], a])  # noqa: E731
    col_prior, _ = truth.priors_from(pad(cat.category), pad(cat.colour), pad(cat.material), w.splits["train"].outfits)
    sizes = ", ".join(f"{k} {v.uids.shape[0]}" for k, v in w.splits.items())
    return (f"synthetic outfits -> {out} in {seconds:.1f} s: {len(cat)} items, {len(A.CATEGORIES)} categories, "
            f"{users.uids.shape[0]} users; rows: {sizes}\n"
            f"  test blanks in the user's preferred colour: {np.mean(cat.colour[gt] == fav):.1%} "
            f"(chance from the train colour prior: {np.mean(col_prior[cat.category[gt], fav]):.1%})")


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m dualfashion_jax.data.synthetic.make --out DIR [--seed 0 --image-size 32 ...]."""
    p = argparse.ArgumentParser(prog="dualfashion-jax data make-demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (created; an old synthetic dataset is replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32, help="square image side in pixels (32 default; 64 ok)")
    p.add_argument("--num-users", type=int, default=160)
    p.add_argument("--shapes", choices=SHAPES, default="procedural")
    p.add_argument("--items-per-combo", type=int, default=3, help="items per (category, colour, material)")
    p.add_argument("--num-augmented", type=int, default=4, help="stage-3 caption variants per item")
    p.add_argument("--appearance", action="store_true", help="add per-user appearance (body shape, height, skin "
                   "tone) and its oracle rules (docs/sessions.md)")
    a = p.parse_args(argv)
    make_dataset(a.out, seed=a.seed, image_size=a.image_size, num_users=a.num_users, shapes=a.shapes,
                 items_per_combo=a.items_per_combo, num_augmented=a.num_augmented, appearance=a.appearance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
