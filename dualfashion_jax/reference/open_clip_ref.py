"""Imports open_clip's real torch `VisionTransformer` / `TextTransformer` / `SimpleTokenizer` for parity tests.

open-clip-torch 3.3.0 is installed with `--no-deps` (it requires torchvision, which cannot load beside torch 2.13).
`open_clip/__init__.py` imports torchvision transforms, so this module imports only the submodules it needs
(`open_clip.transformer`, `open_clip.tokenizer`) behind a package stub. Their only torchvision use is
`torchvision.ops.misc.FrozenBatchNorm2d` (for `freeze_batch_norm_2d`, never called by the ViT towers): it is taken
from the extracted torchvision sources when `scripts/test_material.sh` has run, else provided by a stand-in class
that refuses to be constructed.
"""
from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
import types

from dualfashion_jax.reference import torchvision_shim

_CACHE: dict[str, types.ModuleType] = {}


class OpenClipUnavailable(ImportError):
    """open-clip-torch is not installed (pip install --no-deps open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth)."""


def _frozen_bn_module() -> types.ModuleType:
    misc_src = torchvision_shim.torchvision_source_dir() / "torchvision" / "ops" / "misc.py"
    mod = types.ModuleType("torchvision.ops.misc")
    if misc_src.is_file():
        # Execute the real misc.py, with its one relative import (`..utils`) from the same extracted tree.
        utils = types.ModuleType("torchvision.utils")
        exec(compile((misc_src.parent.parent / "utils.py").read_text(), str(misc_src.parent.parent / "utils.py"),
                     "exec"), utils.__dict__)
        sys.modules["torchvision.utils"] = utils
        mod.__package__ = "torchvision.ops"
        exec(compile(misc_src.read_text(), str(misc_src), "exec"), mod.__dict__)
        return mod

    class FrozenBatchNorm2d:  # noqa: D401
        def __init__(self, *a, **k):
            raise RuntimeError("FrozenBatchNorm2d needs the torchvision sources (bash scripts/test_material.sh)")

    mod.FrozenBatchNorm2d = FrozenBatchNorm2d
    return mod


def load() -> dict[str, types.ModuleType]:
    """Returns {"transformer": open_clip.transformer, "tokenizer": open_clip.tokenizer, "bpe": path}."""
    if _CACHE:
        return _CACHE
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise OpenClipUnavailable("open_clip is not installed: pip install --no-deps open-clip-torch==3.3.0 "
                                  "ftfy==6.3.1 wcwidth==0.9.4")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("open_clip", "torchvision")}
    for k in saved:
        del sys.modules[k]
    try:
        for name in ("torchvision", "torchvision.ops"):
            stub = types.ModuleType(name)
            stub.__path__ = []
            sys.modules[name] = stub
        sys.modules["torchvision.ops.misc"] = _frozen_bn_module()
        pkg = types.ModuleType("open_clip")
        pkg.__path__ = [str(root)]
        sys.modules["open_clip"] = pkg
        out = {"transformer": importlib.import_module("open_clip.transformer"),
               "tokenizer": importlib.import_module("open_clip.tokenizer")}
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in ("open_clip", "torchvision")]:
            del sys.modules[k]
        sys.modules.update(saved)
    out["bpe"] = root / "bpe_simple_vocab_16e6.txt.gz"
    _CACHE.update(out)
    return _CACHE
