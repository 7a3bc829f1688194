"""`dualfashion-jax train --config FILE[:arg] --workdir DIR [--config.a.b=value ...]`.

The config file is a Python module with `get_config(arg)` returning an ml_collections ConfigDict (big_vision style;
`configs/stage2.py:demo`); `--config.x=v` overrides existing fields only, parsed by `ml_collections.config_flags`
against the field's type, then the config is locked. A FILE that is not there is looked up by name in the
shipped configs (`core/config.py: resolve`). Multi-host: flags or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID (see distributed.py).
"""
from __future__ import annotations

import logging
import os
import sys

import ml_collections as mlc
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.training import distributed

PROG = "dualfashion-jax train"


def _flags(argv: list[str]) -> flags.FlagValues:
    """This command's flags on a private FlagValues (argv: the full command line, program name first)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file with get_config(arg): FILE.py[:arg]",
                                    flag_values=fv, lock_config=False, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, TensorBoard, loss_curve.png", flag_values=fv)
    flags.DEFINE_string("coordinator", None, "multi-host coordinator host:port", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index", flag_values=fv)
    flags.DEFINE_string("log_level", "INFO", "Python logging level", flag_values=fv)
    flags.DEFINE_boolean("allow-config-change", False, "continue a workdir whose checkpoints were written under a "
                         "different config (default: refuse)", flag_values=fv)
    return fv


def _missing_field(config: mlc.ConfigDict, overrides: list[str]) -> str | None:
    """The first `--config.a.b` override naming no field of `config`, as a message naming it."""
    for item in overrides:
        parts = item.split("=", 1)[0].lstrip("-").split(".")[1:]
        node = config
        for i, part in enumerate(parts):
            if not isinstance(node, mlc.ConfigDict) or part not in node:
                have = sorted(node.keys()) if isinstance(node, mlc.ConfigDict) else type(node).__name__
                return (f"--config.{'.'.join(parts)}: no field {part!r} in {'.'.join(['config'] + parts[:i])} "
                        f"(have {have})")
            node = node[part]
    return None


def _resolve_config(argv: list[str]) -> tuple[list[str], str]:
    """argv with its --config value resolved to an existing file (`core/config.py: resolve`: a path that is not
    there is the shipped config of that name), and that value."""
    for i, item in enumerate(argv):
        if item.startswith("--config=") or (item == "--config" and i + 1 < len(argv)):
            raw = item[len("--config="):] if item.startswith("--config=") else argv[i + 1]
            path, arg = config_lib.resolve(raw)
            spec = path + (f":{arg}" if arg else "")
            return (argv[:i] + [f"--config={spec}"] + argv[i + (1 if "=" in item else 2):]), spec
    raise ValueError("--config is required (e.g. --config configs/stage1.py:demo)")


def parse(argv: list[str]) -> tuple[mlc.ConfigDict, flags.FlagValues]:
    """argv (without the program name) -> (the overridden, locked config, the parsed flags).

    Raises ValueError / FileNotFoundError naming the flag or config field at fault."""
    argv, spec = _resolve_config(list(argv))
    fv = _flags([PROG] + argv)
    overrides = [a for a in argv if a.startswith(("--config.", "-config."))]
    try:
        rest = fv([PROG] + argv)
    except flags.UnrecognizedFlagError as e:
        raise ValueError(f"unrecognized argument {'--' + e.flagname!r}; overrides look like "
                         f"--config.optim.lr=1e-4") from None
    except (AttributeError, KeyError, TypeError) as e:  # config_flags: an override path not in the config
        missing = _missing_field(config_lib.load(spec), overrides)
        raise ValueError(missing or f"--config override: {e}") from None
    except flags.IllegalFlagValueError as e:
        msg = str(e)
        if "Error whilst parsing config file" in msg:  # get_config raised: its own message is the last line
            msg = f"--config: {msg.strip().splitlines()[-1]}"
        elif msg.startswith("flag --config."):  # 'flag --config.a=x: could not convert ...' -> name the type
            key = msg[len("flag --config."):].split("=", 1)[0]
            want = config_path.get_type(key, fv["config"].value).__name__
            msg = f"--config.{key}: expected {want}: {msg.split(': ', 1)[-1]}"
        raise ValueError(msg) from None
    except flags.Error as e:  # e.g. an override of a field whose type config_flags cannot parse
        raise ValueError(f"--config override: {e}") from None
    if len(rest) > 1:
        raise ValueError(f"unrecognized argument {rest[1]!r}; overrides look like --config.optim.lr=1e-4")
    if fv["workdir"].value is None:
        raise ValueError("--workdir is required")
    config = fv["config"].value
    config.lock()
    return config, fv


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__ + "\nflags:\n" + _flags([PROG]).get_help())
        return 0
    try:
        config, fv = parse(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=fv.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    distributed.initialize(fv.coordinator, fv.num_processes, fv.process_id)
    from dualfashion_jax.training import train  # after distributed.initialize: before any other JAX work

    try:
        out = train.run(config, fv.workdir, allow_config_change=fv["allow-config-change"].value)
    except train.NonFiniteLossError as e:
        print(f"{PROG}: stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    m = out["metrics"]
    print(f"finished at step {out['step']} ({out['exit']}); last loss "
          f"{m.get('loss', float('nan')):.6f}; workdir {os.path.abspath(fv.workdir)}")
    return 0
