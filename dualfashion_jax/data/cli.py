"""`dualfashion-jax data {convert-real, validate, info, make-demo}`: build, convert and check datasets."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualfashion_jax.data.difashion import convert_real
from dualfashion_jax.data.format import FormatError, SafeDataset
from dualfashion_jax.data.pickled import UntrustedPickleError
from dualfashion_jax.data.synthetic import make_dataset
from dualfashion_jax.data.validate import validate_dataset


def _convert(a) -> int:
    earlier = Path(a.out).is_dir() and any(Path(a.out).iterdir())
    try:
        convert_real(a.src, a.out, dataset=a.dataset, trust_pickle=a.trust_pickle, missing_images=a.missing_images,
                     image_root=a.image_root, image_size=a.image_size, splits=a.splits, copy_images=a.copy_images)
    except UntrustedPickleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FormatError, ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"error: {e}" + (f"\n{a.out} was left unchanged" if earlier else ""), file=sys.stderr)
        return 1
    print(f"converted -> {a.out}")
    return 0


def _validate(a) -> int:
    rep = validate_dataset(SafeDataset(a.dir), check_images=not a.no_images)
    print(rep.summary())
    print("OK")
    return 0


def info_text(ds: SafeDataset) -> str:
    """A human-readable summary of a dataset folder."""
    m = ds.meta
    lines = [f"{ds.root}: {m['name']} (source {m['source']}, format v{m['format_version']})",
             f"  items {ds.num_items}, categories {m['num_categories']}, image_size {m['image_size']}, "
             f"images {'yes' if ds.has_image_paths else 'no'}, "
             f"latents {'yes' if (ds.latents_dir / 'latents.npy').is_file() else 'no'}"]
    for s in ds.available_splits():
        t = ds.split(s)
        extra = [x for x, ok in (("fitb", ds.has_fitb(s)),
                                 ("candidates", (ds.root / "splits" / f"fitb_{s}_candidates.npz").is_file()),
                                 ("history", (ds.root / "splits" / f"{s}_history.json").is_file()),
                                 ("preference", ds.has_text(f"{s}_preference.json"))) if ok]
        lines.append(f"  {s}: {len(t)} rows, {len(set(t.uids.tolist()))} users, "
                     f"{len(set(t.oids.tolist()))} outfits [{', '.join(extra)}]")
    text = [n for n in ("item_info.json", "stage1.json", "augmented.json") if ds.has_text(n)]
    lines.append(f"  text: {', '.join(text) or 'none'}")
    return "\n".join(lines)


def _info(a) -> int:
    print(info_text(SafeDataset(a.dir)))
    return 0


def _make_demo(a) -> int:
    make_dataset(a.out, seed=a.seed, image_size=a.image_size, shapes=a.shapes, appearance=a.appearance)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualfashion-jax data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert-real", help="convert a DiFashion/DualFashion download (pickled .npy) ONCE")
    c.add_argument("--src", required=True, help="folder with the split .npy files (and map/)")
    c.add_argument("--out", required=True, help="output folder (safe npz/json format)")
    c.add_argument("--dataset", required=True, choices=("ifashion", "polyvore"))
    c.add_argument("--trust-pickle", action="store_true",
                   help="required: acknowledge that the source .npy files are pickles and you trust them")
    c.add_argument("--missing-images", choices=("error", "skip"), default="error")
    c.add_argument("--image-root", default=None, help="root of all_item_image_paths (default: SRC/images)")
    c.add_argument("--image-size", type=int, default=512)
    c.add_argument("--splits", nargs="+", default=["train", "valid", "test"], choices=("train", "valid", "test"))
    c.add_argument("--copy-images", action="store_true", help="copy images instead of linking the image root")
    c.set_defaults(fn=_convert)
    v = sub.add_parser("validate", help="check a dataset folder (structure, ids, categories, FITB, images)")
    v.add_argument("dir")
    v.add_argument("--no-images", action="store_true", help="skip the image existence check")
    v.set_defaults(fn=_validate)
    i = sub.add_parser("info", help="summarise a dataset folder")
    i.add_argument("dir")
    i.set_defaults(fn=_info)
    d = sub.add_parser("make-demo", help="write the built-in synthetic outfits dataset")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--image-size", type=int, default=32)
    d.add_argument("--shapes", default="procedural",
                   help="procedural | fashion_mnist (real Fashion-MNIST silhouettes; apt-get install dataset-fashion-mnist)")
    d.add_argument("--appearance", action="store_true",
                   help="also write per-user appearance (text/appearance.json + truth rules); the other files are "
                        "byte-identical to a dataset made without it")
    d.set_defaults(fn=_make_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (FormatError, ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
