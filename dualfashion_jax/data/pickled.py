"""The ONE place that unpickles: reading DiFashion/DualFashion `.npy` dicts during a trusted, one-off conversion.

The upstream files are 0-d object arrays wrapping pickled Python dicts. Unpickling can execute arbitrary code,
so it is done only by the real-data converter, only when the user passes `--trust-pickle`, and after a loud
notice. Everything downstream reads the safe npz/json format and never unpickles.
"""
from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

PICKLE_NOTICE = (
    "NOTICE: the DiFashion/DualFashion .npy files are pickled Python objects. Unpickling can run arbitrary code.\n"
    "        Only convert files you obtained from a source you trust. They are read once here; the converted\n"
    "        dataset is stored as npz/json and is never unpickled again."
)


class ConversionInputError(ValueError):
    """An upstream input file is missing, truncated or not the expected structure; names the file and key."""


class UntrustedPickleError(PermissionError):
    """Raised when conversion is attempted without explicitly trusting the pickled inputs."""


def require_trust(trust_pickle: bool, *, stream=None) -> None:
    """Print the pickle notice (stderr by default); refuse to continue unless the caller trusts the inputs."""
    print(PICKLE_NOTICE, file=stream if stream is not None else sys.stderr, flush=True)
    if not trust_pickle:
        raise UntrustedPickleError("refusing to unpickle the source .npy files without --trust-pickle "
                                   "(trust_pickle=True); see the notice above")


def load_pickled(path: Path) -> Any:
    """np.load(allow_pickle=True) of a DiFashion .npy; a 0-d object array is unwrapped with `.item()`."""
    path = Path(path)
    if not path.is_file():
        raise ConversionInputError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=True)
    except (ValueError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, AttributeError,
            ImportError, IndexError, TypeError) as e:
        raise ConversionInputError(f"{path}: cannot read .npy (truncated, corrupt or not a .npy file): "
                                   f"{type(e).__name__}: {e}") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise ConversionInputError(f"{path}: is an .npz archive, expected a single .npy array")
    return arr.item() if arr.dtype == object and arr.ndim == 0 else arr


def load_pickled_dict(path: Path) -> dict:
    """Like `load_pickled`, but the content must be a dict (every DiFashion split file is one)."""
    obj = load_pickled(path)
    if not isinstance(obj, dict):
        raise ConversionInputError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj
