"""The built-in "synthetic outfits" dataset: a procedural fashion world with known ground truth.

`make_dataset(out_dir, seed=0, image_size=32, ...)` writes it in the safe format (see `make.py`);
`load_truth(root)` reads its truth/ folder; `data/oracle.py` decodes attributes back from pixels and
`evaluators/oracle_metrics.py` scores generations against it. Imports are lazy so
`python -m dualfashion_jax.data.synthetic.make` runs cleanly.
"""
import importlib

_EXPORTS = {"make_dataset": "make", "load_truth": "truth", "Truth": "truth", "rule_compatible": "world",
            "rule_violations": "world"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
