"""Stage 3 (spec §2.5): caption diffusion only, on augmented captions with preference + sentence text (no image
tokens); `diffusion.stages.stage3_loss`. The dataset's visuals only size the model (as in stage 2)."""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import numpy as np

from dualfashion_jax.data import examples, keys as K
from dualfashion_jax.diffusion import stages
from dualfashion_jax.training import stage_parts as parts
from dualfashion_jax.training.tasks import Task

FIELDS = (K.CAPTION_IDS, K.CAPTION_LABEL_MASK, K.PREF_IDS, K.PREF_MASK, K.SENTENCE_IDS, K.SENTENCE_MASK, K.IDS)


def batch(streams: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The loss fields of the host batch: augmented captions [B, A, L], preference, sentence, ids."""
    return parts.select(streams["main"], FIELDS)


def loss(model, fz, batch, key, *, cfg: stages.LossConfig):
    """The stage-3 objective of a batch (the key is split as in stages 1-2, which may VAE-encode first)."""
    _, k_loss = jax.random.split(key)
    return stages.stage3_loss(k_loss, dict(batch), model_fn=model, t5_fn=fz["t5"], cfg=cfg)


def make_data(src, config, process_index: int, process_count: int) -> parts.Streams:
    it = parts.batch_iterator(src, config, config.data.seed, process_index, process_count)
    return parts.Streams({"main": it}, batch)


def build(config) -> Task:
    s = parts.setup(config)
    d = config.data
    src = examples.Stage3Source(s.ds, s.tok, n_aug=d.get("n_aug") or None)
    examples.check_truncation(src, f"stage3 texts of {d.dir}")  # scaffold fits; cut texts counted
    latent_hw, _ = parts.latent_size(config, s.ds, K.LATENT if parts.has_latents(s.ds) else K.IMAGE)
    return parts.task(config, s, parts.model_config(config, s, latent_hw), {"t5": s.t5},
                      functools.partial(loss, cfg=s.loss_cfg), functools.partial(make_data, src, config))
