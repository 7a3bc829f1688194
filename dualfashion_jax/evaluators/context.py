"""Everything one `evaluate` run shares between metrics: records, dataset, images, CLIP embeddings (lazy).

Metric-specific networks (FID/IS Inception, LPIPS, compatibility) are built by their family files through
`ctx.cached` / `ctx.network`; the CLIP encoder lives here because five families share it.

Generated entries are flattened in a fixed order (records order, then sample, then slot), so that every per-image
array (`uids`, `categories`, `gt_iids`, captions, images, embeddings) lines up. Networks are built on first use:
from a checkpoint when one is given (labelled real-weight), else a seeded random-init stand-in (random-weight: not
paper-comparable). Every network used is recorded in `ctx.networks` for the report.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.evaluators.nets.clip_weights import load_clip
from dualfashion_jax.data import records as R
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.evaluators.clip_encoder import ClipEncoder
from dualfashion_jax.evaluators.nets import clip_text, clip_tokenizer
from dualfashion_jax.evaluators.preprocess import COLLAGE_SIZE, collage_2x2

REAL, RANDOM, TRAINED = "real-weight", "random-weight", "trained-here"


@dataclasses.dataclass
class NetworkInfo:
    name: str
    weights: str        # REAL | RANDOM | TRAINED
    source: str
    config: dict


@dataclasses.dataclass
class EvalOptions:
    checkpoints: dict[str, str | None] = dataclasses.field(default_factory=dict)  # clip/inception/fid/lpips/compat
    split: str | None = None
    batch_size: int = 16
    seed: int = 0
    clip_preset: str = "tiny"          # architecture of the random CLIP stand-in
    clip_dtype: str = "float32"        # CLIP compute dtype (params stay fp32): float32 | bfloat16
    gt_size: int | None = None         # resize GT images (Polyvore 291 -> 512); default: the generated size
    collage_size: int = COLLAGE_SIZE   # GOR 2x2 collages (CLIP image score, LPIPS): the original's 1024 px canvas
    catalogue_features: str | None = None  # precomputed [num_items+1, E] CLIP features (.npy, no pickle)
    compat_train_steps: int = 0        # >0: train a compat evaluator on the train split when no --compat is given
    original_gor_indexing: bool = False
    llm_judge: bool = False
    show_progress: bool = True
    allow_partial: bool = False        # evaluate a results dir with fewer records than settings.json's 'rows'


class _MissingTokenizer:
    """Stands in for the CLIP tokenizer when its BPE file is absent: any text encoding raises the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, texts):
        raise FileNotFoundError(self.reason)


class EvalContext:
    def __init__(self, results_dir: str | os.PathLike, data_dir: str | os.PathLike, options: EvalOptions):
        self.results_dir, self.data_dir, self.opt = pathlib.Path(results_dir), pathlib.Path(data_dir), options
        self.records, self.settings = R.read_records(self.results_dir)
        self.task = self.records[0].task
        self.dataset = SafeDataset(self.data_dir)
        self.split = options.split or str(self.settings.get("split", "test"))
        self.expected_rows = R.check_complete(self.records, self.settings, self.results_dir,
                                              allow_partial=options.allow_partial, split_keys=self._split_keys)
        self.networks: dict[str, NetworkInfo] = {}
        self._cache: dict[str, Any] = {}
        self.entries = [(ri, g) for ri, r in enumerate(self.records) for g in sorted(r.gen, key=lambda g: (g.sample, g.slot))]
        rec = [self.records[ri] for ri, _ in self.entries]
        self.uids = np.asarray([r.uid for r in rec], np.int64)
        self.slots = np.asarray([g.slot for _, g in self.entries], np.int64)
        self.categories = np.asarray([r.categories[g.slot] for r, (_, g) in zip(rec, self.entries)], np.int64)
        self.gt_iids = np.asarray([r.outfit[g.slot] for r, (_, g) in zip(rec, self.entries)], np.int64)
        self.captions = [g.caption for _, g in self.entries]
        self.preferences = [r.preference.get(g.slot) for r, (_, g) in zip(rec, self.entries)]
        n_items = self.dataset.num_items
        if self.gt_iids.max() > n_items:
            raise R.RecordError(f"{self.results_dir / R.RECORDS_FILE}: item id {self.gt_iids.max()} exceeds the "
                                f"dataset's {n_items} items ({self.data_dir}); wrong --data?")

    # ---------------------------------------------------------------------------------------------- helpers
    def _split_keys(self) -> list[tuple[int, int]] | None:
        """(uid, oid) of the split's rows in order (to name missing records); None when the split is unreadable."""
        try:
            t = self.dataset.split(self.split)
        except ValueError:  # unknown or unreadable split: the error then names no rows
            return None
        return list(zip(t.uids.tolist(), t.oids.tolist()))

    @property
    def partial(self) -> str | None:
        """'N of M rows' when the results hold fewer records than the run's rows (--allow-partial), else None."""
        if self.expected_rows is None or len(self.records) >= self.expected_rows:
            return None
        return f"{len(self.records)} of {self.expected_rows} rows"

    def cached(self, key: str, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def network(self, name: str, from_checkpoint, load_packaged, packaged_source: str, random_init):
        """The shared weight policy of the FID and LPIPS networks, built once per run and labelled in the report.

        `--<name>` checkpoint given -> `from_checkpoint(path)` (real-weight); else the real weights that ship inside
        packages (installed by scripts/test_material.sh) via `load_packaged()`; else a seeded random-init stand-in.
        """
        def build():
            path = self.opt.checkpoints.get(name)
            if path:
                model = from_checkpoint(path)
                self.networks[name] = NetworkInfo(name, REAL, path, {})
                return model
            try:
                model = load_packaged()
                self.networks[name] = NetworkInfo(name, REAL, packaged_source, {})
            except (FileNotFoundError, ImportError, OSError):
                model = random_init(self.opt.seed)
                self.networks[name] = NetworkInfo(name, RANDOM, f"random init, seed {self.opt.seed}", {})
            return model
        return self.cached(f"net_{name}", build)

    def category_names(self) -> dict[int, str]:
        return self.dataset.categories

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """(record index, sample) -> entry indices in slot order (one outfit/row per generated sample)."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, (ri, g) in enumerate(self.entries):
            out.setdefault((ri, g.sample), []).append(i)
        return out

    def item_category(self) -> np.ndarray:
        """int64 [num_items + 1] category per catalogue item, -1 for id 0 (the blank): the retrieval gallery labels."""
        def load():
            cats = np.asarray(self.dataset.iid_category, np.int64).copy()
            cats[0] = -1
            return cats
        return self.cached("item_category", load)

    def candidate_iids(self) -> np.ndarray:
        """int64 [N, 5] FITB retrieval candidates per generated entry (index 0 = GT), from fitb_<split>_candidates."""
        def load():
            table = self.dataset.candidates(self.split)
            row = {(int(u), int(o)): i for i, (u, o) in enumerate(zip(table.uids, table.oids))}
            rows = []
            for ri, _ in self.entries:
                key = (self.records[ri].uid, self.records[ri].oid)
                if key not in row:
                    raise ValueError(f"{self.data_dir}: no retrieval candidates for (uid, oid) = {key} in split "
                                     f"{self.split!r}")
                rows.append(row[key])
            cands = np.asarray(table.candidates, np.int64)[np.asarray(rows)]             # [N, 5]
            bad = np.flatnonzero(cands[:, 0] != self.gt_iids)
            if bad.size:
                ri = self.entries[bad[0]][0]
                raise ValueError(f"{self.data_dir}: fitb_{self.split}_candidates gives GT item {cands[bad[0], 0]} for "
                                 f"(uid, oid) = ({self.records[ri].uid}, {self.records[ri].oid}) but records.json has "
                                 f"{self.gt_iids[bad[0]]} ({bad.size} entries differ); wrong --data or --split?")
            return cands
        return self.cached("candidate_iids", load)

    # ---------------------------------------------------------------------------------------------- images
    def gen_images(self) -> np.ndarray:
        """uint8 [N, H, W, 3] generated images in entry order."""
        return self.cached("gen_images", lambda: R.load_images(self.results_dir, [g.image for _, g in self.entries]))

    def collages(self, images: np.ndarray) -> np.ndarray:
        """uint8 [G, C, C, 3] 2x2 collages (C = --collage-size) of the GOR outfits with 4 generated items."""
        groups = [idx for idx in self.groups().values() if len(idx) == 4]
        if not groups:
            raise ValueError("GOR collage metrics need rows with 4 generated items (one per slot)")
        return np.stack([collage_2x2(images[idx], self.opt.collage_size) for idx in groups])

    def item_image(self, iid: int, size: int | None) -> np.ndarray:
        path = self.dataset.image_file(int(iid))
        if path is None:
            raise FileNotFoundError(f"{self.data_dir}: item {iid} has no image (image_paths.json)")
        return R.load_image(path.parent, path.name, size)

    def gt_images(self) -> np.ndarray:
        """uint8 [N, H, W, 3] GT image per generated entry (results-dir copy if recorded, else the dataset's),
        resized to `--gt-size` or to the generated images' size."""
        def load():
            size = self.opt.gt_size or self.gen_images().shape[1]
            out = []
            for ri, g in self.entries:
                grd = {e.slot: e for e in self.records[ri].grd}.get(g.slot)
                if grd is not None and grd.image:
                    out.append(R.load_image(self.results_dir, grd.image, size))
                else:
                    out.append(self.item_image(self.records[ri].outfit[g.slot], size))
            return np.stack(out)
        return self.cached("gt_images", load)

    # ---------------------------------------------------------------------------------------------- networks
    def clip(self):
        """ClipEncoder (real weights from --clip, else a seeded random stand-in of preset `--clip-config`)."""
        def build():
            path = self.opt.checkpoints.get("clip")
            dtype = jnp.dtype(self.opt.clip_dtype)
            bpe = None
            if path:
                model, config, source = load_clip(path, dtype=dtype)
                p = pathlib.Path(path)
                if p.is_dir() and (p / clip_tokenizer.BPE_FILENAME).is_file():
                    bpe = p
                info = NetworkInfo("clip", REAL, source, config.to_json())
            else:
                config = clip_text.get_config(self.opt.clip_preset).with_dtype(dtype)
                model = clip_text.CLIP(config, rngs=nnx.Rngs(self.opt.seed))
                info = NetworkInfo("clip", RANDOM, f"random init, preset {self.opt.clip_preset!r}, seed "
                                   f"{self.opt.seed}", config.to_json())
            try:
                tok = clip_tokenizer.CLIPTokenizer(bpe, context_length=config.text.context_length)
            except FileNotFoundError as e:  # image-only metrics still run; text metrics fail with this message
                tok = _MissingTokenizer(str(e))
                info.config["tokenizer"] = f"unavailable: {e}"
            else:
                if tok.vocab_size > config.text.vocab_size:
                    raise ValueError(f"CLIP tokenizer ({tok.bpe_path}) has {tok.vocab_size} tokens but the text "
                                     f"tower only {config.text.vocab_size}")
                info.config["tokenizer"] = str(tok.bpe_path)
            self.networks["clip"] = info
            return ClipEncoder(model, tok, batch_size=self.opt.batch_size, show_progress=self.opt.show_progress)
        return self.cached("clip", build)

    # ---------------------------------------------------------------------------------------------- embeddings
    def gen_clip(self) -> np.ndarray:
        return self.cached("gen_clip", lambda: self.clip().images(self.gen_images(), "CLIP generated"))

    def gt_clip(self) -> np.ndarray:
        return self.cached("gt_clip", lambda: self.clip().images(self.gt_images(), "CLIP ground truth"))

    def catalogue_clip(self) -> np.ndarray:
        """[num_items + 1, E] UNnormalised CLIP features of every catalogue item (row 0 = blank = zeros)."""
        def load():
            if self.opt.catalogue_features:
                feats = np.load(self.opt.catalogue_features, allow_pickle=False)
                if feats.ndim != 2 or feats.shape[0] != self.dataset.num_items + 1:
                    raise ValueError(f"{self.opt.catalogue_features}: expected [{self.dataset.num_items + 1}, E] "
                                     f"features (row = item id), got {feats.shape}")
                return feats.astype(np.float32)
            enc = self.clip()
            size = self.gen_images().shape[1]
            iids = range(1, self.dataset.num_items + 1)
            imgs = np.stack([self.item_image(i, size) for i in iids])
            emb = enc.images(imgs, "CLIP catalogue")
            return np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb])
        return self.cached("catalogue_clip", load)

    def settings_record(self) -> dict:
        """Everything needed to reproduce the numbers (goes into the report)."""
        return {"results_dir": str(self.results_dir), "data_dir": str(self.data_dir), "task": self.task,
                "split": self.split, "num_records": len(self.records), "num_generated": len(self.entries),
                "rows_expected": self.expected_rows, "partial": self.partial or False,
                "batch_size": self.opt.batch_size, "seed": self.opt.seed, "clip_compute_dtype": self.opt.clip_dtype,
                "gt_resize": self.opt.gt_size or "to generated size (bilinear)",
                "gor_collage_size": self.opt.collage_size,
                "clip_view": "resize shorter side to 224 (bicubic, antialias), centre crop, CLIP mean/std",
                "catalogue_features": self.opt.catalogue_features or "computed with this run's CLIP",
                "original_gor_indexing": self.opt.original_gor_indexing,
                "generation_settings": self.settings}
