"""What a stage trains: model factory, frozen modules, loss and data, looked up by `config.stage`.

`train.py` is stage-agnostic; each entry here returns a `Task`. "toy" (training/toy.py) lets the whole
infrastructure (sharding, checkpoints, multi-host) be tested without the real model or data.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Iterator, Mapping

from flax import nnx

from dualfashion_jax.training.step import LossFn


@dataclasses.dataclass
class Frozen:
    """A frozen module (T5, VAE): built by `factory`, weights from converted `params` (flat "a/b/kernel"
    numpy dict) or, when None, the factory's own (seeded) random init. Never in the optimizer."""
    factory: Callable[[], nnx.Module]
    params: Mapping[str, Any] | None = None
    source: str = ""
    kind: str = ""                           # conversion kind ("t5", "vae") for `save_converted`
    config: Mapping[str, Any] | None = None  # its config dict; a random init is saved to <workdir>/frozen/<name>


MODEL_CONFIG = "model_config.json"  # in a workdir: the trained model's exact MMDiT config (Task.model_config)


@dataclasses.dataclass
class Task:
    """model_factory(rngs) -> trained module; frozen[name] -> frozen module spec;
    make_data(process_index, process_count) -> iterator of host-local numpy batch dicts with `ids`
    and get_state()/set_state(); global_batch = rows per step across all processes;
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


def build_toy(config) -> Task:
    from dualfashion_jax.training import toy

    m = config.model
    dtype = {"float32": "float32", "bfloat16": "bfloat16"}[m.dtype]
    return Task(
        model_factory=lambda rngs: toy.ToyModel(m.features, m.width, m.layers, m.vocab, dtype=dtype, rngs=rngs),
        frozen={},
        loss_fn=toy.toy_loss,
        make_data=lambda pi, pc: toy.ToyData(config.batch_size, m.features, m.vocab, config.data.seed, pi, pc,
                                             nan_at_step=config.data.get("nan_at_step", -1)),
        global_batch=config.batch_size,
    )


# stage name -> "module:function" returning a Task (imported lazily: the toy path needs no model code).
REGISTRY: dict[str, str] = {
    "toy": "dualfashion_jax.training.tasks:build_toy",
    "stage1": "dualfashion_jax.training.stage_tasks:build_stage1",
    "stage2": "dualfashion_jax.training.stage_tasks:build_stage2",
    "stage3": "dualfashion_jax.training.stage_tasks:build_stage3",
}


def build(config) -> Task:
    """The Task for `config.stage` (one of REGISTRY)."""
    stage = str(config.stage)
    if stage not in REGISTRY:
        raise ValueError(f"config.stage={stage!r}: expected one of {sorted(REGISTRY)}")
    mod, fn = REGISTRY[stage].split(":")
    return getattr(importlib.import_module(mod), fn)(config)
