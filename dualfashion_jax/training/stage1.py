"""Stage 1 (spec §2.3): text-to-image flow on one stream of item/caption pairs, image-to-caption diffusion on a
second, independently shuffled stream of the same pairs; `diffusion.stages.stage1_loss`."""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import numpy as np

from dualfashion_jax.data import examples, keys as K
from dualfashion_jax.diffusion import stages
from dualfashion_jax.training import stage_parts as parts
from dualfashion_jax.training.tasks import Task

ROLES = (K.T2I, K.I2T)  # visual roles, in the order of their VAE keys (fold_in index)


def batch(streams: Mapping[str, Mapping[str, np.ndarray]], kind: str) -> dict[str, np.ndarray]:
    """Merges the two streams' host batches: the t2i rows give image + prompt (+ structured caption), the i2t rows
    give image + caption target; `ids` are the t2i rows' items."""
    a, b = streams[K.T2I], streams[K.I2T]
    return {K.visual(kind, K.T2I): a[K.visual(kind)], K.T2I_IDS: a[K.RE_CAPTION_IDS],
            K.T2I_REAL_IDS: a[K.CAPTION_IDS], K.visual(kind, K.I2T): b[K.visual(kind)],
            K.CAPTION_IDS: b[K.CAPTION_IDS], K.CAPTION_LABEL_MASK: b[K.CAPTION_LABEL_MASK], K.IDS: a[K.IDS]}


def loss(model, fz, batch, key, *, cfg: stages.LossConfig):
    """The stage-1 objective of a batch (images VAE-encoded first when the dataset has no latents)."""
    k_vae, k_loss = jax.random.split(key)
    batch = parts.encode_visuals(batch, fz, k_vae, ROLES)
    return stages.stage1_loss(k_loss, batch, model_fn=model, t5_fn=fz["t5"], null_emb=fz["null_emb"], cfg=cfg)


def make_data(src, config, process_index: int, process_count: int) -> parts.Streams:
    seed = config.data.seed
    return parts.Streams({K.T2I: parts.batch_iterator(src, config, seed, process_index, process_count),
                          K.I2T: parts.batch_iterator(src, config, seed + 1, process_index, process_count)},
                         functools.partial(batch, kind=src.kind))


def build(config) -> Task:
    s = parts.setup(config)
    src = examples.Stage1Source(s.ds, s.tok, use_latents=config.data.use_latents)
    examples.check_truncation(src, f"stage1 texts of {config.data.dir}")  # scaffold fits; cut texts counted
    latent_hw, vae_spec = parts.latent_size(config, s.ds, src.kind)
    frozen = {"t5": s.t5, **({"vae": vae_spec} if src.kind == K.IMAGE and vae_spec else {})}
    return parts.task(config, s, parts.model_config(config, s, latent_hw), frozen,
                      functools.partial(loss, cfg=s.loss_cfg), functools.partial(make_data, src, config))
