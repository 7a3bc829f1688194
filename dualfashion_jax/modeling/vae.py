"""The one VAE loader: a converted AutoencoderKL, a diffusers folder, or the demo's pixel autoencoder.

The demo's stand-in VAE (`models/pixel_ae.py`, config `architecture: "pixel_s2d"`) is saved in the converted
format with kind "vae"; every VAE user (training, encode-latents, generation, the demo) dispatches on that
config field here and nowhere else.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Mapping

import numpy as np
from flax import nnx

from dualfashion_jax.conversion import vae as conv_vae
from dualfashion_jax.models import pixel_ae, vae


def vae_factory(config: Mapping[str, Any], *, source: str,
                dtypes: Mapping[str, str] | None = None) -> tuple[Callable[[], nnx.Module], Any]:
    """(factory, config) of a converted VAE's config dict (+ dtype names): AutoencoderKL or the pixel autoencoder.

    Both modules share the `encode` -> DiagonalGaussian / `decode` / `cfg` (shift, scale, downsample) interface.
    """
    d = {**config, **(dtypes or {})}
    if pixel_ae.is_pixel_config(dict(config)):
        cfg = pixel_ae.PixelAEConfig.from_dict(d, source=source)
        proj = None if cfg.basis == "orthonormal" else np.zeros((cfg.pixel_channels, cfg.latent_channels))
        return (lambda: pixel_ae.PixelAutoencoder(cfg, proj=proj)), cfg
    cfg = vae.VAEConfig.from_dict(d, source=source)
    return (lambda: vae.AutoencoderKL(cfg, rngs=nnx.Rngs(0))), cfg


def load_vae(folder: str | os.PathLike, *, dtype: Any = None, param_dtype: Any = None):
    """A VAE module (dtypes default float32) from a converted checkpoint (AutoencoderKL or the pixel autoencoder,
    whose projection is checked against its config) or a diffusers AutoencoderKL folder (converted on the fly)."""
    cfg_path = pathlib.Path(folder) / "config.json"
    meta = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if "kind" in meta and pixel_ae.is_pixel_config(meta.get("config")):
        return pixel_ae.load(folder, dtype=dtype, param_dtype=param_dtype)
    return conv_vae.load(folder, dtype=dtype, param_dtype=param_dtype)
