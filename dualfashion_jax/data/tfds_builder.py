"""Optional: materialise stage examples as a TFDS ArrayRecord dataset (for TFDS-based pipelines; TF not needed).

The recommended path reads the safe folder directly (`data/examples.py` + `data/pipeline.py`); see
docs/data.md for why. This builder is for users who want TFDS tooling (versioned, fingerprinted, prepared
copies on shared storage). It writes every example of a `Stage{1,2,3}Source` (images or latents already
preprocessed, texts already tokenized) as fixed-shape `Tensor` features in ArrayRecord files. Reading back
through `builder.as_data_source("train")` gives a random-access source, in the source's example order,
that `BatchIterator` accepts. The config name carries a fingerprint of the inputs (see `fingerprint`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from dualfashion_jax.data import examples as E
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.text.tokenizer import CaptionTokenizer


@functools.lru_cache(maxsize=1)
def _builder_class():
    """(StageConfig, DualFashionStage), defined once: TFDS registers builder classes by name."""
    import tensorflow_datasets as tfds  # local: optional TFDS path; tensorflow_datasets is slow to import

    @dataclasses.dataclass
    class StageConfig(tfds.core.BuilderConfig):
        """Which stage to materialise, and from which dataset / tokenizer folders."""

        data: str = ""
        tokenizer: str = ""
        stage: int = 2
        split: str = "train"
        max_length: int = 256
        use_latents: bool = False

    class DualFashionStage(tfds.core.GeneratorBasedBuilder):
        """Stage-1/2/3 DualFashion examples as fixed-shape tensors."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = []

        def _source(self):
            c = self.builder_config
            ds = SafeDataset(c.data)
            tok = CaptionTokenizer.from_pretrained(c.tokenizer, max_length=c.max_length)
            if c.stage == 1:
                return E.Stage1Source(ds, tok, use_latents=c.use_latents)
            if c.stage == 2:
                return E.Stage2Source(ds, tok, split=c.split, use_latents=c.use_latents)
            if c.stage == 3:
                return E.Stage3Source(ds, tok)
            raise ValueError(f"StageConfig.stage must be 1, 2 or 3, got {c.stage}")

        def _info(self):
            src = self._source()
            if len(src) == 0:
                raise ValueError(f"{self.builder_config.data}: stage {self.builder_config.stage} has no examples")
            ex = src[0]
            feats = tfds.features.FeaturesDict({
                k: tfds.features.Tensor(shape=np.shape(v), dtype=np.asarray(v).dtype) for k, v in ex.items()})
            return tfds.core.DatasetInfo(builder=self, description=__doc__, features=feats,
                                         disable_shuffling=True)  # keep the source's example order

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            src = self._source()
            for i in range(len(src)):
                yield i, {k: np.asarray(v) for k, v in src[i].items()}

    return StageConfig, DualFashionStage


def fingerprint(data: Path, tokenizer: Path, *parts) -> str:
    """Short hash of the inputs (paths, options, and size + mtime of every dataset/tokenizer file except images),
    so a prepared copy is never silently reused after its sources change."""
    h = hashlib.sha1(repr((str(data), str(tokenizer), parts)).encode())
    for root in (data, tokenizer):
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and rel.parts[0] not in ("images", "truth"):
                st = p.stat()
                h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def build_stage_tfds(data: str | os.PathLike, tokenizer: str | os.PathLike, out_dir: str | os.PathLike, *,
                     stage: int = 2, split: str = "train", max_length: int = 256, use_latents: bool = False):
    """Prepare the ArrayRecord dataset under `out_dir` (idempotent) and return the TFDS builder."""
    import tensorflow_datasets as tfds  # local: optional TFDS path; tensorflow_datasets is slow to import

    config_cls, builder_cls = _builder_class()
    data, tokenizer = Path(data).resolve(), Path(tokenizer).resolve()
    fp = fingerprint(data, tokenizer, stage, split, max_length, use_latents)
    cfg = config_cls(name=f"stage{stage}_{split}_{fp}", data=str(data), tokenizer=str(tokenizer),
                     stage=stage, split=split, max_length=max_length, use_latents=use_latents)
    builder = builder_cls(config=cfg, data_dir=str(out_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(data)))
    return builder
