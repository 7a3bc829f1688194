"""The DVBPR stage (`config.stage = "dvbpr"`, configs/dvbpr.py): BPR on (user, positive, sampled negative) triples.

Objective (Kang et al. 2017, eq. 3): mean_b -log sigmoid(score(u, i) - score(u, j)) + user_l2 * mean_b |theta_u|^2;
the CNN's weight decay is AdamW's. Triples come from `data/interactions.TripleSource` (the split's outfits +
history as positives), visuals are the dataset's latents when it has them (config.data.use_latents) else images.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp

from dualfashion_jax.data import interactions, keys as K, pipeline
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig
from dualfashion_jax.training.tasks import Task

MODEL_FIELDS = ("channels", "hidden", "embed_dim")  # config.model fields passed to DVBPRConfig


def bpr_loss(s_pos: jax.Array, s_neg: jax.Array) -> jax.Array:
    """mean(-log sigmoid(s_pos - s_neg)) over [B] score pairs, in fp32 (log_sigmoid is stable for any gap)."""
    d = s_pos.astype(jnp.float32) - s_neg.astype(jnp.float32)
    return jnp.mean(-jax.nn.log_sigmoid(d))


def loss(model: DVBPR, fz: Mapping, batch: Mapping[str, jax.Array], key: jax.Array, *, kind: str,
         user_l2: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The BPR objective of a batch of triples; metrics: bpr, user_l2 term, pair_acc (training AUC estimate)."""
    del fz, key  # no frozen module; negatives were sampled by the data source
    uids = batch[K.UID]  # [B]
    pos = interactions.model_input(batch[K.visual(kind, interactions.POS)], kind)  # [B, H, W, C]
    neg = interactions.model_input(batch[K.visual(kind, interactions.NEG)], kind)
    s_pos, s_neg = model(uids, pos, neg)  # [B], [B]
    bpr = bpr_loss(s_pos, s_neg)
    reg = user_l2 * jnp.mean(jnp.sum(jnp.square(model.users(uids)), -1))
    return bpr + reg, {"bpr": bpr, "user_l2": reg, "pair_acc": jnp.mean((s_pos > s_neg).astype(jnp.float32))}


def model_config(config, ds: SafeDataset, kind: str, input_shape: tuple[int, ...]) -> DVBPRConfig:
    """DVBPRConfig from config.model and the data (users, visual kind, [H, W, C] of one item)."""
    m = config.model
    if input_shape[0] != input_shape[1]:
        raise ValueError(f"{ds.root}: DVBPR needs square item visuals, got {list(input_shape)}")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(str(m.dtype))
    if dtype is None:
        raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {m.dtype!r}")
    missing = [f for f in MODEL_FIELDS if f not in m]
    if missing:
        raise ValueError(f"config.model lacks {missing} (configs/dvbpr.py)")
    return DVBPRConfig(num_users=interactions.num_users(ds), input_kind=kind, in_channels=int(input_shape[2]),
                       input_size=int(input_shape[0]), channels=tuple(m.channels), hidden=int(m.hidden),
                       embed_dim=int(m.embed_dim), dtype=dtype)


def use_latents(value) -> str | bool:
    """config.data.use_latents: True / False / "auto" (also as the strings "true" / "false")."""
    if isinstance(value, bool):
        return value
    v = {"auto": "auto", "true": True, "false": False}.get(str(value).lower())
    if v is None:
        raise ValueError(f"config.data.use_latents must be true, false or 'auto', got {value!r}")
    return v


def build(config) -> Task:
    d = config.data
    ds = SafeDataset(d.dir)
    src = interactions.TripleSource(ds, d.split, use_latents=use_latents(d.use_latents), seed=d.seed, rounds=d.rounds,
                                    cache_items=d.get("cache_items", 0), same_category=d.get("same_category", 0.0))
    cfg = model_config(config, ds, src.kind, tuple(src.load(1).shape))
    if float(config.loss.user_l2) < 0:
        raise ValueError(f"config.loss.user_l2 must be >= 0, got {config.loss.user_l2}")

    def make_data(process_index: int, process_count: int) -> pipeline.BatchIterator:
        return pipeline.BatchIterator(src, global_batch_size=config.batch_size, seed=d.seed,
                                      process_index=process_index, process_count=process_count)

    return Task(model_factory=lambda rngs: DVBPR(cfg, rngs=rngs), frozen={},
                loss_fn=functools.partial(loss, kind=src.kind, user_l2=float(config.loss.user_l2)),
                make_data=make_data, global_batch=config.batch_size, model_config=cfg)
