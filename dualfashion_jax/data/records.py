"""The results-record format: what generation writes and every evaluator reads (safe JSON, no pickles).

The one shared definition of the format, in the data layer: `generation/outputs.py` writes it, `evaluators/` read it.

A results dir holds
  records.json   {"format_version": 1, "task": "pfitb"|"gor", "records": [Record, ...]}
  settings.json  {"model": ..., "task": ..., "sampler": {...}, "seeds": ..., ...}  (free-form beyond those keys)
  <images>       generated and GT images, referenced by paths RELATIVE to the results dir.
One Record per (uid, oid) row: the full GT outfit and its categories (4 slots), the blank slot(s) (PFITB: one,
GOR: all four), per-blank preference/sentence text, `gen` entries (one per generated image: slot, sample index,
seed, image path, generated caption) and `grd` entries (GT item id and image path per blank slot).
`to_original_layout` rebuilds DiFashion's `gen.npy`/`grd.npy` nested dicts for users of the original evaluator.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

FORMAT_VERSION = 1
TASKS = ("pfitb", "gor")
OUTFIT_SIZE = 4
RECORDS_FILE = "records.json"
SETTINGS_FILE = "settings.json"


class RecordError(ValueError):
    """records.json / settings.json do not match the format; the message names the file, record and field."""


@dataclasses.dataclass(frozen=True)
class GenEntry:
    """One generated image (and its caption) for blank `slot`; `sample` = index k of K samples per blank."""

    slot: int
    sample: int
    seed: int
    image: str                  # path relative to the results dir
    caption: str | None = None  # generated attribute caption (JSON-ish text), None if text was not generated


@dataclasses.dataclass(frozen=True)
class GrdEntry:
    """The ground-truth item at blank `slot` and its image (relative path; "" if GT images are unavailable)."""

    slot: int
    iid: int
    image: str = ""


@dataclasses.dataclass(frozen=True)
class Record:
    """One (user, outfit) row of a PFITB or GOR run."""

    uid: int
    oid: int
    task: str
    outfit: tuple[int, ...]          # [4] full GT outfit (item ids)
    categories: tuple[int, ...]      # [4] category id per slot
    blank_slots: tuple[int, ...]     # PFITB: (s,); GOR: (0, 1, 2, 3)
    gen: tuple[GenEntry, ...]
    grd: tuple[GrdEntry, ...]
    preference: dict[int, str] = dataclasses.field(default_factory=dict)  # blank slot -> preference JSON text
    sentence: dict[int, str] = dataclasses.field(default_factory=dict)    # blank slot -> instruction sentence

    def gen_for(self, slot: int) -> list[GenEntry]:
        """Generated entries of one blank slot, sorted by sample index."""
        return sorted((g for g in self.gen if g.slot == slot), key=lambda g: g.sample)

    def samples(self) -> list[int]:
        """Sorted distinct sample indices of this record."""
        return sorted({g.sample for g in self.gen})

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["preference"] = {str(k): v for k, v in self.preference.items()}
        d["sentence"] = {str(k): v for k, v in self.sentence.items()}
        return d


# ------------------------------------------------------------------------------------------------ validation
def _fail(where: str, msg: str) -> RecordError:
    return RecordError(f"{where}: {msg}")


def _int(where: str, field: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise _fail(where, f"field {field!r} must be an integer, got {v!r}")
    return int(v)


def _str(where: str, field: str, v: Any, *, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise _fail(where, f"field {field!r} must be a string, got {type(v).__name__}")
    return v


def _rel_path(where: str, field: str, p: str) -> str:
    if p == "":
        return p
    pp = pathlib.PurePosixPath(p.replace(os.sep, "/"))
    if pp.is_absolute() or ".." in pp.parts:
        raise _fail(where, f"field {field!r} = {p!r} must be a path relative to the results dir (no '..', not absolute)")
    return str(pp)


def _slot_map(where: str, field: str, d: Any) -> dict[int, str]:
    if not isinstance(d, Mapping):
        raise _fail(where, f"field {field!r} must be an object {{slot: text}}, got {type(d).__name__}")
    out = {}
    for k, v in d.items():
        try:
            slot = int(k)
        except (TypeError, ValueError):
            raise _fail(where, f"field {field!r} has key {k!r}; expected a slot number 0..3") from None
        out[slot] = _str(where, f"{field}[{k}]", v)
    return out


def _need(where: str, d: Mapping, keys: Sequence[str]) -> None:
    if not isinstance(d, Mapping):
        raise _fail(where, f"expected a JSON object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise _fail(where, f"missing field(s) {missing}")


def record_from_json(d: Any, where: str) -> Record:
    """Parses and validates one record (`where` names file + index for error messages)."""
    _need(where, d, ("uid", "oid", "task", "outfit", "categories", "blank_slots", "gen", "grd"))
    task = d["task"]
    if task not in TASKS:
        raise _fail(where, f"field 'task' = {task!r}; expected one of {TASKS}")
    outfit = tuple(_int(where, "outfit", v) for v in d["outfit"])
    cats = tuple(_int(where, "categories", v) for v in d["categories"])
    if len(outfit) != OUTFIT_SIZE or len(cats) != OUTFIT_SIZE:
        raise _fail(where, f"fields 'outfit' and 'categories' must have {OUTFIT_SIZE} entries, "
                           f"got {len(outfit)} and {len(cats)}")
    blanks = tuple(_int(where, "blank_slots", v) for v in d["blank_slots"])
    if not blanks or any(not 0 <= s < OUTFIT_SIZE for s in blanks) or len(set(blanks)) != len(blanks):
        raise _fail(where, f"field 'blank_slots' = {list(blanks)}; expected distinct slots in 0..{OUTFIT_SIZE - 1}")
    if task == "pfitb" and len(blanks) != 1:
        raise _fail(where, f"a pfitb record has exactly one blank slot, got {list(blanks)}")
    gen = []
    for j, g in enumerate(d["gen"]):
        w = f"{where} gen[{j}]"
        _need(w, g, ("slot", "sample", "seed", "image"))
        e = GenEntry(_int(w, "slot", g["slot"]), _int(w, "sample", g["sample"]), _int(w, "seed", g["seed"]),
                     _rel_path(w, "image", _str(w, "image", g["image"])),
                     _str(w, "caption", g.get("caption"), optional=True))
        if e.slot not in blanks:
            raise _fail(w, f"slot {e.slot} is not one of the record's blank slots {list(blanks)}")
        gen.append(e)
    if not gen:
        raise _fail(where, "field 'gen' is empty; every record needs at least one generated entry")
    seen = {(g.slot, g.sample) for g in gen}
    if len(seen) != len(gen):
        raise _fail(where, "field 'gen' repeats a (slot, sample) pair")
    grd = []
    for j, g in enumerate(d["grd"]):
        w = f"{where} grd[{j}]"
        _need(w, g, ("slot", "iid"))
        e = GrdEntry(_int(w, "slot", g["slot"]), _int(w, "iid", g["iid"]),
                     _rel_path(w, "image", _str(w, "image", g.get("image", ""))))
        if e.slot not in blanks:
            raise _fail(w, f"slot {e.slot} is not one of the record's blank slots {list(blanks)}")
        if e.iid != outfit[e.slot]:
            raise _fail(w, f"iid {e.iid} differs from outfit[{e.slot}] = {outfit[e.slot]}")
        grd.append(e)
    return Record(_int(where, "uid", d["uid"]), _int(where, "oid", d["oid"]), task, outfit, cats, blanks,
                  tuple(gen), tuple(grd), _slot_map(where, "preference", d.get("preference", {})),
                  _slot_map(where, "sentence", d.get("sentence", {})))


# ------------------------------------------------------------------------------------------------ read / write
def write_records(results_dir: str | os.PathLike, records: Iterable[Record], settings: Mapping[str, Any]) -> pathlib.Path:
    """Writes records.json + settings.json (validated first, so a bad record never reaches disk)."""
    root = pathlib.Path(results_dir)
    records = list(records)
    if not records:
        raise RecordError(f"{root / RECORDS_FILE}: refusing to write an empty record list")
    tasks = {r.task for r in records}
    if len(tasks) != 1:
        raise RecordError(f"{root / RECORDS_FILE}: records mix tasks {sorted(tasks)}; write one results dir per task")
    blobs = [r.to_json() for r in records]
    for i, b in enumerate(blobs):  # round-trip validation
        record_from_json(json.loads(json.dumps(b)), f"{root / RECORDS_FILE} record {i}")
    _check_settings(settings, root / SETTINGS_FILE)
    root.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "task": tasks.pop(), "records": blobs}
    (root / RECORDS_FILE).write_text(json.dumps(payload, indent=1))
    (root / SETTINGS_FILE).write_text(json.dumps(dict(settings), indent=2, default=str))
    return root


def _check_settings(settings: Any, path: pathlib.Path) -> dict:
    if not isinstance(settings, Mapping):
        raise RecordError(f"{path}: expected a JSON object, got {type(settings).__name__}")
    missing = [k for k in ("model", "task") if k not in settings]
    if missing:
        raise RecordError(f"{path}: missing field(s) {missing} (model name/checkpoint and task are required)")
    return dict(settings)


def _load_json(path: pathlib.Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is this a results dir written by `dualfashion-jax generate`?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from e


def read_records(results_dir: str | os.PathLike) -> tuple[list[Record], dict]:
    """Reads and validates records.json + settings.json -> (records, settings)."""
    root = pathlib.Path(results_dir)
    path = root / RECORDS_FILE
    blob = _load_json(path)
    _need(str(path), blob, ("format_version", "task", "records"))
    if blob["format_version"] != FORMAT_VERSION:
        raise RecordError(f"{path}: format_version {blob['format_version']!r}; this reader understands {FORMAT_VERSION}")
    if not isinstance(blob["records"], list) or not blob["records"]:
        raise RecordError(f"{path}: field 'records' must be a non-empty list")
    records = [record_from_json(d, f"{path} record {i}") for i, d in enumerate(blob["records"])]
    for i, r in enumerate(records):
        if r.task != blob["task"]:
            raise RecordError(f"{path} record {i}: task {r.task!r} differs from the file's task {blob['task']!r}")
    keys = [(r.uid, r.oid) for r in records]
    if len(set(keys)) != len(keys):
        raise RecordError(f"{path}: (uid, oid) pairs repeat; one record per row is expected")
    settings = _check_settings(_load_json(root / SETTINGS_FILE), root / SETTINGS_FILE)
    return records, settings


def check_complete(records: Sequence[Record], settings: Mapping[str, Any], results_dir: str | os.PathLike, *,
                   allow_partial: bool = False,
                   split_keys: Callable[[], Sequence[tuple[int, int]] | None] = lambda: None) -> int | None:
    """The row count settings.json promises (`generate` writes 'rows': split rows capped by --max-rows; None when
    absent). Fewer records raise a RecordError naming the first missing (uid, oid) unless `allow_partial`."""
    root = pathlib.Path(results_dir)
    rows = settings.get("rows")
    if rows is None:
        return None
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise RecordError(f"{root / SETTINGS_FILE}: field 'rows' must be a positive integer, got {rows!r}")
    if len(records) > rows:
        raise RecordError(f"{root / RECORDS_FILE}: {len(records)} records but {root / SETTINGS_FILE} says the run "
                          f"has {rows} rows; records.json and settings.json do not belong together")
    if len(records) < rows and not allow_partial:
        have = {(r.uid, r.oid) for r in records}
        missing = [k for k in (split_keys() or [])[:rows] if k not in have]
        first = f", first missing (uid, oid): {missing[:5]}" if missing else ""
        raise RecordError(f"{root / RECORDS_FILE}: {len(records)} records but {root / SETTINGS_FILE} says the run "
                          f"has {rows} rows{first}; finish it (rerun `generate` with the same flags) or pass "
                          "--allow-partial to evaluate the rows that exist (the report is then marked partial)")
    return rows


# ------------------------------------------------------------------------------------------------ images
def load_image(results_dir: str | os.PathLike, rel_path: str, size: int | None = None) -> np.ndarray:
    """Reads one image as uint8 RGB [H, W, 3]; `size` resizes (bilinear) to size x size, as for Polyvore GT."""
    path = pathlib.Path(results_dir) / rel_path
    if not rel_path or not path.is_file():
        raise FileNotFoundError(f"{path}: image referenced by {pathlib.Path(results_dir) / RECORDS_FILE} is missing")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def load_images(results_dir: str | os.PathLike, rel_paths: Sequence[str], size: int | None = None) -> np.ndarray:
    """Reads images into one uint8 array [N, H, W, 3] (all must share a size unless `size` is given)."""
    arrays = [load_image(results_dir, p, size) for p in rel_paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"{results_dir}: images have different sizes {sorted(shapes)}; pass size= to resize")
    return np.stack(arrays) if arrays else np.zeros((0, size or 1, size or 1, 3), np.uint8)


# ------------------------------------------------------------------------------------------------ original layout
def to_original_layout(records: Sequence[Record], results_dir: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """(gen, grd) nested dicts exactly like DualFashion's gen.npy / grd.npy (spec §5.3 step 7).

    gen[uid][oid] = {image_paths: [...], cates: int64 [n] (category per image), full_cates: int64 [4],
    outfits: int64 [4] (full GT outfit)}; grd[uid][oid] = {image_paths: [...] (GT image per gen image, same
    order), outfits: int64 [4]}. Paths are joined to `results_dir` (absolute) when it is given.
    """
    base = None if results_dir is None else pathlib.Path(results_dir).absolute()
    join = (lambda p: p) if base is None else (lambda p: str(base / p) if p else "")
    gen: dict = {}
    grd: dict = {}
    for r in records:
        entries = sorted(r.gen, key=lambda g: (g.sample, g.slot))
        gt_image = {g.slot: g.image for g in r.grd}
        gen.setdefault(r.uid, {})[r.oid] = {
            "image_paths": [join(g.image) for g in entries],
            "cates": np.asarray([r.categories[g.slot] for g in entries], np.int64),
            "full_cates": np.asarray(r.categories, np.int64),
            "outfits": np.asarray(r.outfit, np.int64),
        }
        grd.setdefault(r.uid, {})[r.oid] = {
            "image_paths": [join(gt_image.get(g.slot, "")) for g in entries],
            "outfits": np.asarray(r.outfit, np.int64),
        }
    return gen, grd


def save_original_layout(records: Sequence[Record], results_dir: str | os.PathLike,
                         out_dir: str | os.PathLike | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes gen.npy / grd.npy (pickled object arrays, `np.save(allow_pickle=True)`) for the original evaluator.

    Reading them back requires `np.load(path, allow_pickle=True).item()`, i.e. unpickling: only load files you
    wrote yourself. Our own evaluators never read these; they read records.json.
    """
    out = pathlib.Path(out_dir or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen, grd = to_original_layout(records, results_dir)
    paths = out / "gen.npy", out / "grd.npy"
    np.save(paths[0], np.asarray(gen, dtype=object), allow_pickle=True)
    np.save(paths[1], np.asarray(grd, dtype=object), allow_pickle=True)
    return paths
