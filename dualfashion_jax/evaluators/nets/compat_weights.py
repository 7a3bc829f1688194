"""DiFashion `FashionEvaluator` PyTorch state dict (e.g. ifashion_evaluator.pth) -> our Flax params, and loading.

torch `emb_layer.{4k}` Linear / `.{4k+1}` LayerNorm -> `emb_layer/{k}/{linear,norm}`; the same for `eval_layer`
except its last Linear, which becomes `head`; Linear weights are transposed into kernels.
"""
from __future__ import annotations

import os
import pathlib
import re
from typing import Mapping

import numpy as np
from flax import nnx

from dualfashion_jax.conversion.common import read_weights
from dualfashion_jax.core.converted import load_converted, save_converted
from dualfashion_jax.core.params import ConversionError, flat_params, load_flat_into
from dualfashion_jax.evaluators.nets.compat_net import CompatConfig, FashionEvaluator

KIND = "compat_net"
_SEQ = re.compile(r"^(emb_layer|eval_layer)\.(\d+)\.(weight|bias)$")


def infer_config(sd: Mapping[str, np.ndarray]):
    """CompatConfig from the state dict's shapes."""
    if "feat_layer.weight" not in sd:
        raise ConversionError("compat state dict lacks 'feat_layer.weight'; is this a DiFashion FashionEvaluator?")
    item, feat = sd["feat_layer.weight"].shape
    widths = {name: [] for name in ("emb_layer", "eval_layer")}
    for k, v in sd.items():
        m = _SEQ.match(k)
        if m and m.group(3) == "weight" and v.ndim == 2:
            widths[m.group(1)].append((int(m.group(2)), v.shape[0]))
    emb = tuple(w for _, w in sorted(widths["emb_layer"]))
    ev = tuple(w for _, w in sorted(widths["eval_layer"]))
    if not emb or len(ev) < 2 or ev[-1] != 1:
        raise ConversionError(f"compat state dict: unexpected emb_layer/eval_layer layout (emb {emb}, eval {ev})")
    return CompatConfig(int(feat), int(item), emb, ev[:-1])


def convert_state_dict(sd: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    out, unknown = {}, []
    n_eval = len(config.eval_widths)
    for key, value in sd.items():
        v = np.asarray(value, np.float32)
        if key in ("feat_layer.weight", "feat_layer.bias"):
            out["feat_layer/" + ("kernel" if key.endswith("weight") else "bias")] = v.T if v.ndim == 2 else v
            continue
        m = _SEQ.match(key)
        if not m:
            unknown.append(key)
            continue
        seq, idx, kind = m.group(1), int(m.group(2)), m.group(3)
        group, pos = divmod(idx, 4)
        if seq == "eval_layer" and group == n_eval and pos == 0:
            prefix = "head"
        elif pos in (0, 1):
            prefix = f"{seq}/{group}/{'linear' if pos == 0 else 'norm'}"
        else:
            unknown.append(key)
            continue
        if prefix.endswith("norm"):
            out[f"{prefix}/{'scale' if kind == 'weight' else 'bias'}"] = v
        else:
            out[f"{prefix}/{'kernel' if kind == 'weight' else 'bias'}"] = v.T if kind == "weight" else v
    if unknown:
        raise ConversionError(f"compat state dict has unexpected keys: {sorted(unknown)[:20]}")
    return out


def _factory(config):
    return lambda: FashionEvaluator(config, rngs=nnx.Rngs(0))


def load_compat(path: str | os.PathLike):
    """Converted dir (kind 'compat_net', e.g. from `train_compat_evaluator`) or a DiFashion .pth -> (model, config,
    source)."""
    p = pathlib.Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        meta, flat = load_converted(p, kind=KIND)
        config, source = CompatConfig.from_json(meta["config"]), meta.get("source", str(p))
    else:
        sd = read_weights(p)
        config = infer_config(sd)
        flat, source = convert_state_dict(sd, config), str(p)
    model = _factory(config)()
    load_flat_into(model, flat, source=str(p))
    model.eval()
    return model, config, source


def save_compat(out_dir: str | os.PathLike, model, *, source: str, extra: dict | None = None) -> pathlib.Path:
    return save_converted(out_dir, kind=KIND, config=model.config.to_json(), params=flat_params(model),
                          extra={"source": source, **(extra or {})})


def convert(src: str | os.PathLike, out_dir: str | os.PathLike) -> pathlib.Path:
    """DiFashion evaluator .pth -> converted dir (same signature as the other `conversion/*.convert`)."""
    model, _, source = load_compat(src)
    return save_compat(out_dir, model, source=source)
