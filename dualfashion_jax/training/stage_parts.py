"""What the three stage tasks (`training/stage1.py`, `stage2.py`, `stage3.py`) share: the dataset + tokenizer +
frozen T5, the MMDiT config and its checks, the per-stream batch iterator, the T5 null prompts, and the in-step
VAE encoding of datasets without pre-encoded latents.

Config blocks read: config.model (MMDiT preset + dtype/backend/remat), config.t5 / config.vae (preset, converted
`checkpoint` dir or "" for a seeded random init -- demo only), config.data (dataset dir, tokenizer dir,
max_length, use_latents, seed, split, n_aug) and config.loss (diffusion.stages.LossConfig fields).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

from dualfashion_jax.data import keys as K, pipeline
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.images import ItemLatents
from dualfashion_jax.diffusion import stages
from dualfashion_jax.modeling import latents as latents_lib
from dualfashion_jax.modeling.frozen import Frozen, frozen_spec
from dualfashion_jax.modeling.transformer import mmdit_config
from dualfashion_jax.models import mmdit
from dualfashion_jax.text.tokenizer import CaptionTokenizer
from dualfashion_jax.training.tasks import Task


@dataclasses.dataclass
class Setup:
    """The dataset, tokenizer, frozen T5 spec (+ its config) and loss hyper-parameters of a stage run."""
    ds: SafeDataset
    tok: CaptionTokenizer
    t5: Frozen
    t5_cfg: Any
    loss_cfg: stages.LossConfig


def setup(config) -> Setup:
    """Opens config.data's dataset and tokenizer, and specs the frozen T5 (its vocabulary covers the tokenizer's)."""
    d = config.data
    ds = SafeDataset(d.dir)
    tok = CaptionTokenizer.from_pretrained(d.tokenizer, max_length=d.max_length)
    t5_spec, t5_cfg = frozen_spec("t5", config.t5, config.t5.seed, min_vocab=tok.vocab_size)
    return Setup(ds, tok, t5_spec, t5_cfg, stages.LossConfig(mask_id=tok.mask_id, **dict(config.loss)))


class Streams:
    """One BatchIterator per named stream (stage 1: independent t2i and i2t streams), merged into one batch by
    `combine({name: host batch}) -> loss batch`; checkpointable (get_state / set_state per stream)."""

    def __init__(self, streams: Mapping[str, Any], combine: Callable[[dict], dict[str, np.ndarray]]):
        self.streams, self.combine = dict(streams), combine

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return self.combine({k: next(it) for k, it in self.streams.items()})

    def get_state(self) -> dict:
        return {k: it.get_state() for k, it in self.streams.items()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        missing = sorted(set(self.streams) - set(state))
        if missing:
            raise ValueError(f"data iterator state has no entry for stream(s) {missing} (has {sorted(state)})")
        for k, it in self.streams.items():
            it.set_state(state[k])


def batch_iterator(source, config, seed: int, process_index: int, process_count: int) -> pipeline.BatchIterator:
    """This process's share of `config.batch_size` rows per step from `source`, shuffled with `seed`."""
    return pipeline.BatchIterator(source, global_batch_size=config.batch_size, seed=seed,
                                  process_index=process_index, process_count=process_count)


def select(example: Mapping[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The fields a loss reads (and `ids`), under the same names (data/keys.py)."""
    return {k: example[k] for k in names}


def has_latents(ds: SafeDataset) -> bool:
    return ds.latents_dir.joinpath("latents.npy").is_file()


def latent_size(config, ds: SafeDataset, kind: str) -> tuple[tuple[int, int] | None, Frozen | None]:
    """(latent [h, w] of the dataset, VAE spec): from `latents/` for latent batches, else image size / VAE factor."""
    if kind == K.LATENT and has_latents(ds):
        return tuple(int(x) for x in ItemLatents(ds).array.shape[1:3]), None
    if ds.image_size:  # images are VAE-encoded in the step (stage 3 only needs the size, for its model)
        vae_spec, vae_cfg = frozen_spec("vae", config.vae, config.vae.seed)
        f = vae_cfg.downsample_factor  # AutoencoderKL: 2 ** (levels - 1); pixel_s2d: its fold factor
        return (ds.image_size // f, ds.image_size // f), vae_spec
    return None, None


def model_config(config, s: Setup, latent_hw: tuple[int, int] | None):
    """The MMDiT config of the run, checked against the tokenizer and the T5 width."""
    tok = s.tok
    mcfg = mmdit_config(config, vocab_size=tok.vocab_size if config.model.get("vocab_from_tokenizer") else None,
                        latent_hw=latent_hw if config.model.get("latent_from_data") else None)
    if mcfg.vocab_size < tok.vocab_size:
        raise ValueError(f"config.model: MMDiT vocab_size {mcfg.vocab_size} < tokenizer vocab {tok.vocab_size} "
                         f"({config.data.tokenizer})")
    if s.t5_cfg.d_model != mcfg.joint_attention_dim:
        raise ValueError(f"config.t5: d_model {s.t5_cfg.d_model} != MMDiT joint_attention_dim "
                         f"{mcfg.joint_attention_dim} (config.model.preset={config.model.preset!r})")
    return mcfg


def null_embeddings(tok: CaptionTokenizer, mods: Mapping[str, nnx.Module]) -> dict[str, np.ndarray]:
    """T5(" ") padded with EOS to one segment (`null_emb` [L, D]) and to two (`null_emb_2x` [2L, D])."""
    pad = int(tok.hf.pad_token_id)
    null_ids, _ = tok.encode([" "])  # [1, L], EOS-padded
    g, st = nnx.split(mods["t5"])  # split/merge: a closed-over module cannot enter jit (nnx.scan inside)
    enc = jax.jit(lambda st, ids: nnx.merge(g, st)(ids, None))
    ids2 = np.concatenate([null_ids, np.full_like(null_ids, pad)], axis=1)  # [1, 2L]
    return {"null_emb": np.asarray(enc(st, null_ids)[0], np.float32),  # [L, D]
            "null_emb_2x": np.asarray(enc(st, ids2)[0], np.float32)}  # [2L, D]


def encode_visuals(batch: Mapping[str, jax.Array], fz: Mapping[str, Any], key: jax.Array,
                   roles: tuple[str, ...]) -> dict[str, jax.Array]:
    """Datasets without pre-encoded latents: VAE-encode each role's `<role>_images` (a posterior sample, key
    folded with the role's index) into `<role>_latents`, inside the step. Without a VAE the batch is unchanged."""
    out = dict(batch)
    if "vae" not in fz:
        return out
    for i, role in enumerate(roles):
        k = K.visual(K.IMAGE, role)
        if k in out:
            x = out.pop(k)
            flat = x.reshape((-1,) + x.shape[-3:])
            z = latents_lib.encode_images(fz["vae"], flat, jax.random.fold_in(key, i))
            out[K.visual(K.LATENT, role)] = z.reshape(x.shape[:-3] + z.shape[1:])
    return out


def task(config, s: Setup, mcfg, frozen: Mapping[str, Frozen], loss_fn, make_data) -> Task:
    """The stage Task: a DualMMDiT of `mcfg`, the frozen modules, the loss, the data and the T5 null prompts."""
    return Task(model_factory=lambda rngs: mmdit.DualMMDiT(mcfg, rngs=rngs), frozen=frozen, loss_fn=loss_fn,
                make_data=make_data, global_batch=config.batch_size,
                make_consts=functools.partial(null_embeddings, s.tok), model_config=mcfg)
