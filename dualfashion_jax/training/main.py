"""`dualfashion-jax train --config FILE[:arg] --workdir DIR [--config.a.b=value ...]`.

The config file is a Python module with `get_config(arg)` returning an ml_collections ConfigDict
(big_vision style); `--config.x=v` overrides existing fields only (type-checked), then the config is locked.
Multi-host: flags or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (see distributed.py).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import logging
import os
import sys

import ml_collections as mlc


def load_config(spec: str):
    """'configs/x.py:arg' -> the file's get_config(arg)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: no such file {path!r}")
    name = "dualfashion_config_" + os.path.splitext(os.path.basename(path))[0]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {path}: the file defines no get_config(arg)")
    return module.get_config(arg or None)


def _parse_value(raw: str, current, key: str):
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if current is None:
            return raw
        raise ValueError(f"--config.{key}={raw!r}: not a Python literal (expected {type(current).__name__})")
    if current is None or value is None:
        return value
    if isinstance(current, bool) != isinstance(value, bool) or (
            isinstance(current, (int, float)) and not isinstance(value, (int, float))):
        raise ValueError(f"--config.{key}={raw!r}: expected {type(current).__name__}, got {type(value).__name__}")
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
        raise ValueError(f"--config.{key}={raw!r}: expected int, got float")
    return value


def apply_overrides(config: mlc.ConfigDict, overrides: list[str]) -> mlc.ConfigDict:
    """Applies `--config.a.b=value` strings to existing fields; unknown keys are an error."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"unrecognized argument {item!r}; overrides look like --config.optim.lr=1e-4")
        key, raw = item[len("--config."):].split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for i, p in enumerate(parents):
            if p not in node:
                raise ValueError(f"--config.{key}: no field {'.'.join(parents[:i + 1])!r} in the config")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"--config.{key}: no field {leaf!r} (have {sorted(node.keys())})")
        with node.unlocked() if isinstance(node, mlc.ConfigDict) else _null():
            node[leaf] = _parse_value(raw, node[leaf], key)
    return config


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dualfashion-jax train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="config file with get_config(arg): FILE.py[:arg]")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard, loss_curve.png")
    p.add_argument("--coordinator", default=None, help="multi-host coordinator host:port")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--log_level", default="INFO")
    p.add_argument("--allow-config-change", action="store_true",
                   help="continue a workdir whose checkpoints were written under a different config (default: refuse)")
    args, rest = p.parse_known_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = apply_overrides(load_config(args.config), rest)
    except (ValueError, FileNotFoundError) as e:
        print(f"dualfashion-jax train: {e}", file=sys.stderr)
        return 2
    config.lock()

    from dualfashion_jax.training import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    from dualfashion_jax.training import train
    try:
        out = train.run(config, args.workdir, allow_config_change=args.allow_config_change)
    except train.NonFiniteLossError as e:
        print(f"dualfashion-jax train: stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"dualfashion-jax train: {e}", file=sys.stderr)
        return 2
    m = out["metrics"]
    print(f"finished at step {out['step']} ({out['exit']}); last loss "
          f"{m.get('loss', float('nan')):.6f}; workdir {os.path.abspath(args.workdir)}")
    return 0
