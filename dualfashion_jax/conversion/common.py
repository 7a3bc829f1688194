"""Shared torch->Flax conversion plumbing: read weights safely, validate against `eval_shape`, save/load orbax.

Every converter (MMDiT, VAE, T5, evaluator nets) maps a flat `{torch_key: array}` dict to a flat
`{flax_path: array}` dict; this module does everything around that map. Nothing here imports torch
unless a `.pth`/`.pt`/`.bin` file is read (and then only with `weights_only=True`).
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import struct
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np

FlatParams = dict[str, np.ndarray]  # "blocks/attn/to_q/kernel" -> array

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class ConversionError(ValueError):
    """A checkpoint does not match the model it is converted into (names every offending key)."""


class UnsafePickleError(ConversionError):
    """A torch file holds pickled Python objects besides tensors; they are not loaded (unpickling can run code)."""


# ----------------------------------------------------------------------------------------------------------
# Reading source weights.
# ----------------------------------------------------------------------------------------------------------
def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a .safetensors file into numpy without torch (bf16 kept as ml_dtypes.bfloat16)."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConversionError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConversionError(f"{path}: corrupt safetensors header ({e})") from e
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if end > len(data):
            raise ConversionError(f"{path}: tensor {key!r} extends past the end of the file (truncated download?)")
        out[key] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
    return out


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a torch pickle (.pth/.pt/.bin) with `weights_only=True` (no arbitrary code runs)."""
    import torch  # local: converted checkpoints load without torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: not repeated here
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise UnsafePickleError(
                f"{path}: holds pickled Python objects, not only tensors (it references {found.group(1)}); they are "
                "not loaded, for safety (unpickling can run arbitrary code). Save the weights once as a plain state "
                "dict (torch.save(model.state_dict(), path)) or as .safetensors, where you trust the file") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        raise ConversionError(f"{path}: not a plain torch weights file (the safe loader stopped at: "
                              f"{detail.group(1) if detail else 'an unsupported pickle instruction'}); a corrupt file, "
                              "or pickled Python objects, which are not loaded for safety") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        hint = "" if "TorchScript" in str(e) else " (truncated or corrupt download?)"
        raise ConversionError(f"{path}: cannot be read as a torch weights file{hint}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'empty file'}") from None
    if isinstance(obj, torch.Tensor):
        return {"": _torch_to_numpy(obj)}
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict or a tensor, got {type(obj).__name__}")
    return {k: _torch_to_numpy(v) for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a weight file or a folder of safetensors shards (`*.safetensors`, sorted) into one dict."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: weight file or folder does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: folder holds no *.safetensors files")
        out: dict[str, np.ndarray] = {}
        for f in files:
            out.update(read_safetensors(f))
        return out
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return read_torch_file(path)
    raise ConversionError(f"{path}: unknown weight file type {path.suffix!r} (expected .safetensors or .pth/.pt/.bin)")


# ----------------------------------------------------------------------------------------------------------
# Flat views of NNX models, validation, loading.
# ----------------------------------------------------------------------------------------------------------
def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def abstract_params(model_factory: Callable[[], Any]) -> dict[str, Any]:
    """Flat `{path: ShapeDtypeStruct}` of a model's nnx.Param leaves, without allocating it."""
    from flax import nnx

    abstract = nnx.eval_shape(model_factory)
    return {_path_str(p): v.get_value() for p, v in nnx.state(abstract, nnx.Param).flat_state()}


def flat_params(model) -> FlatParams:
    """Flat `{path: np.ndarray}` of a concrete model's params."""
    from flax import nnx

    return {_path_str(p): np.asarray(v.get_value()) for p, v in nnx.state(model, nnx.Param).flat_state()}


def validate(converted: Mapping[str, np.ndarray], expected: Mapping[str, Any], *, source: str,
             ignore_missing: Callable[[str], bool] = lambda k: False) -> None:
    """Raises one ConversionError listing every missing, unexpected and mis-shaped key."""
    missing = sorted(k for k in expected if k not in converted and not ignore_missing(k))
    unexpected = sorted(k for k in converted if k not in expected)
    bad_shape = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in converted if k in expected and tuple(converted[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or bad_shape:
        parts = [f"{source} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)):
            if items:
                shown = items[:50] + ([f"... and {len(items) - 50} more"] if len(items) > 50 else [])
                parts.append(f"  {title} ({len(items)}):\n    " + "\n    ".join(shown))
        raise ConversionError("\n".join(parts))


def load_flat_into(model, params: Mapping[str, np.ndarray]) -> None:
    """Writes flat params into a concrete model (dtype cast to each param's dtype)."""
    from flax import nnx
    import jax.numpy as jnp

    state = nnx.state(model, nnx.Param)
    flat = state.flat_state()
    for path, var in flat:
        key = _path_str(path)
        if key in params:
            var.set_value(jnp.asarray(params[key], dtype=var.get_value().dtype))
    nnx.update(model, nnx.State.from_flat_path(flat))


def unflatten(params: Mapping[str, np.ndarray]) -> dict:
    """`{"a/b/c": x}` -> `{"a": {"b": {"c": x}}}` (integer path parts become int keys, as NNX uses for lists)."""
    tree: dict = {}
    for key, value in params.items():
        node = tree
        parts = [int(p) if p.isdigit() else p for p in key.split("/")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def flatten(tree: Mapping, prefix: str = "") -> FlatParams:
    out: FlatParams = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = np.asarray(v)
    return out


# ----------------------------------------------------------------------------------------------------------
# Converted checkpoints: orbax params + config.json (loadable without torch).
# ----------------------------------------------------------------------------------------------------------
def save_converted(out_dir: str | os.PathLike, *, kind: str, config: Mapping[str, Any],
                   params: Mapping[str, np.ndarray], extra: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Writes `<out_dir>/config.json` ({"kind", "config", ...extra}) and `<out_dir>/params` (orbax)."""
    import orbax.checkpoint as ocp

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
    import orbax.checkpoint as ocp

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
