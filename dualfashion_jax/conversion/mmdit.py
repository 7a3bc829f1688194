"""DualFashion / diffusers transformer checkpoint -> `DualMMDiT` params (spec §1.1, §1.2, §7.2 items 13-14).

Accepts one weight file, a folder of (sharded) safetensors, a diffusers `transformer/` folder (config.json +
diffusion_pytorch_model*.safetensors) or a pipeline export containing one. Linear weights are transposed,
conv kernels go to HWIO, per-layer tensors are stacked on the scan axis, the stage-2 tensors are mapped when
present. Everything is checked in torch terms first (one error naming every missing/unexpected/mis-shaped
torch key), then against the model's `eval_shape`. Known-dropped keys and the stage-2 status are reported.
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

from dualfashion_jax.conversion import common
from dualfashion_jax.core import converted, params as core_params
from dualfashion_jax.core.params import ConversionError
from dualfashion_jax.models import mmdit
from dualfashion_jax.models.mmdit_config import MMDiTConfig

POS_EMBED_KEY = "patch_embed/pos_embed"  # a PosEmbedBuffer, not an nnx.Param
# Stock SD3 / SD3JointModelFlexible keys that DualFashion drops on load (strict=False): reported, not errors.
DROPPED_PREFIXES = ("time_text_embed.text_embedder.", "norm_out.", "proj_out.")
STAGE2_ROLE_KEYS = ("stage2_target_role_embedding", "stage2_context_role_embedding")
STAGE2_NET_PREFIXES = {"mlp": ("stage2_matching_mlp.",),
                       "gor_projector": ("stage2_context_projector.", "stage2_context_gate")}

# (torch name, flax name, kind). kind: linear (.weight/.bias pair), or a single-tensor layout transform.
_TOP: list[tuple[str, str, str]] = [
    ("pos_embed.proj.weight", "patch_embed/kernel", "conv"),
    ("pos_embed.proj.bias", "patch_embed/bias", "same"),
    ("pos_embed.pos_embed", POS_EMBED_KEY, "pos"),
    ("time_text_embed.timestep_embedder.linear_1", "timestep_embedder/linear_1", "linear"),
    ("time_text_embed.timestep_embedder.linear_2", "timestep_embedder/linear_2", "linear"),
    ("context_embedder", "context_embedder", "linear"),
    ("null_image_embd", "null_image_embd", "same"),
    ("image_norm_out.linear", "image_norm_out/linear", "linear"),
    ("image_proj_out", "image_proj_out", "linear"),
    ("text_proj_out", "text_proj_out", "linear"),
    ("stage2_target_role_embedding", "stage2/target_role", "role"),
    ("stage2_context_role_embedding", "stage2/context_role", "role"),
    ("stage2_matching_mlp.hidden_layer", "stage2/matching_mlp/hidden_layer", "linear"),
    ("stage2_matching_mlp.output_layer", "stage2/matching_mlp/output_layer", "linear"),
    ("stage2_context_projector.weight", "stage2/context_projector", "conv"),
    ("stage2_context_projector.bias", "stage2/context_projector_bias", "same"),
    ("stage2_context_gate", "stage2/context_gate", "same"),
]
_BLOCK: list[tuple[str, str, str]] = [
    ("norm1.linear", "norm1/linear", "linear"),
    ("norm1_context.linear", "norm1_context/linear", "linear"),
    *[(f"attn.{n}", f"attn/{n}", "linear") for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")],
    ("attn.to_out.0", "attn/to_out", "linear"),
    ("attn.to_add_out", "attn/to_add_out", "linear"),
    ("ff.net.0.proj", "ff/proj_in", "linear"),
    ("ff.net.2", "ff/proj_out", "linear"),
    ("ff_context.net.0.proj", "ff_context/proj_in", "linear"),
    ("ff_context.net.2", "ff_context/proj_out", "linear"),
]

# torch tensor -> flax tensor, and the flax shape -> torch shape inverse (for error messages).
_TO_FLAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda x: x,
    "kernel": lambda x: x.T,                                  # Linear [out, in] -> [in, out]
    "conv": lambda x: x.transpose(2, 3, 1, 0),                # OIHW -> HWIO
    "role": lambda x: x.transpose(0, 2, 3, 1),                # (1, C, 1, 1) -> (1, 1, 1, C)
    "pos": lambda x: x.reshape(x.shape[-2], x.shape[-1]),     # (1, M*M, D) -> (M*M, D)
}
_TORCH_SHAPE: dict[str, Callable[[tuple], tuple]] = {
    "same": lambda s: s, "kernel": lambda s: s[::-1], "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "role": lambda s: (s[0], s[3], s[1], s[2]), "pos": lambda s: (1,) + tuple(s),
}


def _expand(entries):
    """Linear entries -> (.weight -> /kernel, .bias -> /bias); others unchanged."""
    for t, f, kind in entries:
        if kind == "linear":
            yield f"{t}.weight", f"{f}/kernel", "kernel"
            yield f"{t}.bias", f"{f}/bias", "same"
        else:
            yield t, f, kind


def expected_shapes(cfg) -> dict[str, Any]:
    """Flat `{flax_key: ShapeDtypeStruct}` of the model's params plus the pos-embed buffer."""
    out = core_params.abstract_params(lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0)), mmdit.WEIGHTS)
    buf = out[POS_EMBED_KEY]
    out[POS_EMBED_KEY] = jax.ShapeDtypeStruct(buf.shape, buf.dtype)
    return out


def key_map(cfg, expected: Mapping[str, Any]) -> dict[str, tuple[str, int | None, str]]:
    """`{torch_key: (flax_key, layer index or None, kind)}` for every tensor the model expects."""
    out = {}
    for t, f, kind in _expand(_TOP):
        if f in expected:
            out[t] = (f, None, kind)
    for t, f, kind in _expand(_BLOCK):
        for i in range(cfg.num_layers):
            out[f"transformer_blocks.{i}.{t}"] = (f"blocks/{f}", i, kind)
    return out


# ----------------------------------------------------------------------------------------------------------
# Source reading and config.
# ----------------------------------------------------------------------------------------------------------
def _resolve_source(src: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(weights path, config.json path or None) for a file, a transformer folder or a pipeline folder."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: transformer checkpoint file or folder does not exist")
    if src.is_file():
        cfg = src.parent / "config.json"
        return src, cfg if cfg.is_file() else None
    if not any(src.glob("*.safetensors")) and (src / "transformer").is_dir():
        src = src / "transformer"  # a full pipeline export
    cfg = src / "config.json"
    return src, cfg if cfg.is_file() else None


def config_from_diffusers(dconf: Mapping[str, Any], weights: Mapping[str, np.ndarray], *, source: str,
                          stage2_variant: str | None = None, notes: list[str]) -> MMDiTConfig:
    """`MMDiTConfig` from a diffusers transformer config.json + the checkpoint's tensor shapes."""
    def need(name):
        if name not in dconf:
            raise ConversionError(f"{source}: config.json has no {name!r} (needed to build the model)")
        return dconf[name]

    if dconf.get("qk_norm") or dconf.get("dual_attention_layers"):
        raise ConversionError(f"{source}: qk_norm={dconf.get('qk_norm')!r}, dual_attention_layers="
                              f"{dconf.get('dual_attention_layers')!r}: SD3.5-style blocks are not supported "
                              "(DualFashion uses SD3.0-medium blocks)")
    heads, head_dim = int(need("num_attention_heads")), int(need("attention_head_dim"))
    cap = dconf.get("caption_projection_dim", heads * head_dim)
    if cap != heads * head_dim:
        raise ConversionError(f"{source}: caption_projection_dim {cap} != num_attention_heads*attention_head_dim "
                              f"{heads * head_dim}; the joint blocks need them equal")
    if "text_proj_out.weight" not in weights:
        raise ConversionError(f"{source}: no 'text_proj_out.weight' tensor; not a DualFashion joint-model "
                              "checkpoint (a stock SD3 transformer has no text head)")
    vocab = int(weights["text_proj_out.weight"].shape[0])
    if "vocab_size" in dconf and int(dconf["vocab_size"]) != vocab:
        raise ConversionError(f"{source}: config vocab_size {dconf['vocab_size']} but text_proj_out.weight has {vocab} rows")
    null = weights.get("null_image_embd")
    in_ch = int(need("in_channels"))
    kw: dict[str, Any] = dict(
        num_layers=int(need("num_layers")), num_heads=heads, head_dim=head_dim, in_channels=in_ch,
        out_channels=int(dconf.get("out_channels") or in_ch), patch_size=int(need("patch_size")),
        sample_size=int(need("sample_size")), pos_embed_max_size=int(need("pos_embed_max_size")),
        joint_attention_dim=int(need("joint_attention_dim")), vocab_size=vocab,
        num_null_tokens=int(null.shape[1]) if null is not None and null.ndim == 3 else 8)
    kw.update(_stage2_config(dconf, weights, in_ch, source=source, variant=stage2_variant, notes=notes))
    return MMDiTConfig(**kw)


def _stage2_config(dconf, weights, in_ch: int, *, source: str, variant: str | None, notes: list[str]) -> dict:
    has = {v: any(k.startswith(p) for k in weights for p in prefixes) for v, prefixes in STAGE2_NET_PREFIXES.items()}
    roles = [k for k in STAGE2_ROLE_KEYS if k in weights]
    if variant is None:
        if has["mlp"] and has["gor_projector"]:
            raise ConversionError(f"{source}: holds both the stage-2 MatchingMLP and GOR's projector/gate; "
                                  "choose one with stage2_variant='mlp' or 'gor_projector'")
        variant = "mlp" if has["mlp"] else "gor_projector" if has["gor_projector"] else None
    if variant is None:
        dropped = f" (its {roles} are ignored)" if roles else ""
        notes.append(
            f"{source}: no stage-2 offset network (stage2_matching_mlp.* / stage2_context_projector.*) in the "
            f"checkpoint{dropped}; converted with stage2=False. Expected for base/stage-1 weights and stage-3 "
            "exports (spec §7.2 item 14: stage 3 drops r_t, r_c and the MLP, so the original PFITB ran such a "
            "checkpoint with random role embeddings and a random MLP). Stage-2 training or PFITB/GOR need them: "
            "train stage 2 from this checkpoint, or convert a stage-2 checkpoint.")
        return {"stage2": False}
    if variant == "gor_projector" and not has["gor_projector"]:
        notes.append(f"{source}: GOR projector/gate absent; filled as the original GOR script does (zero 1x1 conv, "
                     "gate 0), so the GOR offset reduces to r_t and previous generations have no influence "
                     "(spec §7.2 item 13).")
    if variant not in STAGE2_NET_PREFIXES:
        raise ConversionError(f"stage2_variant must be 'mlp' or 'gor_projector', got {variant!r}")
    out: dict[str, Any] = {"stage2": True, "stage2_variant": variant}
    if dconf.get("stage2_latent_size") is not None:
        out["latent_size"] = _latent_size(dconf["stage2_latent_size"])
    if dconf.get("stage2_matching_hidden") is not None:
        out["matching_hidden"] = int(dconf["stage2_matching_hidden"])
    w = weights.get("stage2_matching_mlp.hidden_layer.weight")
    if variant == "mlp" and w is None:
        raise ConversionError(f"{source}: stage2_variant='mlp' but 'stage2_matching_mlp.hidden_layer.weight' is missing")
    if w is not None:  # the MLP's shape fixes the latent size and width (also recorded for the GOR variant)
        hidden, n = int(w.shape[0]), int(w.shape[1])
        if "latent_size" not in out:
            side = math.isqrt(n // in_ch)
            if side * side * in_ch != n:
                raise ConversionError(f"{source}: stage2_matching_mlp input size {n} is not {in_ch}*H*W with H == W; "
                                      "add stage2_latent_size [H, W] to config.json")
            out["latent_size"] = side
        out["matching_hidden"] = hidden
    if "stage2_dropout" in dconf:
        out["matching_dropout"] = float(dconf["stage2_dropout"])
    notes.append(f"{source}: stage-2 modules converted (variant {variant!r}).")
    return out


def _latent_size(size) -> int | tuple[int, int]:
    """config.json's stage2_latent_size (int or [H, W]) -> int when square, else (H, W)."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return h if h == w else (h, w)


# ----------------------------------------------------------------------------------------------------------
# The conversion itself.
# ----------------------------------------------------------------------------------------------------------
def convert_weights(weights: Mapping[str, np.ndarray], cfg, *, source: str,
                    notes: list[str] | None = None) -> core_params.FlatParams:
    """Flat torch state dict -> flat flax params (+ pos-embed buffer) for `cfg`; one error names every bad key."""
    notes = [] if notes is None else notes
    expected = expected_shapes(cfg)
    kmap = key_map(cfg, expected)
    weights = dict(weights)
    if cfg.stage2 and cfg.stage2_variant == "gor_projector":
        c = cfg.in_channels
        weights.setdefault("stage2_context_projector.weight", np.zeros((c, c, 1, 1), np.float32))
        weights.setdefault("stage2_context_projector.bias", np.zeros((c,), np.float32))
        weights.setdefault("stage2_context_gate", np.zeros((), np.float32))
    dropped = sorted(k for k in weights if k not in kmap and k.startswith(DROPPED_PREFIXES))
    known_stage2 = STAGE2_ROLE_KEYS + tuple(p for ps in STAGE2_NET_PREFIXES.values() for p in ps)
    ignored_stage2 = sorted(k for k in weights if k not in kmap and k.startswith(known_stage2))
    if dropped:
        notes.append(f"{source}: ignored {len(dropped)} keys DualFashion drops on load (stock SD3 pooled-text "
                     f"embedder / norm_out / proj_out): {dropped[:4]}{' ...' if len(dropped) > 4 else ''}")
    if ignored_stage2:
        notes.append(f"{source}: ignored stage-2 keys not used by this configuration: {ignored_stage2}")

    missing = sorted((k for k in kmap if k not in weights), key=_natural)
    unexpected = sorted(k for k in weights if k not in kmap and k not in dropped and k not in ignored_stage2)
    bad_shape = []
    for k, (f, layer, kind) in kmap.items():
        if k in weights:
            want = tuple(expected[f].shape[1:] if layer is not None else expected[f].shape)
            if tuple(_TO_FLAX[kind](np.asarray(weights[k])).shape) != want:
                bad_shape.append(f"{k}: checkpoint {tuple(weights[k].shape)} vs model {_TORCH_SHAPE[kind](want)}")
    if missing or unexpected or bad_shape:
        parts = [f"{source} does not match the DualMMDiT config (torch key names):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(bad_shape, key=_natural))):
            if items:
                shown = items[:50] + ([f"... and {len(items) - 50} more"] if len(items) > 50 else [])
                parts.append(f"  {title} ({len(items)}):\n    " + "\n    ".join(shown))
        raise ConversionError("\n".join(parts))

    flat: core_params.FlatParams = {}
    stacks: dict[str, list] = {}
    for k, (f, layer, kind) in kmap.items():
        x = np.asarray(_TO_FLAX[kind](np.asarray(weights[k])), dtype=np.float32)
        if layer is None:
            flat[f] = x
        else:
            stacks.setdefault(f, [None] * cfg.num_layers)[layer] = x
    for f, per_layer in stacks.items():
        flat[f] = np.stack(per_layer)  # [num_layers, ...] scan axis
    core_params.validate(flat, expected, source=source)
    return flat


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in key.replace(".", " . ").split()]


def load_source(src, *, config: str | None = None, stage2_variant: str | None = None,
                notes: list[str] | None = None):
    """(MMDiTConfig, flat flax params) from a torch/diffusers transformer checkpoint."""
    notes = [] if notes is None else notes
    wpath, cpath = _resolve_source(pathlib.Path(src))
    if config is not None:
        cpath = pathlib.Path(config)
        if not cpath.is_file():
            raise FileNotFoundError(f"{cpath}: config file does not exist")
    if cpath is None:
        raise FileNotFoundError(f"{src}: no config.json next to the weights (diffusers transformer config with "
                                "num_layers, num_attention_heads, attention_head_dim, ...); pass one with --config")
    try:
        dconf = json.loads(cpath.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{cpath}: not valid JSON ({e})") from e
    weights = common.read_weights(wpath)
    cfg = config_from_diffusers(dconf, weights, source=str(cpath), stage2_variant=stage2_variant, notes=notes)
    return cfg, convert_weights(weights, cfg, source=str(wpath), notes=notes)


def convert(src, out, *, config: str | None = None, stage2_variant: str | None = None) -> pathlib.Path:
    """Converts a transformer checkpoint to `<out>/{config.json, params/}` (kind "mmdit"); prints notices."""
    notes: list[str] = []
    cfg, flat = load_source(src, config=config, stage2_variant=stage2_variant, notes=notes)
    for n in notes:
        print(f"[convert transformer] {n}", file=sys.stderr)
    return converted.save_converted(out, kind="mmdit", config=cfg.to_dict(), params=flat,
                                    extra={"source": str(src), "notes": notes})


def model_from_flat(cfg, flat: Mapping[str, np.ndarray], *, seed: int = 0) -> mmdit.DualMMDiT:
    """A `DualMMDiT` holding `flat` (params + pos-embed buffer) without a random init of the weights."""
    return core_params.module_from_flat(lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(seed)), flat,
                                        source="converted params", types=mmdit.WEIGHTS)
