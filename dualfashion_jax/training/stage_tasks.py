"""Stages 1/2/3 as `Task`s: the DualMMDiT, the frozen T5 (and VAE when the dataset has no latents), the
objectives of `diffusion/stages.py`, and batches from `data/examples.py` + `data/pipeline.py`.

Config blocks read here: config.model (MMDiT preset + dtype/backend/remat), config.t5 / config.vae
(preset, converted `checkpoint` dir or "" for a seeded random init -- demo only), config.data (dataset dir,
tokenizer dir, max_length, use_latents, seed, split, n_aug) and config.loss (diffusion.stages.LossConfig fields).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.training.tasks import Frozen, Task

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(name: str, field: str):
    if name not in DTYPES:
        raise ValueError(f"{field}={name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def mmdit_config(config, vocab_size: int | None = None, latent_hw: tuple[int, int] | None = None):
    """The MMDiTConfig of `config.model` (preset + overrides); stages 2 and 3 add the stage-2 modules (stage 3 not
    with `config.model.stage3_drop_stage2`, as the original), `config.optim.param_dtype` sets the params' dtype."""
    from dualfashion_jax.models import mmdit_config as mc

    m = config.model
    over = dict(dtype=_dtype(m.dtype, "config.model.dtype"), attention_backend=m.attention_backend,
                remat_policy=m.remat_policy, stage2=config.stage != "stage1" or m.get("stage2", False))
    if config.stage == "stage3" and m.get("stage3_drop_stage2", False):  # the original's stage 3 (§7.2 item 14)
        over["stage2"] = False
    optim_cfg = config.get("optim") or {}
    if optim_cfg.get("param_dtype", "float32") != "float32":  # the original's bf16 params (spec §7.2 item 3)
        over["param_dtype"] = _dtype(optim_cfg.param_dtype, "config.optim.param_dtype")
    over.update(dict(m.get("overrides", {}) or {}))
    if vocab_size is not None and "vocab_size" not in over:
        over["vocab_size"] = vocab_size
    if latent_hw is not None and "latent_size" not in over:  # demo: size the model to the data's latents
        over.update(latent_size=tuple(latent_hw), sample_size=latent_hw[0],
                    pos_embed_max_size=max(mc.get(m.preset).pos_embed_max_size, 2 * max(latent_hw)))
    return mc.get(m.preset, **over)


def frozen_spec(kind: str, block, seed: int, min_vocab: int = 0) -> tuple[Frozen, Any]:
    """Frozen T5/VAE spec + its config: converted weights from `block.checkpoint`, else seeded random init."""
    from dualfashion_jax.models import pixel_ae, t5, vae

    mod = {"t5": t5, "vae": vae}[kind]
    cls = {"t5": t5.T5Encoder, "vae": vae.AutoencoderKL}[kind]
    over = {"dtype": _dtype(block.dtype, f"config.{kind}.dtype"),  # frozen: bf16 storage loses nothing it trains
            "param_dtype": _dtype(block.get("param_dtype", "float32"), f"config.{kind}.param_dtype")}
    if block.get("checkpoint"):
        from dualfashion_jax.core.converted import load_converted

        meta, flat = load_converted(block.checkpoint, kind=kind)
        names = {k: jnp.dtype(v).name for k, v in over.items()}
        if kind == "vae" and pixel_ae.is_pixel_config(meta.get("config")):  # the demo's stand-in
            return _pixel_ae_spec(block.checkpoint, meta, flat, names)
        cfg = type(mod.get_config("tiny")).from_dict({**meta["config"], **names},
                                                     source=f"{block.checkpoint}/config.json")
        return Frozen(lambda: cls(cfg, rngs=nnx.Rngs(0)), flat, str(block.checkpoint)), cfg
    over.update(dict(block.get("overrides", {}) or {}))
    if kind == "t5" and "vocab_size" not in over:  # a random demo encoder must embed every tokenizer id
        over["vocab_size"] = max(mod.get_config(block.preset).vocab_size, min_vocab)
    cfg = mod.get_config(block.preset, **over)
    return Frozen(lambda: cls(cfg, rngs=nnx.Rngs(seed)), None, f"random {kind} (seed {seed})", kind,
                  cfg.to_dict()), cfg


def _pixel_ae_spec(folder, meta, flat, dtypes) -> tuple[Frozen, Any]:
    """Frozen spec of a `pixel_s2d` VAE checkpoint (models/pixel_ae.py): the same `encode`/`cfg` interface."""
    from dualfashion_jax.models import pixel_ae

    cfg = pixel_ae.PixelAEConfig.from_dict({**meta["config"], **dtypes}, source=f"{folder}/config.json")
    proj = None if cfg.basis == "orthonormal" else np.zeros((cfg.pixel_channels, cfg.latent_channels))
    return Frozen(lambda: pixel_ae.PixelAutoencoder(cfg, proj=proj), flat, str(folder)), cfg


# host batch key -> loss batch key, per stage (`*_latent(s)` or `*_image(s)` depending on the dataset)
def _stage2_batch(ex: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    return {f"target_{kind}s": ex[f"target_{kind}"], f"context_{kind}s": ex[f"context_{kind}s"],
            "caption_ids": ex["caption_ids"], "caption_label_mask": ex["caption_labels"],
            "pref_ids": ex["pref_ids"], "pref_mask": ex["pref_mask"], "sentence_ids": ex["sentence_ids"],
            "sentence_mask": ex["sentence_mask"], "ids": ex["iid"]}


def _stage3_batch(ex: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    return {"caption_ids": ex["caption_ids"], "caption_label_mask": ex["caption_labels"], "pref_ids": ex["pref_ids"],
            "pref_mask": ex["pref_mask"], "sentence_ids": ex["sentence_ids"], "sentence_mask": ex["sentence_mask"],
            "ids": ex["iid"]}


class _StageData:
    """One BatchIterator per named stream (stage 1: independent t2i and i2t streams), mapped to loss keys."""

    def __init__(self, streams: Mapping[str, Any], combine):
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


def _build(config, stage: str) -> Task:
    from dualfashion_jax.data import examples, pipeline
    from dualfashion_jax.data.format import SafeDataset
    from dualfashion_jax.diffusion import stages
    from dualfashion_jax.models import mmdit, vae as vae_lib
    from dualfashion_jax.text.tokenizer import CaptionTokenizer

    d = config.data
    ds = SafeDataset(d.dir)
    tok = CaptionTokenizer.from_pretrained(d.tokenizer, max_length=d.max_length)
    t5_spec, t5_cfg = frozen_spec("t5", config.t5, config.t5.seed, min_vocab=tok.vocab_size)
    lcfg = stages.LossConfig(mask_id=tok.mask_id, **dict(config.loss))
    B, seed = config.batch_size, d.seed

    def stream(source, s):
        return lambda pi, pc: pipeline.BatchIterator(source, global_batch_size=B, seed=s, process_index=pi,
                                                     process_count=pc)

    if stage == "stage1":
        src = examples.Stage1Source(ds, tok, use_latents=d.use_latents)
        kind = src.kind

        def combine(ex):
            a, b = ex["t2i"], ex["i2t"]
            return {f"t2i_{kind}s": a[kind], "t2i_ids": a["re_caption_ids"], "t2i_real_ids": a["caption_ids"],
                    f"i2t_{kind}s": b[kind],
                    "caption_ids": b["caption_ids"], "caption_label_mask": b["caption_labels"], "ids": a["iid"]}

        make_data = lambda pi, pc: _StageData({"t2i": stream(src, seed)(pi, pc),  # noqa: E731
                                               "i2t": stream(src, seed + 1)(pi, pc)}, combine)
        visual_keys = ("t2i", "i2t")
    elif stage == "stage2":
        src = examples.Stage2Source(ds, tok, split=d.split, use_latents=d.use_latents)
        kind = src.kind
        make_data = lambda pi, pc: _StageData({"main": stream(src, seed)(pi, pc)},  # noqa: E731
                                              lambda ex: _stage2_batch(ex["main"], kind))
        visual_keys = ("target", "context")
    else:
        src = examples.Stage3Source(ds, tok, n_aug=d.get("n_aug") or None)
        kind = "latent" if ds.latents_dir.joinpath("latents.npy").is_file() else "image"
        make_data = lambda pi, pc: _StageData({"main": stream(src, seed)(pi, pc)},  # noqa: E731
                                              lambda ex: _stage3_batch(ex["main"], kind))
        visual_keys = ()
    examples.check_truncation(src, f"{stage} texts of {d.dir}")  # scaffold fits (else error); cut texts counted

    frozen = {"t5": t5_spec}
    latent_hw = None
    if kind == "latent" and ds.latents_dir.joinpath("latents.npy").is_file():
        from dualfashion_jax.data.images import ItemLatents
        latent_hw = tuple(int(x) for x in ItemLatents(ds).array.shape[1:3])
    elif ds.image_size:  # images are VAE-encoded in the step (stage 3 only needs the size, for its model)
        vae_spec, vae_cfg = frozen_spec("vae", config.vae, config.vae.seed)
        f = vae_cfg.downsample_factor  # AutoencoderKL: 2 ** (levels - 1); pixel_s2d: its fold factor
        latent_hw = (ds.image_size // f, ds.image_size // f)
        if kind == "image" and visual_keys:
            frozen["vae"] = vae_spec
    mcfg = mmdit_config(config, vocab_size=tok.vocab_size if config.model.get("vocab_from_tokenizer") else None,
                        latent_hw=latent_hw if config.model.get("latent_from_data") else None)
    if mcfg.vocab_size < tok.vocab_size:
        raise ValueError(f"config.model: MMDiT vocab_size {mcfg.vocab_size} < tokenizer vocab {tok.vocab_size} "
                         f"({d.tokenizer})")
    if t5_cfg.d_model != mcfg.joint_attention_dim:
        raise ValueError(f"config.t5: d_model {t5_cfg.d_model} != MMDiT joint_attention_dim "
                         f"{mcfg.joint_attention_dim} (config.model.preset={config.model.preset!r})")
    if stage == "stage2" and latent_hw is not None and tuple(mcfg.latent_hw) != latent_hw:
        raise ValueError(f"config.model: the stage-2 matching MLP is built for {mcfg.latent_hw} latents but "
                         f"{d.dir} gives {latent_hw} (set config.model.latent_from_data=True or a matching preset)")

    pad = int(tok.hf.pad_token_id)
    null_ids, _ = tok.encode([" "])  # [1, L], EOS-padded

    def make_consts(mods):
        g, st = nnx.split(mods["t5"])  # split/merge: a closed-over module cannot enter jit (nnx.scan inside)
        enc = jax.jit(lambda st, ids: nnx.merge(g, st)(ids, None))
        ids2 = np.concatenate([null_ids, np.full_like(null_ids, pad)], axis=1)  # [1, 2L]
        return {"null_emb": np.asarray(enc(st, null_ids)[0], np.float32),  # [L, D]
                "null_emb_2x": np.asarray(enc(st, ids2)[0], np.float32)}  # [2L, D]

    def to_latents(batch, fz, key):
        """Dataset without pre-encoded latents: VAE-encode `*_images` (posterior sample) inside the step."""
        out = dict(batch)
        for i, name in enumerate(visual_keys):
            for suffix in ("s",):
                k = f"{name}_image{suffix}"
                if k in out:
                    x = out.pop(k)
                    flat = x.reshape((-1,) + x.shape[-3:])
                    z = vae_lib.encode_images(fz["vae"], flat, jax.random.fold_in(key, i))
                    out[f"{name}_latent{suffix}"] = z.reshape(x.shape[:-3] + z.shape[1:])
        return out

    def loss_fn(model, fz, batch, key):
        k_vae, k_loss = jax.random.split(key)
        batch = to_latents(batch, fz, k_vae) if "vae" in fz else dict(batch)
        t5_fn = fz["t5"]  # the module itself: stages wraps it (pure_fn.as_pure) and stop_gradients its output
        if stage == "stage1":
            return stages.stage1_loss(k_loss, batch, model_fn=model, t5_fn=t5_fn, null_emb=fz["null_emb"], cfg=lcfg)
        if stage == "stage2":
            return stages.stage2_loss(
                k_loss, batch, model_fn=model, t5_fn=t5_fn,
                offset_fn=lambda m, k: model.stage2.offset(m, deterministic=False, rngs=k),
                target_role=model.stage2.target_role[...], null_emb=fz["null_emb"],
                null_emb_2x=fz["null_emb_2x"], cfg=lcfg)
        return stages.stage3_loss(k_loss, batch, model_fn=model, t5_fn=t5_fn, cfg=lcfg)

    return Task(model_factory=lambda rngs: mmdit.DualMMDiT(mcfg, rngs=rngs), frozen=frozen, loss_fn=loss_fn,
                make_data=make_data, global_batch=B, make_consts=make_consts, model_config=mcfg)


def build_stage1(config) -> Task:
    return _build(config, "stage1")


def build_stage2(config) -> Task:
    return _build(config, "stage2")


def build_stage3(config) -> Task:
    return _build(config, "stage3")
