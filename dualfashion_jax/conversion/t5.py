"""transformers `T5EncoderModel` (v1.1, gated-GELU) -> Flax `T5Encoder` key map, mask-row override, converter.

Torch keys are checked first (one error naming every missing/unexpected/mis-shaped *torch* key), then
per-layer tensors are transposed and stacked on the scanned `LAYERS` axis and checked against the Flax
model's `eval_shape`. The optional "aligned T5 mask embedding" (spec §1.3) overwrites one row of the
shared input embedding (`<extra_id_0>`, id 32099 in the real vocabulary).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualfashion_jax.conversion import common
from dualfashion_jax.core import converted, params as core_params
from dualfashion_jax.models import t5 as t5_model

KIND = "t5"
DEFAULT_MASK_TOKEN_ID = 32099  # tokenizer.convert_tokens_to_ids("<extra_id_0>") in the real T5 vocabulary
_IGNORED_PREFIXES = ("decoder.", "lm_head.")  # a full T5ForConditionalGeneration checkpoint: encoder half only
_TIED = "encoder.embed_tokens.weight"  # tied duplicate of shared.weight

# Flax sub-path under blocks/ <- torch suffix under encoder.block.{i}. (kernels transposed to [in, out])
_LAYER_MAP = {
    "attn/q/kernel": "layer.0.SelfAttention.q.weight",
    "attn/k/kernel": "layer.0.SelfAttention.k.weight",
    "attn/v/kernel": "layer.0.SelfAttention.v.weight",
    "attn/o/kernel": "layer.0.SelfAttention.o.weight",
    "attn_norm/weight": "layer.0.layer_norm.weight",
    "ffn/wi_0/kernel": "layer.1.DenseReluDense.wi_0.weight",
    "ffn/wi_1/kernel": "layer.1.DenseReluDense.wi_1.weight",
    "ffn/wo/kernel": "layer.1.DenseReluDense.wo.weight",
    "ffn_norm/weight": "layer.1.layer_norm.weight",
}
_REL_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


class _Shape:
    """Stands in for a ShapeDtypeStruct in `core_params.validate` (only `.shape` is read)."""

    def __init__(self, *shape: int):
        self.shape = tuple(shape)


def config_from_hf(hf: Mapping[str, Any], *, source: str) -> t5_model.T5Config:
    """T5Config from a transformers T5 `config.json` dict; rejects non-v1.1 (non gated-GELU) models."""
    if hf.get("model_type") not in ("t5", None):
        raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not 't5'")
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in ("gated-gelu", "gated-gelu_new"):
        raise ValueError(f"{source}: feed_forward_proj {proj!r} is not supported; the T5 v1.1 encoder needs "
                         "'gated-gelu' (gelu_new, tanh approximation)")
    missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads") if k not in hf]
    if missing:
        raise ValueError(f"{source}: missing T5 config fields {missing}")
    return t5_model.T5Config(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
        num_layers=hf["num_layers"], num_heads=hf["num_heads"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6))


def expected_torch_shapes(cfg: t5_model.T5Config) -> dict[str, _Shape]:
    """Every key (and shape) a transformers T5EncoderModel state dict holds for `cfg`."""
    d, inner, f = cfg.d_model, cfg.inner_dim, cfg.d_ff
    per_layer = {"q": (inner, d), "k": (inner, d), "v": (inner, d), "o": (d, inner),
                 "wi_0": (f, d), "wi_1": (f, d), "wo": (d, f)}
    out = {"shared.weight": _Shape(cfg.vocab_size, d), _TIED: _Shape(cfg.vocab_size, d),
           "encoder.final_layer_norm.weight": _Shape(d),
           _REL_BIAS: _Shape(cfg.relative_attention_num_buckets, cfg.num_heads)}
    for i in range(cfg.num_layers):
        for flax_key, suffix in _LAYER_MAP.items():
            leaf = suffix.split(".")[-2]
            out[f"encoder.block.{i}.{suffix}"] = _Shape(*per_layer[leaf]) if leaf in per_layer else _Shape(d)
    return out


def torch_to_flax(sd: Mapping[str, np.ndarray], cfg: t5_model.T5Config, *, source: str) -> core_params.FlatParams:
    """Maps a T5EncoderModel state dict to the flat Flax params of `T5Encoder(cfg)` (float32)."""
    sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES)}
    if "shared.weight" not in sd and _TIED in sd:
        sd["shared.weight"] = sd[_TIED]
    core_params.validate(sd, expected_torch_shapes(cfg), source=source, ignore_missing=lambda k: k == _TIED)

    def f32(x):
        return np.asarray(x, dtype=np.float32)

    out = {"shared/embedding": f32(sd["shared.weight"]),
           "relative_attention_bias": f32(sd[_REL_BIAS]),
           "final_norm/weight": f32(sd["encoder.final_layer_norm.weight"])}
    for flax_key, suffix in _LAYER_MAP.items():
        first = sd[f"encoder.block.0.{suffix}"]
        shape = first.shape[::-1] if flax_key.endswith("kernel") else first.shape  # Linear [out, in] -> [in, out]
        stacked = np.empty((cfg.num_layers, *shape), np.float32)  # [num_layers, ...], filled in place (XXL: GBs)
        for i in range(cfg.num_layers):
            w = sd[f"encoder.block.{i}.{suffix}"]
            stacked[i] = w.T if flax_key.endswith("kernel") else w
        out[f"blocks/{flax_key}"] = stacked
    return out


def read_mask_emb(path: str | os.PathLike, d_model: int) -> np.ndarray:
    """Reads the aligned mask-token vector (.pth or .safetensors; a tensor, [1, D] or a dict of one tensor)."""
    tensors = common.read_weights(path)
    if len(tensors) != 1:
        raise ValueError(f"{path}: expected exactly one tensor (the {d_model}-d mask embedding), found "
                         f"{len(tensors)}: {sorted(tensors)[:10]}")
    (name, vec), = tensors.items()
    vec = np.asarray(vec, dtype=np.float32)
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.shape != (d_model,):
        where = f" (tensor {name!r})" if name else ""
        raise ValueError(f"{path}{where}: mask embedding has shape {tuple(vec.shape)}, expected ({d_model},) "
                         f"or (1, {d_model}) to match the T5 d_model")
    return vec


def apply_mask_emb(params: core_params.FlatParams, vec: np.ndarray, mask_token_id: int, *, source: str) -> None:
    """Overwrites row `mask_token_id` of the shared input embedding with `vec` (in place)."""
    table = params["shared/embedding"]
    if not 0 <= mask_token_id < table.shape[0]:
        raise ValueError(f"{source}: mask_token_id {mask_token_id} outside the embedding's {table.shape[0]} rows")
    table = np.array(table, dtype=np.float32, copy=True)
    table[mask_token_id] = vec
    params["shared/embedding"] = table


def _weight_files(src: pathlib.Path) -> list[pathlib.Path]:
    """The weight files of a transformers folder: model.safetensors, the shards its index names, or a .bin."""
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [f for f in files if not (src / f).is_file()]
        if not files or missing:
            raise FileNotFoundError(f"{index}: names shards {missing or '(none)'} that are not in {src}")
        return [src / f for f in files]
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    for name in ("pytorch_model.bin", "model.pth"):
        if (src / name).is_file():
            return [src / name]
    raise FileNotFoundError(f"{src}: no model.safetensors, sharded *.safetensors or pytorch_model.bin found")


def _hf_folder(src: pathlib.Path) -> tuple[dict, list[pathlib.Path]]:
    """(transformers config dict, weight files) of a T5EncoderModel folder."""
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        hint = (f"; for an SD3 pipeline folder pass {src / 'text_encoder_3'}"
                if (src / "text_encoder_3").is_dir() else "")
        raise FileNotFoundError(f"{cfg_path}: missing; expected a transformers T5EncoderModel folder{hint}")
    return json.loads(cfg_path.read_text()), _weight_files(src)


def _convert_hf(src: pathlib.Path, mask_emb, mask_token_id: int) -> tuple[t5_model.T5Config, core_params.FlatParams]:
    hf, files = _hf_folder(src)
    cfg = config_from_hf(hf, source=str(src / "config.json"))
    sd: dict[str, np.ndarray] = {}
    for f in files:
        sd.update(common.read_weights(f))
    params = torch_to_flax(sd, cfg, source=str(files[0] if len(files) == 1 else src))
    del sd
    if mask_emb is not None:
        apply_mask_emb(params, read_mask_emb(mask_emb, cfg.d_model), mask_token_id, source=str(mask_emb))
    expected = core_params.abstract_params(lambda: t5_model.T5Encoder(cfg, rngs=_rngs()))
    core_params.validate(params, expected, source=f"{src} (after conversion)")
    return cfg, params


def _rngs():
    return nnx.Rngs(0)


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, mask_emb: str | os.PathLike | None = None,
            mask_token_id: int = DEFAULT_MASK_TOKEN_ID) -> pathlib.Path:
    """Converts a transformers T5EncoderModel folder (+ optional mask-token vector) to an orbax checkpoint."""
    src = pathlib.Path(src)
    cfg, params = _convert_hf(src, mask_emb, mask_token_id)
    return converted.save_converted(
        out_dir, kind=KIND, config=cfg.to_dict(), params=params,
        extra={"source": str(src.absolute()), "mask_emb": None if mask_emb is None else str(mask_emb),
               "mask_token_id": mask_token_id if mask_emb is not None else None})


def load(folder: str | os.PathLike, *, dtype: Any = None, param_dtype: Any = None,
         mask_emb: str | os.PathLike | None = None,
         mask_token_id: int = DEFAULT_MASK_TOKEN_ID) -> t5_model.T5Encoder:
    """T5Encoder from a converted checkpoint (config.json "kind": "t5") or a transformers folder."""
    folder = pathlib.Path(folder)
    cfg_path = folder / "config.json"
    meta = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if "kind" in meta:
        meta, params = converted.load_converted(folder, kind=KIND)
        cfg = t5_model.T5Config.from_dict(meta["config"], source=str(cfg_path))
        if mask_emb is not None:
            apply_mask_emb(params, read_mask_emb(mask_emb, cfg.d_model), mask_token_id, source=str(mask_emb))
    else:
        cfg, params = _convert_hf(folder, mask_emb, mask_token_id)
    cfg = dataclasses.replace(cfg, dtype=jnp.dtype(dtype or jnp.float32),
                              param_dtype=jnp.dtype(param_dtype or jnp.float32))
    return core_params.module_from_flat(lambda: t5_model.T5Encoder(cfg, rngs=_rngs()), params, source=str(folder))
