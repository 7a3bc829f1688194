"""Host (numpy) params of a training checkpoint, read without the train state (`init_from`, generation).

Layout written by `training/checkpoint.py`: `<workdir>/checkpoints/<step>/state` holding {"params", "ema", ...}.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step could not be restored and was skipped."""


def state_metadata(path: str) -> Any:
    """The saved state's tree of array metadata (shapes, dtypes), read without loading any array."""
    meta = ocp.PyTreeCheckpointer().metadata(path)
    tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
    return getattr(tree, "tree", tree)


def load_params(directory: str | os.PathLike, use_ema: bool = False) -> tuple[int, dict[str, Any]]:
    """Host (numpy) params -- or the EMA -- of the newest valid checkpoint under `directory` (`init_from`).

    Returns (step, nested dict). Only the requested subtree is read (orbax partial restore).
    """
    directory = os.path.abspath(os.fspath(directory))
    root = directory if os.path.basename(directory) == "checkpoints" else os.path.join(directory, "checkpoints")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"config.init_from: no checkpoints folder at {root}")
    key = "ema" if use_ema else "params"
    steps = sorted((int(d) for d in os.listdir(root) if d.isdigit()), reverse=True)
    reader = ocp.PyTreeCheckpointer()
    for s in steps:
        path = os.path.join(root, str(s), "state")
        try:
            tree = state_metadata(path)
            if key not in tree or not tree[key]:
                raise ValueError(f"the checkpoint's state has no {key!r} entry (keys: {sorted(tree)})")
            item = {key: tree[key]}
            rargs = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            out = reader.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=rargs,
                                                                   partial_restore=True))
            return s, out[key]
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"{path}: cannot load {key} ({type(e).__name__}: {str(e)[:300]}); trying older",
                          CorruptCheckpointWarning, stacklevel=2)
    raise FileNotFoundError(f"config.init_from: no restorable checkpoint in {root}")
