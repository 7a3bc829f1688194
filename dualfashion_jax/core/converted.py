"""The converted-checkpoint format: `<dir>/config.json` ({"kind", "config", ...}) + `<dir>/params` (orbax tree of the
flat params, keys split at "/"); written by the converters, the demo's random frozen encoders and the pixel AE.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from dualfashion_jax.core.keys import flatten, unflatten
from dualfashion_jax.core.params import ConversionError, FlatParams


def save_converted(out_dir: str | os.PathLike, *, kind: str, config: Mapping[str, Any],
                   params: Mapping[str, np.ndarray], extra: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Writes `<out_dir>/config.json` ({"kind", "config", ...extra}) and `<out_dir>/params` (orbax)."""
    out_dir = pathlib.Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "params"
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose an empty output folder")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, unflatten({k: np.asarray(v) for k, v in params.items()}))
    meta = {"kind": kind, "config": dict(config), **dict(extra or {})}
    (out_dir / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    return out_dir


def load_converted(ckpt_dir: str | os.PathLike, *, kind: str | None = None) -> tuple[dict, FlatParams]:
    """Reads a converted checkpoint: returns (config.json dict, flat params as numpy)."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing; not a converted dualfashion_jax checkpoint")
    meta = json.loads(cfg_path.read_text())
    if kind is not None and meta.get("kind") != kind:
        raise ConversionError(f"{cfg_path}: holds a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(ckpt_dir / "params")
    return meta, flatten(tree)
