"""diffusers `AutoencoderKL` folder -> Flax `AutoencoderKL` key map and converter.

The Flax param tree mirrors diffusers' module names, so the map is mechanical: `.` -> `/`, `to_out.0` ->
`to_out`, norm `weight` -> `scale`, conv `[O, I, kh, kw]` -> `[kh, kw, I, O]`, linear `[O, I]` -> `[I, O]`.
Checks run in torch-key space first, so errors name the checkpoint's own keys; quant convs present in a
checkpoint whose config says there are none are rejected with a dedicated message.
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
from dualfashion_jax.models import pixel_ae, vae as vae_model

KIND = "vae"
_NORMS = {"norm1", "norm2", "group_norm", "conv_norm_out"}
_LINEARS = {"to_q", "to_k", "to_v", "to_out"}
# pre-0.14 diffusers attention names (still found in some VAE checkpoints)
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class _Shape:
    """Stands in for a ShapeDtypeStruct in `core_params.validate` (only `.shape` is read)."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def config_from_diffusers(d: Mapping[str, Any], *, source: str) -> vae_model.VAEConfig:
    """VAEConfig from a diffusers AutoencoderKL `config.json` dict (defaults as diffusers' constructor)."""
    if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"{source}: _class_name {d.get('_class_name')!r} is not 'AutoencoderKL'")
    ch = tuple(d.get("block_out_channels", (64,)))
    downs = tuple(d.get("down_block_types", ("DownEncoderBlock2D",) * len(ch)))
    ups = tuple(d.get("up_block_types", ("UpDecoderBlock2D",) * len(ch)))
    if set(downs) != {"DownEncoderBlock2D"} or set(ups) != {"UpDecoderBlock2D"} or len(downs) != len(ch) \
            or len(ups) != len(ch):
        raise ValueError(f"{source}: only {len(ch)} x DownEncoderBlock2D / UpDecoderBlock2D are supported, got "
                         f"down_block_types={list(downs)}, up_block_types={list(ups)}")
    if d.get("act_fn", "silu") != "silu":
        raise ValueError(f"{source}: act_fn {d.get('act_fn')!r} not supported (expected 'silu')")
    for k in ("latents_mean", "latents_std"):
        if d.get(k) is not None:
            raise ValueError(f"{source}: per-channel {k} is not supported (SD3 uses shift_factor/scaling_factor)")
    return vae_model.VAEConfig(
        in_channels=d.get("in_channels", 3), out_channels=d.get("out_channels", 3), block_out_channels=ch,
        layers_per_block=d.get("layers_per_block", 1), latent_channels=d.get("latent_channels", 4),
        norm_num_groups=d.get("norm_num_groups", 32), sample_size=d.get("sample_size", 32),
        scaling_factor=float(d.get("scaling_factor", 0.18215)),
        shift_factor=float(d.get("shift_factor") or 0.0),
        use_quant_conv=bool(d.get("use_quant_conv", True)),
        use_post_quant_conv=bool(d.get("use_post_quant_conv", True)),
        mid_block_add_attention=bool(d.get("mid_block_add_attention", True)))


def _kind(flax_path: str) -> str:
    module = flax_path.split("/")[-2] if "/" in flax_path else ""
    return "norm" if module in _NORMS else "linear" if module in _LINEARS else "conv"


def flax_to_torch_key(path: str) -> str:
    """`encoder/mid_block/attentions/0/to_out/kernel` -> `encoder.mid_block.attentions.0.to_out.0.weight`."""
    parts = path.split("/")
    leaf = {"scale": "weight", "kernel": "weight"}.get(parts[-1], parts[-1])
    mods = [p + ".0" if p == "to_out" else p for p in parts[:-1]]
    return ".".join(mods + [leaf])


def _torch_shape(flax_path: str, shape: tuple) -> tuple:
    if flax_path.endswith("kernel"):
        if len(shape) == 4:
            kh, kw, i, o = shape
            return (o, i, kh, kw)
        return tuple(reversed(shape))
    return tuple(shape)


def _rename_legacy(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old attention names -> current ones; 1x1-conv-shaped attention weights [C, C, 1, 1] -> [C, C]."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) >= 2 and parts[-2] in _LEGACY_ATTN and ".attentions." in k:
            k = ".".join(parts[:-2] + [_LEGACY_ATTN[parts[-2]], parts[-1]])
        if ".attentions." in k and k.endswith(".weight") and v.ndim == 4 and v.shape[2:] == (1, 1):
            v = v[:, :, 0, 0]
        out[k] = v
    return out


def torch_to_flax(sd: Mapping[str, np.ndarray], cfg: vae_model.VAEConfig, *, source: str) -> core_params.FlatParams:
    """Maps a diffusers AutoencoderKL state dict to the flat (float32) Flax params of `AutoencoderKL(cfg)`."""
    sd = _rename_legacy(sd)
    expected = core_params.abstract_params(lambda: vae_model.AutoencoderKL(cfg, rngs=_rngs()))
    quant = sorted(k for k in sd if k.split(".")[0] in ("quant_conv", "post_quant_conv")
                   and not getattr(cfg, "use_" + k.split(".")[0]))
    if quant:
        raise core_params.ConversionError(
            f"{source}: holds {quant} but the config says use_quant_conv={cfg.use_quant_conv}, "
            f"use_post_quant_conv={cfg.use_post_quant_conv}; the checkpoint and its config.json disagree "
            "(an SD1/2-style VAE needs use_quant_conv/use_post_quant_conv true in config.json)")
    torch_names = {flax_to_torch_key(p): p for p in expected}
    core_params.validate(sd, {t: _Shape(_torch_shape(p, expected[p].shape)) for t, p in torch_names.items()},
                         source=source)
    out: core_params.FlatParams = {}
    for tkey, path in torch_names.items():
        w = np.asarray(sd[tkey], dtype=np.float32)
        if path.endswith("kernel"):
            w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
        out[path] = np.ascontiguousarray(w)
    core_params.validate(out, expected, source=f"{source} (after conversion)")
    return out


def _rngs():
    return nnx.Rngs(0)


def _diffusers_folder(src: pathlib.Path) -> tuple[dict, pathlib.Path]:
    """(diffusers config dict, weights path) of an AutoencoderKL folder; prefers the fp32 safetensors file."""
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        hint = f"; for an SD3 pipeline folder pass {src / 'vae'}" if (src / "vae").is_dir() else ""
        raise FileNotFoundError(f"{cfg_path}: missing; expected a diffusers AutoencoderKL folder{hint}")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (src / name).is_file():
            return json.loads(cfg_path.read_text()), src / name
    files = sorted(src.glob("*.safetensors"))
    if len(files) == 1:
        return json.loads(cfg_path.read_text()), files[0]
    raise FileNotFoundError(f"{src}: expected diffusion_pytorch_model.safetensors (or exactly one *.safetensors), "
                            f"found {[f.name for f in files]}")


def _convert_diffusers(src: pathlib.Path) -> tuple[vae_model.VAEConfig, core_params.FlatParams]:
    d, weights = _diffusers_folder(src)
    cfg = config_from_diffusers(d, source=str(src / "config.json"))
    return cfg, torch_to_flax(common.read_weights(weights), cfg, source=str(weights))


def convert(src: str | os.PathLike, out_dir: str | os.PathLike) -> pathlib.Path:
    """Converts a diffusers AutoencoderKL folder to an orbax checkpoint (config.json "kind": "vae")."""
    src = pathlib.Path(src)
    cfg, params = _convert_diffusers(src)
    return converted.save_converted(out_dir, kind=KIND, config=cfg.to_dict(), params=params,
                                    extra={"source": str(src.absolute())})


def load(folder: str | os.PathLike, *, dtype: Any = None, param_dtype: Any = None) -> vae_model.AutoencoderKL:
    """AutoencoderKL from a converted checkpoint or a diffusers folder (converted on the fly)."""
    folder = pathlib.Path(folder)
    cfg_path = folder / "config.json"
    meta = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if "kind" in meta:
        meta, params = converted.load_converted(folder, kind=KIND)
        cfg = vae_model.VAEConfig.from_dict(meta["config"], source=str(cfg_path))
    else:
        cfg, params = _convert_diffusers(folder)
    cfg = dataclasses.replace(cfg, dtype=jnp.dtype(dtype or jnp.float32),
                              param_dtype=jnp.dtype(param_dtype or jnp.float32))
    return core_params.module_from_flat(lambda: vae_model.AutoencoderKL(cfg, rngs=_rngs()), params,
                                        source=str(folder))
