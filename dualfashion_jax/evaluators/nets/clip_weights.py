"""open_clip CLIP state dict (e.g. ViT-H-14 laion2b_s32b_b79k) -> our Flax `CLIP` params, and loading either form.

Key map (torch -> flax): `visual.conv1.weight` [O,I,kh,kw] -> `visual/conv1/kernel` [kh,kw,I,O]; Linear `.weight`
[out,in] -> `/kernel` [in,out]; `attn.in_proj_weight/bias` -> `attn/in_proj/{kernel,bias}`; LayerNorm `.weight/.bias`
-> `/norm/{scale,bias}`; `visual.proj`, `text_projection`, embeddings and `logit_scale` copy as they are; the
text tower's top-level names (`token_embedding`, `positional_embedding`, `transformer.*`, `ln_final`) go under `text/`.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
from typing import Any, Mapping

import numpy as np
from flax import nnx

from dualfashion_jax.conversion.common import read_weights
from dualfashion_jax.core.converted import load_converted, save_converted
from dualfashion_jax.core.params import ConversionError, abstract_params, module_from_flat, validate
from dualfashion_jax.evaluators.nets.clip_text import CLIP, CLIPConfig, CLIPTextConfig
from dualfashion_jax.evaluators.nets.clip_tokenizer import find_bpe_file
from dualfashion_jax.evaluators.nets.clip_vit import CLIPVisionConfig

KIND = "open_clip"
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "ln_1.weight": "ln_1/norm/scale", "ln_1.bias": "ln_1/norm/bias",
    "ln_2.weight": "ln_2/norm/scale", "ln_2.bias": "ln_2/norm/bias",
    "attn.in_proj_weight": "attn/in_proj/kernel", "attn.in_proj_bias": "attn/in_proj/bias",
    "attn.out_proj.weight": "attn/out_proj/kernel", "attn.out_proj.bias": "attn/out_proj/bias",
    "mlp.c_fc.weight": "mlp/c_fc/kernel", "mlp.c_fc.bias": "mlp/c_fc/bias",
    "mlp.c_proj.weight": "mlp/c_proj/kernel", "mlp.c_proj.bias": "mlp/c_proj/bias",
}
_TOP_MAP = {
    "visual.class_embedding": "visual/class_embedding", "visual.positional_embedding": "visual/positional_embedding",
    "visual.ln_pre.weight": "visual/ln_pre/norm/scale", "visual.ln_pre.bias": "visual/ln_pre/norm/bias",
    "visual.ln_post.weight": "visual/ln_post/norm/scale", "visual.ln_post.bias": "visual/ln_post/norm/bias",
    "visual.proj": "visual/proj", "token_embedding.weight": "text/token_embedding/embedding",
    "positional_embedding": "text/positional_embedding", "ln_final.weight": "text/ln_final/norm/scale",
    "ln_final.bias": "text/ln_final/norm/bias", "text_projection": "text/text_projection", "logit_scale": "logit_scale",
}
_IGNORED = ("attn_mask",)  # non-persistent buffers some exports still carry


def _strip_prefix(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def convert_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat torch state dict -> flat Flax params (float32). Unknown keys raise, naming them."""
    out, unknown = {}, []
    for key, value in _strip_prefix(sd).items():
        v = np.asarray(value, dtype=np.float32)
        if key.endswith(_IGNORED):
            continue
        m = _BLOCK.match(key)
        if m:
            tower = "visual" if m.group(1) else "text"
            sub = _BLOCK_MAP.get(m.group(3))
            if sub is None:
                unknown.append(key)
                continue
            if sub.endswith("/kernel"):
                v = v.T
            out[f"{tower}/transformer/resblocks/{int(m.group(2))}/{sub}"] = v
        elif key == "visual.conv1.weight":
            out["visual/conv1/kernel"] = v.transpose(2, 3, 1, 0)
        elif key in _TOP_MAP:
            out[_TOP_MAP[key]] = v.reshape(()) if key == "logit_scale" else v
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"open_clip state dict has keys this converter does not know ({len(unknown)}): "
                              f"{sorted(unknown)[:20]} (only the standard ViT CLIP layout is supported)")
    return out


def infer_config(sd: Mapping[str, np.ndarray], vision_heads: int | None = None, text_heads: int | None = None):
    """CLIPConfig from tensor shapes. Head counts are not visible in shapes: by default they follow open_clip's
    head width (vision 80 for width 1280 = ViT-H, else 64; text 64); pass them for other models."""
    sd = _strip_prefix(sd)
    need = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
            "positional_embedding", "text_projection")
    missing = [k for k in need if k not in sd]
    if missing:
        raise ConversionError(f"open_clip state dict lacks {missing}; is this an open_clip ViT CLIP checkpoint?")
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = int(round(np.sqrt(sd["visual.positional_embedding"].shape[0] - 1)))
    vlayers = 1 + max(int(m.group(2)) for k in sd if (m := _BLOCK.match(k)) and m.group(1))
    tlayers = 1 + max(int(m.group(2)) for k in sd if (m := _BLOCK.match(k)) and not m.group(1))
    vmlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    vocab, twidth = sd["token_embedding.weight"].shape
    tmlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    vheads = vision_heads or width // (80 if width == 1280 else 64)
    vision = CLIPVisionConfig(grid * patch, patch, width, vlayers, vheads, vmlp,
                              sd["visual.proj"].shape[1])
    text = CLIPTextConfig(sd["positional_embedding"].shape[0], vocab, twidth, tlayers, text_heads or max(1, twidth // 64), tmlp,
                          sd["text_projection"].shape[1])
    return CLIPConfig(vision, text)


def _factory(config):
    return lambda: CLIP(config, rngs=nnx.Rngs(0))


def convert_checkpoint(path: str | os.PathLike, config=None) -> tuple[Any, dict[str, np.ndarray]]:
    """Reads an open_clip .bin/.pth/.safetensors file -> (CLIPConfig, validated flat params)."""
    sd = read_weights(path)
    config = config or infer_config(sd)
    flat = convert_state_dict(sd)
    validate(flat, abstract_params(_factory(config)), source=str(path))
    return config, flat


def save_clip(out_dir: str | os.PathLike, config, flat: Mapping[str, np.ndarray], *, source: str,
              bpe_file: str | os.PathLike | None = None) -> pathlib.Path:
    """Saves converted params (+ the BPE merges file when given, so the checkpoint is self-contained)."""
    out = save_converted(out_dir, kind=KIND, config=config.to_json(), params=flat, extra={"source": source})
    if bpe_file is not None:
        shutil.copy(bpe_file, out / pathlib.Path(bpe_file).name)
    return out


def load_clip(path: str | os.PathLike, dtype=None, config=None):
    """A converted dir (config.json kind 'open_clip') or a raw open_clip file -> (CLIP model, config, source).

    `config` overrides the shape-inferred one for raw files (needed when head counts differ from open_clip's)."""
    p = pathlib.Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        meta, flat = load_converted(p, kind=KIND)
        config = CLIPConfig.from_json(meta["config"])
        source = meta.get("source", str(p))
    else:
        config, flat = convert_checkpoint(p, config)
        source = str(p)
    if dtype is not None:
        config = config.with_dtype(dtype)

    # Fill an abstract model: eager random init of ViT-H-14 would cost minutes of CPU for nothing.
    return module_from_flat(_factory(config), flat, source=str(p)), config, source


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, *, vision_heads: int | None = None,
            text_heads: int | None = None) -> pathlib.Path:
    """open_clip weights file -> converted dir (params + config.json + the CLIP BPE file when it can be found).

    Signature matches the other `conversion/*.convert` functions (for `dualfashion-jax convert`)."""
    sd = read_weights(src)
    config, flat = convert_checkpoint(src, infer_config(sd, vision_heads, text_heads))
    try:
        bpe = find_bpe_file()
    except FileNotFoundError:
        bpe = None
    return save_clip(out_dir, config, flat, source=str(src), bpe_file=bpe)
