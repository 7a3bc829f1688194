"""Reading torch-side weights safely: safetensors without torch, torch pickles only with `weights_only=True`.

Every converter (MMDiT, VAE, T5, evaluator nets) maps the flat `{torch_key: array}` dict read here to a flat
`{flax_key: array}` dict; validating it and building the model is `core.params`, saving it `core.converted`.
Nothing here imports torch unless a `.pth`/`.pt`/`.bin` file is read.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from dualfashion_jax.core.params import ConversionError

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


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
    import torch  # local: torch only when a torch file is read

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
