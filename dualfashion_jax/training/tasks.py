"""What a stage trains: model factory, frozen modules, loss and data, looked up by `config.stage`.

`train.py` is stage-agnostic; each stage module (`training/stage1.py`, `stage2.py`, `stage3.py`, and `toy.py`,
which lets the whole infrastructure -- sharding, checkpoints, multi-host -- be tested without the real model or
data) has a `build(config) -> Task` that owns its batch mapping and its loss call.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Iterator, Mapping

from flax import nnx

from dualfashion_jax.modeling.frozen import Frozen
from dualfashion_jax.training.step import LossFn


@dataclasses.dataclass
class Task:
    """model_factory(rngs) -> trained module; frozen[name] -> frozen module spec;
    make_data(process_index, process_count) -> iterator of host-local numpy batch dicts with `ids`
    (data/keys.py) and get_state()/set_state(); global_batch = rows per step across all processes;
    make_consts(frozen modules) -> {name: array} computed once (e.g. T5 null-prompt embeddings), passed
    to the loss next to the frozen modules; model_config (if set) is saved to <workdir>/model_config.json so
    generation rebuilds the exact model without the dataset."""
    model_factory: Callable[[nnx.Rngs], nnx.Module]
    frozen: Mapping[str, Frozen]
    loss_fn: LossFn
    make_data: Callable[[int, int], Iterator[dict[str, Any]]]
    global_batch: int
    make_consts: Callable[[Mapping[str, nnx.Module]], Mapping[str, Any]] | None = None
    model_config: Any = None


# stage name -> module with `build(config) -> Task` (imported when named: the toy path needs no model code).
REGISTRY: dict[str, str] = {
    "toy": "dualfashion_jax.training.toy",
    "stage1": "dualfashion_jax.training.stage1",
    "stage2": "dualfashion_jax.training.stage2",
    "stage3": "dualfashion_jax.training.stage3",
    "dvbpr": "dualfashion_jax.training.dvbpr",     # visually-aware BPR ranking (configs/dvbpr.py)
}


def build(config) -> Task:
    """The Task for `config.stage` (one of REGISTRY)."""
    stage = str(config.stage)
    if stage not in REGISTRY:
        raise ValueError(f"config.stage={stage!r}: expected one of {sorted(REGISTRY)}")
    return importlib.import_module(REGISTRY[stage]).build(config)
