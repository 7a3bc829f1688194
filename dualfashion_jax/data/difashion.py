"""Convert a DiFashion / DualFashion download (iFashion or Polyvore-U) ONCE into the safe npz/json format.

Why a one-off conversion into npz/json read through grain, rather than a TFDS builder: the upstream files are
pickles (code execution on load) and the model needs random access by item id (context items, history,
candidates) across many small tables, which a flat example stream does not give. The safe folder is read with
`allow_pickle=False`, validated by `data/validate.py`, and fed to `grain.MapDataset` (random access, seeded
per-epoch shuffles, checkpointable iterator state; `data/pipeline.py`). A TFDS ArrayRecord copy of the stage
examples adds a second copy of the images without making loading faster on CPU hosts, so it is optional
(`data/tfds_builder.py`, for TFDS tooling); decoding examples from the safe folder costs ~ms per example.

Inputs found in `src` (all optional except the category maps and at least one split):
  id_cate_dict.npy | new_id_cate_dict.npy, map/cate_iid_dict.npy, map/iid_cate_dict.npy (iFashion's is a 2-byte
  placeholder -> rebuilt from cate_iid_dict), train.npy, {valid,test}_grd_dict.npy, fitb_{split}.npy,
  fitb_{split}_retrieval_candidates.npy, {split}_history.npy, all_item_image_paths.npy + an image root,
  and the DualFashion text files handled by `data/difashion_text.py`.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dualfashion_jax.data import difashion_text
from dualfashion_jax.data.format import SPLITS, CandidateTable, OutfitTable, SafeDataset
from dualfashion_jax.data.writer import DatasetWriter
from dualfashion_jax.data.pickled import ConversionInputError, load_pickled, load_pickled_dict, require_trust
from dualfashion_jax.data.validate import (ValidationError, check_candidates, check_fitb_alignment,
                                           check_history, check_history_users, check_outfits,
                                           check_unique_rows, validate_dataset)

DATASETS = ("ifashion", "polyvore")
GT_FILES = {"train": ("train.npy", "train_grd_dict.npy"), "valid": ("valid_grd_dict.npy",),
            "test": ("test_grd_dict.npy",)}
IMAGE_PATH_FILES = ("all_item_image_paths.npy", "new_all_item_image_paths.npy")


@dataclass
class ConversionReport:
    """What the converter found, wrote, dropped and rebuilt."""

    found: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    dropped_rows: dict[str, int] = field(default_factory=dict)
    missing_images: list[int] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"found:  {k} <- {v}" for k, v in self.found.items()]
        lines += [f"absent: {a}" for a in self.absent]
        lines += [f"notice: {n}" for n in self.notices]
        lines += [f"rows:   {s}: {n}" + (f" ({self.dropped_rows[s]} dropped: missing images)"
                                          if self.dropped_rows.get(s) else "") for s, n in self.rows.items()]
        if self.missing_images:
            lines.append(f"missing images: {len(self.missing_images)} items (first: {self.missing_images[:10]})")
        return "\n".join(lines)


def _first(src: Path, names: Sequence[str]) -> Path | None:
    return next((src / n for n in names if (src / n).is_file()), None)


# ------------------------------------------------------------------------------------------------ maps
def load_category_maps(src: Path, rep: ConversionReport, log) -> tuple[dict[int, str], np.ndarray]:
    """categories {cid: name} and iid_category [num_items+1] (index 0 = -1), cross-checked when both maps exist."""
    p = _first(src, ("id_cate_dict.npy", "new_id_cate_dict.npy"))
    if p is None:
        raise ConversionInputError(f"{src}: neither id_cate_dict.npy nor new_id_cate_dict.npy found")
    rep.found["categories"] = p.name
    raw = load_pickled_dict(p)
    cats = {}
    for k, v in raw.items():
        if not isinstance(v, str) or not v:
            raise ConversionInputError(f"{p}: category {k!r} must map to a non-empty name, got {v!r}")
        cats[int(k)] = v
    p_ci = src / "map" / "cate_iid_dict.npy"
    p_ic = src / "map" / "iid_cate_dict.npy"
    inverse = None
    if p_ci.is_file():
        rep.found["cate_iid"] = "map/cate_iid_dict.npy"
        inverse = {}
        for c, items in load_pickled_dict(p_ci).items():
            if int(c) not in cats:
                raise ConversionInputError(f"{p_ci}: category {c} is not in {p.name}")
            for i in items:
                if int(i) in inverse:
                    raise ConversionInputError(f"{p_ci}: item {int(i)} listed under categories "
                                               f"{inverse[int(i)]} and {int(c)}")
                inverse[int(i)] = int(c)
    direct = None
    if p_ic.is_file() and p_ic.stat().st_size > 16:
        rep.found["iid_cate"] = "map/iid_cate_dict.npy"
        direct = {int(i): int(c) for i, c in load_pickled_dict(p_ic).items()}
    elif p_ic.is_file() or inverse is not None:
        why = "a placeholder (not a .npy)" if p_ic.is_file() else "absent"
        msg = f"map/iid_cate_dict.npy is {why}: rebuilt it by inverting map/cate_iid_dict.npy ({len(inverse)} items)"
        rep.notices.append(msg)
    if direct is None and inverse is None:
        raise ConversionInputError(f"{src}/map: neither cate_iid_dict.npy nor iid_cate_dict.npy found")
    m = direct if direct is not None else inverse
    if direct is not None and inverse is not None and direct != inverse:
        bad = next(i for i in set(direct) | set(inverse) if direct.get(i) != inverse.get(i))
        raise ConversionInputError(f"{p_ic}: item {bad} has category {direct.get(bad)} but {p_ci} says "
                                   f"{inverse.get(bad)}")
    if min(m) < 1:
        raise ConversionInputError(f"{src}/map: item id {min(m)} < 1 (0 is reserved for the blank)")
    iid_category = np.full(max(m) + 1, -1, np.int32)
    iid_category[np.fromiter(m.keys(), np.int64)] = np.fromiter(m.values(), np.int64)
    unknown = set(np.unique(iid_category[1:]).tolist()) - set(cats) - {-1}
    if unknown:
        raise ConversionInputError(f"{src}/map: categories {sorted(unknown)[:5]} are not in {p.name}")
    return cats, iid_category


# ---------------------------------------------------------------------------------------------- tables
def table_from_dict(d: dict, path: Path) -> OutfitTable:
    """DiFashion's {uids, oids, outfits, category} parallel lists -> an int64 OutfitTable (shape-checked)."""
    for k in ("uids", "oids", "outfits", "category"):
        if k not in d:
            raise ConversionInputError(f"{path}: missing key {k!r}; found {sorted(map(str, d))}")
    n = {k: len(d[k]) for k in ("uids", "oids", "outfits", "category")}
    if len(set(n.values())) != 1:
        raise ConversionInputError(f"{path}: keys have different lengths {n}")
    try:
        t = OutfitTable(np.asarray(d["uids"], np.int64), np.asarray(d["oids"], np.int64),
                        np.asarray(d["outfits"], np.int64).reshape(-1, 4),
                        np.asarray(d["category"], np.int64).reshape(-1, 4))
    except (ValueError, TypeError) as e:
        raise ConversionInputError(f"{path}: 'outfits'/'category' must be lists of 4 ints per row: {e}") from None
    if t.outfits.shape[0] != n["uids"] or t.category.shape[0] != n["uids"]:
        raise ConversionInputError(f"{path}: 'outfits'/'category' rows must hold exactly 4 ids")
    return t


def candidates_for(fitb: OutfitTable, d: dict, path: Path) -> CandidateTable:
    """{uid: {oid: [gt, neg x4]}} -> rows aligned with the FITB table (error naming a missing (uid, oid))."""
    out = np.zeros((len(fitb), 5), np.int64)
    for r, (u, o) in enumerate(zip(fitb.uids.tolist(), fitb.oids.tolist())):
        try:
            c = d[u][o]
        except (KeyError, TypeError):
            raise ConversionInputError(f"{path}: no candidates for FITB row {r} (uid {u}, oid {o})") from None
        if len(c) != 5:
            raise ConversionInputError(f"{path}: uid {u} oid {o}: expected 5 candidates, got {len(c)}")
        out[r] = [int(x) for x in c]
    return CandidateTable(fitb.uids.copy(), fitb.oids.copy(), out)


def history_from_dict(d: dict, path: Path) -> dict[int, dict[int, list[int]]]:
    """{uid: {cid: [iid, ...]}} with python ints."""
    try:
        return {int(u): {int(c): [int(i) for i in items] for c, items in per.items()} for u, per in d.items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise ConversionInputError(f"{path}: expected {{uid: {{cid: [iid, ...]}}}}: {e}") from None


# ---------------------------------------------------------------------------------------------- images
def load_image_paths(path: Path, num_items: int, image_root: Path) -> list[str]:
    """all_item_image_paths.npy (array or dict indexed by iid) -> relative paths, index = iid ('' = none)."""
    obj = load_pickled(path)
    if isinstance(obj, dict):
        seq = {int(k): v for k, v in obj.items()}
    else:
        seq = dict(enumerate(np.asarray(obj, dtype=object).ravel().tolist()))
    root = str(image_root.resolve())
    out = [""] * (num_items + 1)
    for i, p in seq.items():
        if not 0 < i <= num_items or p is None or str(p) in ("", "None"):
            continue
        p = str(p)
        if os.path.isabs(p):
            rel = os.path.relpath(os.path.realpath(p), root)
            if rel.startswith(".."):
                raise ConversionInputError(f"{path}: item {i} path {p!r} is not under the image root {root}")
            p = rel
        out[i] = p
    return out


# -------------------------------------------------------------------------------------------- converter
def convert_real(src: str | os.PathLike, out: str | os.PathLike, *, dataset: str, trust_pickle: bool = False,
                 missing_images: str = "error", image_root: str | os.PathLike | None = None,
                 image_size: int = 512, splits: Sequence[str] = SPLITS, copy_images: bool = False,
                 log: Callable[[str], None] = print) -> ConversionReport:
    """Convert `src` into a safe-format folder `out`; validate everything; return a report of what was found.

    missing_images: 'error' (default) raises listing the first missing files; 'skip' drops every row whose GT
    items or candidates lack an image and removes image-less items from histories (counts are logged).
    The images are linked (`out/images` -> image root) unless `copy_images`. The folder is built beside `out`
    and renamed into place only once everything passed, so a failed rerun leaves an earlier conversion as it was.
    """
    src, out = Path(src), Path(out)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if missing_images not in ("error", "skip"):
        raise ValueError(f"missing_images must be 'error' or 'skip', got {missing_images!r}")
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} not found")
    require_trust(trust_pickle)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.parent / f".{out.name}.converting-{os.getpid()}-{secrets.token_hex(4)}"
    build.mkdir()  # not mkdtemp: the folder keeps the user's umask permissions once renamed into place
    try:
        rep = _convert_into(src, build, dataset=dataset, missing_images=missing_images, image_root=image_root,
                            image_size=image_size, splits=splits, copy_images=copy_images, log=log)
        _replace(build, out, rep)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log(rep.summary())
    return rep


def _convert_into(src: Path, out: Path, *, dataset: str, missing_images: str, image_root, image_size: int,
                  splits: Sequence[str], copy_images: bool, log: Callable[[str], None]) -> ConversionReport:
    """The conversion proper, written into the fresh folder `out` (a temporary folder beside the destination)."""
    rep = ConversionReport()
    cats, iid_category = load_category_maps(src, rep, log)
    num_items = iid_category.shape[0] - 1

    tables: dict[str, dict] = {}
    for s in splits:
        gt_path = _first(src, GT_FILES[s])
        if gt_path is None:
            rep.absent.append(f"{s} ({'/'.join(GT_FILES[s])})")
            continue
        rep.found[s] = gt_path.name
        gt = table_from_dict(load_pickled_dict(gt_path), gt_path)
        check_outfits(gt, iid_category, cats, where=str(gt_path))
        entry = {"gt": gt}
        fp = src / f"fitb_{s}.npy"
        if fp.is_file():
            entry["fitb"] = fitb = table_from_dict(load_pickled_dict(fp), fp)
            check_unique_rows(gt, where=str(gt_path))  # generated/evaluated rows are keyed by (uid, oid)
            check_outfits(fitb, iid_category, cats, where=str(fp), fitb=True)
            check_fitb_alignment(gt, fitb, where=str(fp))
            rep.found[f"fitb_{s}"] = fp.name
            cp = src / f"fitb_{s}_retrieval_candidates.npy"
            if cp.is_file():
                entry["cand"] = candidates_for(fitb, load_pickled_dict(cp), cp)
                check_candidates(gt, fitb, entry["cand"], num_items, where=str(cp))
                rep.found[f"candidates_{s}"] = cp.name
        hp = src / f"{s}_history.npy"
        if hp.is_file():
            entry["history"] = history_from_dict(load_pickled_dict(hp), hp)
            check_history(entry["history"], iid_category, where=str(hp))
            check_history_users(gt, entry["history"], where=str(hp))
            rep.found[f"history_{s}"] = hp.name
        tables[s] = entry
    if not tables:
        raise ConversionInputError(f"{src}: no split table found (looked for {sorted(sum(GT_FILES.values(), ()))})")

    # -- images
    paths = None
    ip = _first(src, IMAGE_PATH_FILES)
    root = Path(image_root) if image_root is not None else src / "images"
    if ip is None:
        rep.absent.append("images (all_item_image_paths.npy): split-only dataset, image checks skipped")
    elif not root.is_dir():
        raise FileNotFoundError(f"{ip.name} found but the image root {root} does not exist (pass --image-root)")
    else:
        rep.found["image_paths"] = f"{ip.name} (root {root})"
        paths = load_image_paths(ip, num_items, root)
        used = set()
        for e in tables.values():
            used |= set(e["gt"].outfits.ravel().tolist())
            used |= set(e["cand"].candidates.ravel().tolist()) if "cand" in e else set()
            used |= {i for per in e.get("history", {}).values() for v in per.values() for i in v}
        ok = np.zeros(num_items + 1, bool)  # only referenced items are checked (stat calls are slow)
        ok[0] = True
        for i in used:
            ok[i] = bool(paths[i]) and os.path.isfile(os.path.join(root, paths[i]))
        rep.missing_images = sorted(i for i in used if not ok[i])
        if rep.missing_images and missing_images == "error":
            first = [(i, paths[i] or "<no path>") for i in rep.missing_images[:5]]
            raise ValidationError(f"{root}: {len(rep.missing_images)} referenced item image(s) missing, first: "
                                  f"{first}; pass --missing-images skip to drop the affected rows")
        for s, e in tables.items():
            keep = ok[e["gt"].outfits].all(1)
            if "cand" in e:
                keep &= ok[e["cand"].candidates].all(1)
            rows = np.flatnonzero(keep)
            rep.dropped_rows[s] = int((~keep).sum())
            for k in ("gt", "fitb", "cand"):
                if k in e:
                    e[k] = e[k].take(rows)
            if "history" in e:
                e["history"] = {u: {c: kept for c, v in per.items() if (kept := [i for i in v if ok[i]])}
                                for u, per in e["history"].items()}
        if rep.missing_images:
            log(f"missing images: {len(rep.missing_images)} items; dropped rows: {rep.dropped_rows}")

    # -- write
    w = DatasetWriter(out)
    w.write_categories(cats)
    w.write_items(iid_category)
    for s, e in tables.items():
        rep.rows[s] = len(e["gt"])
        w.write_split(s, e["gt"].uids, e["gt"].oids, e["gt"].outfits, e["gt"].category)
        if "fitb" in e:
            f = e["fitb"]
            w.write_fitb(s, f.uids, f.oids, f.outfits, f.category)
        if "cand" in e:
            w.write_candidates(s, e["cand"].uids, e["cand"].oids, e["cand"].candidates)
        if "history" in e:
            w.write_history(s, e["history"])
    if paths is not None:
        w.write_image_paths(paths)
        _place_images(root, w.images_dir, copy=copy_images, paths=paths)
    difashion_text.convert_text(src, w, num_items=num_items, splits=list(tables), report=rep, log=log,
                                image_paths=paths)
    w.write_meta(name=dataset, num_items=num_items, num_categories=len(cats), image_size=image_size,
                 source=f"difashion:{src.resolve()}", missing_images_policy=missing_images,
                 dropped_rows=rep.dropped_rows, notices=rep.notices)
    validate_dataset(SafeDataset(out), check_images=paths is not None)
    return rep


_OWNED = ("meta.json", "categories.json", "items.npz", "image_paths.json", "images", "splits", "text", "latents")


def _is_conversion(out: Path) -> bool:
    meta = out / "meta.json"
    try:
        return meta.is_file() and str(json.loads(meta.read_text()).get("source", "")).startswith("difashion:")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        return False


def _check_out(out: Path) -> None:
    """Refuse an --out that is a file, or a non-empty folder that is not an earlier conversion (nothing is touched)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; expected a new, empty or converted folder")
    if out.is_dir() and any(out.iterdir()) and not _is_conversion(out):
        raise FileExistsError(f"{out} is a non-empty folder that is not an earlier real-data conversion; "
                              "choose an empty or new --out folder")


def _replace(build: Path, out: Path, rep: ConversionReport) -> None:
    """Swap the finished conversion `build` in for `out` by renames. The earlier conversion's own files go
    (latents/ too: they belong to its items); anything else the user put there is moved into the new one."""
    if not out.exists():
        os.replace(build, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    os.replace(out, old)
    try:
        os.replace(build, out)
    except BaseException:
        os.replace(old, out)
        raise
    if (old / "latents").exists():
        rep.notices.append(f"{out / 'latents'} of the earlier conversion removed (its items may differ): "
                           "rerun encode-latents")
    for p in sorted(old.iterdir()):
        if p.name not in _OWNED:
            os.replace(p, out / p.name)
            rep.notices.append(f"kept {p.name} from the earlier conversion")
    shutil.rmtree(old)


def _place_images(root: Path, dst: Path, *, copy: bool, paths: list[str]) -> None:
    """Make `dst` (out/images) show the image root: a symlink by default, or a copy of the referenced files."""
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    if not copy:
        dst.symlink_to(root.resolve(), target_is_directory=True)
        return
    for p in paths:
        if p and (root / p).is_file():
            (dst / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / p, dst / p)
