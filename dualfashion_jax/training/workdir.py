"""A workdir belongs to one run: its saved `config.json` is compared with the new config before anything is written.

Fields that only change how a run executes (length, logging, checkpoint cadence, device layout, kernels) may differ
on resume; a change of any other field (model, optimizer, loss, data settings, seed) stops with `ConfigMismatchError`
listing the fields, unless the caller explicitly allows it. Paths may move (a warning names them).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"

# Dotted prefixes that may change between runs of one workdir without changing what is trained.
RUNTIME_FIELDS = ("total_steps", "log_every", "tensorboard", "progress_bar", "debug_step_delay_s", "checkpoint",
                  "mesh", "sharding", "model.attention_backend", "model.remat_policy",
                  "model.overrides.scan_layers")  # same stacked params either way
# Dotted fields that name folders: a moved folder is not a different run (warned, not refused).
PATH_FIELDS = ("data.dir", "data.tokenizer", "init_from", "t5.checkpoint", "vae.checkpoint")


class ConfigMismatchError(ValueError):
    """The workdir holds a run of a different config; names the differing fields."""


def _flat(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _flat(v, key + ".")
        else:
            yield key, v


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(identity fields that differ, path fields that differ) as 'key: saved -> new' lines. A field on one side
    only is not a difference: fields are added with defaults that keep the earlier behaviour (and removed
    fields no longer act)."""
    a, b = dict(_flat(saved)), dict(_flat(new))
    identity, paths = [], []
    for key in sorted(set(a) & set(b)):
        if _matches(key, RUNTIME_FIELDS) or a[key] == b[key]:
            continue
        line = f"{key}: {a[key]!r} -> {b[key]!r}"
        (paths if _matches(key, PATH_FIELDS) else identity).append(line)
    return identity, paths


def claim(workdir: str, config_json: Mapping[str, Any], *, has_checkpoints: bool, allow_change: bool,
          write: bool) -> None:
    """Checks `workdir` against `config_json` (raising on a different run), then (re)writes its config.json.

    A workdir without checkpoints is free: its config.json is only what a run that never saved left behind."""
    path = os.path.join(workdir, CONFIG_FILE)
    if has_checkpoints and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigMismatchError(f"{path}: unreadable ({e}); cannot tell which run this workdir holds") from e
        identity, paths = differences(saved, config_json)
        if paths:
            log.warning("%s: folders moved since the last run: %s", workdir, "; ".join(paths))
        if identity and not allow_change:
            raise ConfigMismatchError(
                f"{workdir} holds checkpoints of a different config ({len(identity)} field(s) differ: "
                f"{'; '.join(identity[:12])}{' ...' if len(identity) > 12 else ''}). Use a new --workdir, or pass "
                f"--allow-config-change to continue this run under the new config")
        if identity:
            log.warning("%s: continuing under a changed config (--allow-config-change): %s", workdir,
                        "; ".join(identity))
    if write:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(config_json, f, indent=2)
        os.replace(tmp, path)
