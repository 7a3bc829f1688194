"""Stage 2 (spec §2.4): a target item generated from the user's preference, the category sentence and the
outfit's three other items (matching-MLP offset); `diffusion.stages.stage2_loss`."""
from __future__ import annotations

import functools
import json
from typing import Mapping

import jax
import numpy as np

from dualfashion_jax.data import examples, keys as K
from dualfashion_jax.data.format import preference_text
from dualfashion_jax.diffusion import stages
from dualfashion_jax.training import stage_parts as parts
from dualfashion_jax.training.tasks import Task

ROLES = (K.TARGET, K.CONTEXT)  # visual roles, in the order of their VAE keys (fold_in index)
TEXT = (K.CAPTION_IDS, K.CAPTION_LABEL_MASK, K.PREF_IDS, K.PREF_MASK, K.SENTENCE_IDS, K.SENTENCE_MASK, K.IDS)


class AppearanceStage2Source(examples.Stage2Source):
    """Stage 2 with the user's appearance (text/appearance.json) appended to the preference text (`preference_text`).

    Only the source's preference text changes: `texts.preference` is swapped, so `__getitem__` and `distinct_texts`
    (truncation check) both see the appearance text.
    """

    def __init__(self, ds, tok, **kw):
        self.appearance = ds.appearance
        if not self.appearance:
            raise ValueError(f"config.data.preference_appearance=True but {ds.root / 'text' / 'appearance.json'} is "
                             "missing or empty (make the data with appearance, e.g. `data make-demo --appearance`)")
        super().__init__(ds, tok, **kw)
        plain = self.texts.preference  # (uid, cid) -> the 4-key caption JSON

        def with_appearance(uid: int, cid: int) -> str:
            return preference_text(json.loads(plain(uid, cid)), self.appearance.get(int(uid), {}))

        self.texts.preference = with_appearance


def stage2_source(ds, tok, data_config) -> examples.Stage2Source:
    """The stage-2 example source of `config.data`: with the appearance text when `preference_appearance` is on."""
    source = AppearanceStage2Source if data_config.get("preference_appearance", False) else examples.Stage2Source
    return source(ds, tok, split=data_config.split, use_latents=data_config.use_latents)


def batch(streams: Mapping[str, Mapping[str, np.ndarray]], kind: str) -> dict[str, np.ndarray]:
    """The loss fields of the host batch: target + context visuals, caption, preference, sentence, ids."""
    return parts.select(streams["main"], (K.visual(kind, K.TARGET), K.visual(kind, K.CONTEXT)) + TEXT)


def loss(model, fz, batch, key, *, cfg: stages.LossConfig):
    """The stage-2 objective of a batch (images VAE-encoded first when the dataset has no latents)."""
    k_vae, k_loss = jax.random.split(key)
    batch = parts.encode_visuals(batch, fz, k_vae, ROLES)
    return stages.stage2_loss(
        k_loss, batch, model_fn=model, t5_fn=fz["t5"],
        offset_fn=lambda m, k: model.stage2.offset(m, deterministic=False, rngs=k),
        target_role=model.stage2.target_role[...], null_emb=fz["null_emb"], null_emb_2x=fz["null_emb_2x"], cfg=cfg)


def make_data(src, config, process_index: int, process_count: int) -> parts.Streams:
    it = parts.batch_iterator(src, config, config.data.seed, process_index, process_count)
    return parts.Streams({"main": it}, functools.partial(batch, kind=src.kind))


def build(config) -> Task:
    s = parts.setup(config)
    d = config.data
    src = stage2_source(s.ds, s.tok, d)
    examples.check_truncation(src, f"stage2 texts of {d.dir}")  # scaffold fits; cut texts counted
    latent_hw, vae_spec = parts.latent_size(config, s.ds, src.kind)
    frozen = {"t5": s.t5, **({"vae": vae_spec} if src.kind == K.IMAGE and vae_spec else {})}
    mcfg = parts.model_config(config, s, latent_hw)
    if latent_hw is not None and tuple(mcfg.latent_hw) != latent_hw:
        raise ValueError(f"config.model: the stage-2 matching MLP is built for {mcfg.latent_hw} latents but "
                         f"{d.dir} gives {latent_hw} (set config.model.latent_from_data=True or a matching preset)")
    return parts.task(config, s, mcfg, frozen, functools.partial(loss, cfg=s.loss_cfg),
                      functools.partial(make_data, src, config))
