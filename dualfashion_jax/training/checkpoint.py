"""Orbax `CheckpointManager` wrapper: async saves of the train state + data-iterator state + config JSON.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. Restore walks back from the newest step;
a checkpoint that fails to restore (partial/corrupted files) is moved to `<workdir>/checkpoints_corrupt/`
with a warning and the previous one is used, so a rerun of the same command always resumes. A checkpoint whose
array shapes differ from the current config is a config mismatch (`ConfigMismatchError`), never "corruption":
nothing is moved.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from dualfashion_jax.modeling.params import CorruptCheckpointWarning, state_metadata
from dualfashion_jax.core.keys import key_str
from dualfashion_jax.training.workdir import ConfigMismatchError

log = logging.getLogger(__name__)
ITEMS = ("state", "data", "config")  # params only, without the train state: modeling/params.py


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(tree: Any) -> Any:
    """Typed PRNG-key leaves -> raw uint32 key data (orbax stores plain arrays only)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def abstract_savable(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of `to_savable(state)`, the restore target."""
    def one(a, sh):
        if _is_key(a):
            data = jax.eval_shape(jax.random.key_data, a)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sh)
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh)
    return jax.tree.map(one, abstract, shardings)


def from_savable(tree: Any, abstract: Any) -> Any:
    """Inverse of `to_savable`: re-wraps key data where the abstract state holds typed keys."""
    def one(x, a):
        if _is_key(a):
            return jax.random.wrap_key_data(x, impl=jax.random.key_impl(a) if not isinstance(
                a, jax.ShapeDtypeStruct) else None)
        return x
    return jax.tree.map(one, tree, abstract)


def has_checkpoints(workdir: str | os.PathLike) -> bool:
    """Whether `<workdir>/checkpoints` holds at least one step folder."""
    root = os.path.join(os.fspath(workdir), "checkpoints")
    return os.path.isdir(root) and any(d.isdigit() for d in os.listdir(root))


def shape_mismatches(saved_tree: Any, target: Any) -> list[str]:
    """'path: checkpoint shape vs config shape' for every array both sides have with different shapes (a missing
    array is left to the restore: damaged metadata of a partial save lists fewer arrays, like a corrupt step)."""
    saved = {key_str(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(saved_tree)
             if hasattr(v, "shape")}
    want = {key_str(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(target)}
    return [f"{k}: checkpoint {saved[k]} vs config {want[k]}" for k in sorted(set(saved) & set(want))
            if saved[k] != want[k]]


class Checkpointer:
    """Saves every `every_steps` (and on demand), keeps the last `keep`, restores the newest valid one."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints"))
        self.corrupt_dir = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints_corrupt"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def save(self, step: int, state: Any, data_state: Mapping[str, Any], config_json: Mapping[str, Any],
             wait: bool = False) -> None:
        """Starts an (async) save of `step`; the device->host copy finishes before this returns."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(to_savable(state)),
                                  data=ocp.args.JsonSave(dict(data_state)),
                                  config=ocp.args.JsonSave(dict(config_json)))
        self.manager.save(int(step), args=args, force=True)
        if wait:
            self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any, shardings: Any, step: int | None = None
                ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, config) of the newest restorable checkpoint (or `step`); None if none."""
        self.manager.wait_until_finished()
        target = abstract_savable(abstract_state, shardings)
        steps = sorted(self.manager.all_steps(), reverse=True) if step is None else [int(step)]
        for s in steps:
            diffs = self._shape_mismatches(s, target)
            if diffs:
                raise ConfigMismatchError(
                    f"{self.directory}/{s}: the checkpoint was written by a different model/optimizer config "
                    f"({len(diffs)} array(s) differ: {'; '.join(diffs[:8])}); nothing was moved. Use a new workdir "
                    f"or the config that wrote it")
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore()))
                state = from_savable(out["state"], abstract_state)
                jax.block_until_ready(state)
                return s, state, dict(out["data"] or {}), dict(out["config"] or {})
            except Exception as e:  # noqa: BLE001  (any failure = unusable checkpoint; try an older one)
                if step is not None:
                    raise ValueError(f"{self.directory}/{s}: checkpoint could not be restored: {e}") from e
                msg = (f"{self.directory}/{s}: checkpoint is corrupted or partial "
                       f"({type(e).__name__}: {str(e)[:300]}); falling back to the previous one")
                warnings.warn(msg, CorruptCheckpointWarning, stacklevel=2)
                log.warning(msg)
                self._quarantine(s)
        return None

    def _shape_mismatches(self, step: int, target: Any) -> list[str]:
        """Shape differences between a step's saved state and `target`; [] when its metadata is unreadable
        (a partial save: the restore below then fails and the step is quarantined as corrupt)."""
        try:
            tree = state_metadata(os.path.join(self.directory, str(step), "state"))
        except Exception:  # noqa: BLE001  (missing/partial metadata = a corrupt step, handled by the caller)
            return []
        return shape_mismatches(tree, target) if tree else []

    def _quarantine(self, step: int) -> None:
        """Moves a bad step dir aside so later saves of the same step number can proceed."""
        src = os.path.join(self.directory, str(step))
        if jax.process_index() == 0 and os.path.isdir(src):
            os.makedirs(self.corrupt_dir, exist_ok=True)
            shutil.move(src, os.path.join(self.corrupt_dir, f"{step}.{int(time.time())}"))
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
