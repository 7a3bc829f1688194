"""The DualMMDiT's config from a training config, and the model loaded from a converted or diffusers checkpoint.

Config blocks read: config.model (MMDiT preset + dtype/backend/remat, `overrides`, `stage3_drop_stage2`),
config.optim.param_dtype and config.stage. A training workdir records the exact result in `MODEL_CONFIG`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax.numpy as jnp

from dualfashion_jax.conversion import mmdit as conv
from dualfashion_jax.core import converted
from dualfashion_jax.models import mmdit, mmdit_config as mc

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODEL_CONFIG = "model_config.json"  # in a workdir: the trained model's exact MMDiT config (Task.model_config)


def dtype(name: str, field: str):
    """The jnp dtype of a config's dtype name; `field` names the config entry in the error."""
    if name not in DTYPES:
        raise ValueError(f"{field}={name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def mmdit_config(config, vocab_size: int | None = None, latent_hw: tuple[int, int] | None = None):
    """The MMDiTConfig of `config.model` (preset + overrides); stages 2 and 3 add the stage-2 modules (stage 3 not
    with `config.model.stage3_drop_stage2`, as the original), `config.optim.param_dtype` sets the params' dtype."""
    m = config.model
    over = dict(dtype=dtype(m.dtype, "config.model.dtype"), attention_backend=m.attention_backend,
                remat_policy=m.remat_policy, stage2=config.stage != "stage1" or m.get("stage2", False))
    if config.stage == "stage3" and m.get("stage3_drop_stage2", False):  # the original's stage 3 (§7.2 item 14)
        over["stage2"] = False
    optim_cfg = config.get("optim") or {}
    if optim_cfg.get("param_dtype", "float32") != "float32":  # the original's bf16 params (spec §7.2 item 3)
        over["param_dtype"] = dtype(optim_cfg.param_dtype, "config.optim.param_dtype")
    over.update(dict(m.get("overrides", {}) or {}))
    if vocab_size is not None and "vocab_size" not in over:
        over["vocab_size"] = vocab_size
    if latent_hw is not None and "latent_size" not in over:  # demo: size the model to the data's latents
        over.update(latent_size=tuple(latent_hw), sample_size=latent_hw[0],
                    pos_embed_max_size=max(mc.get(m.preset).pos_embed_max_size, 2 * max(latent_hw)))
    return mc.get(m.preset, **over)


def saved_model_config(path: str | pathlib.Path) -> mc.MMDiTConfig:
    """The MMDiT config training saved next to its checkpoints (`<workdir>/MODEL_CONFIG`)."""
    return mc.MMDiTConfig.from_dict(json.loads(pathlib.Path(path).read_text()), source=str(path))


def load_transformer(path: str | pathlib.Path, *, stage2_variant: str | None = None, notes: list[str] | None = None,
                     **overrides: Any) -> mmdit.DualMMDiT:
    """A DualMMDiT from a converted checkpoint (config.json kind "mmdit") or a diffusers transformer folder/file.

    `overrides` replace config fields (e.g. `dtype`); conversion notes of a diffusers source go to `notes`.
    """
    path = pathlib.Path(path)
    cfg_path = path / "config.json"
    meta = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if "kind" in meta:
        if meta["kind"] != "mmdit":
            raise ValueError(f"{cfg_path}: holds a {meta['kind']!r} checkpoint, expected 'mmdit' (a transformer)")
        if stage2_variant is not None and meta["config"].get("stage2_variant") != stage2_variant:
            raise ValueError(f"{cfg_path}: converted with stage2_variant {meta['config'].get('stage2_variant')!r}; "
                             f"re-convert from the source checkpoint with --stage2-variant {stage2_variant}")
        meta, flat = converted.load_converted(path, kind="mmdit")
        cfg = mc.MMDiTConfig.from_dict(meta["config"], source=str(cfg_path))
    else:
        cfg, flat = conv.load_source(path, stage2_variant=stage2_variant, notes=notes)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return conv.model_from_flat(cfg, flat)
