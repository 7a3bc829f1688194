"""Loads torchvision's pure-Python model classes (Inception3, VGG) beside torch 2.13 without its C ops.

The torchvision wheel cannot be imported normally here (`torchvision::nms` has no kernel for this torch),
but its model files are plain PyTorch. `scripts/test_material.sh` extracts the torchvision 0.28.0 wheel's
Python sources into `<cache>/material/torchvision_py/`; this module imports `torchvision.models.*`
from there behind light package stubs (skipping `torchvision/__init__.py`, which loads the C extension),
so the torch-side parity tests use the REAL upstream classes. The upstream `pytorch_fid` and `lpips`
packages (which import torchvision at module level) are imported through the same stubs.
"""
from __future__ import annotations

import contextlib
import importlib
import pathlib
import sys
import types

from dualfashion_jax.evaluators.nets.weights import material_dir

TORCHVISION_VERSION = "0.28.0"


def torchvision_source_dir() -> pathlib.Path:
    """Folder that holds the extracted `torchvision/` Python package."""
    return material_dir() / "torchvision_py"


class TorchvisionUnavailable(RuntimeError):
    """The extracted torchvision sources are missing (run scripts/test_material.sh)."""


@contextlib.contextmanager
def _stubbed_torchvision():
    root = torchvision_source_dir() / "torchvision"
    if not (root / "models" / "inception.py").is_file():
        raise TorchvisionUnavailable(
            f"{root}/models/inception.py not found: run `bash scripts/test_material.sh` to extract the "
            f"torchvision {TORCHVISION_VERSION} Python sources (torchvision itself cannot load beside torch 2.13)")
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    for k in saved:
        del sys.modules[k]

    def stub(name: str, path: pathlib.Path) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
        return mod

    tv = stub("torchvision", root)
    tv.__version__ = TORCHVISION_VERSION
    models = stub("torchvision.models", root / "models")
    transforms = stub("torchvision.transforms", root / "transforms")
    tv.models, tv.transforms = models, transforms
    try:
        functional = importlib.import_module("torchvision.transforms.functional")
        transforms.functional, transforms.InterpolationMode = functional, functional.InterpolationMode
        for name in ("inception", "vgg"):
            mod = importlib.import_module(f"torchvision.models.{name}")
            setattr(models, name, mod)
            for attr in getattr(mod, "__all__", []):
                setattr(models, attr, getattr(mod, attr))
        yield tv
    finally:
        # Remove the stubs again so that other code still sees "torchvision is not installed"; the classes
        # imported above keep their own references.
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        sys.modules.update(saved)


_CACHE: dict[str, types.ModuleType] = {}


def load() -> dict[str, types.ModuleType]:
    """Returns {"inception", "vgg", "pytorch_fid_inception", "pytorch_fid_score", "lpips"} upstream modules."""
    if _CACHE:
        return _CACHE
    with _stubbed_torchvision() as tv:
        out = {"inception": tv.models.inception, "vgg": tv.models.vgg}
        for key, name in (("pytorch_fid_inception", "pytorch_fid.inception"),
                          ("pytorch_fid_score", "pytorch_fid.fid_score"), ("lpips", "lpips")):
            sys.modules.pop(name, None)
            out[key] = importlib.import_module(name)
    _CACHE.update(out)
    return _CACHE
