"""Config files (`configs/*.py`, ml_collections `get_config(arg)`): finding one by path or by name, loading it, and
the typed `file.py:size,key=value` argument they share (big_vision's `parse_arg`).

`configs/` is shipped as the package `dualfashion_jax.configs` (setup.py) and sits at the repo root in a checkout;
a config file loads its sibling `common.py` with `sibling(__file__, "common")`, so neither needs a sys.path edit.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import types

import ml_collections as mlc

_PACKAGE = pathlib.Path(__file__).resolve().parent.parent  # dualfashion_jax/


def configs_dir() -> pathlib.Path:
    """The shipped configs: `dualfashion_jax/configs` when installed, else the checkout's root `configs/`."""
    installed = _PACKAGE / "configs"
    return installed if (installed / "common.py").is_file() else _PACKAGE.parent / "configs"


def resolve(spec: str) -> tuple[str, str | None]:
    """'configs/stage1.py:demo' -> (existing file path, 'demo'); a path that is not there is also looked up by its
    file name in `configs_dir()` (so `stage1.py:demo` works from any folder and from an installed package)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        shipped = configs_dir() / os.path.basename(path)
        if not path or not shipped.is_file():
            raise FileNotFoundError(f"--config: no such file {path!r} (nor {os.path.basename(path)!r} in "
                                    f"{configs_dir()})")
        path = str(shipped)
    return path, arg or None


def _module(path: str, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The module `name`.py beside `config_file` (a config's shared `common.py`), loaded by path."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py")
    return _module(path, f"dualfashion_config_{name}")


def load(spec: str) -> mlc.ConfigDict:
    """'configs/x.py:arg' (or 'x.py:arg', see `resolve`) -> the file's get_config(arg), unlocked."""
    path, arg = resolve(spec)
    module = _module(path, "dualfashion_config_" + os.path.splitext(os.path.basename(path))[0])
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {path}: the file defines no get_config(arg)")
    return module.get_config(arg)


def split_size(arg: str | None, sizes: tuple[str, ...]) -> tuple[str, str]:
    """'demo,steps=10' -> ('demo', 'steps=10'): a sized config's first arg item names its size."""
    size, _, rest = (arg or "").partition(",")
    if size not in sizes:
        raise ValueError(f"config arg {arg or ''!r}: a size must come first, one of {list(sizes)} "
                         f"(e.g. --config configs/stage1.py:{sizes[1 if len(sizes) > 1 else 0]})")
    return size, rest


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
    """'runlocal,steps=10' -> ConfigDict(runlocal=True, steps=10); types follow `defaults` (big_vision)."""
    out = mlc.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        if not item:
            continue
        key, _, val = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config arg {key!r} unknown; expected one of {sorted(defaults)}")
        d = defaults[key]
        if not _:
            out[key] = True
        elif isinstance(d, bool):
            out[key] = val.lower() in ("1", "true", "yes")
        else:
            out[key] = type(d)(val) if d is not None else val
    return out
