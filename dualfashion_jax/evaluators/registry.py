"""Metric registry mechanism: each metric family file registers its runners with `@register(...)`.

A runner is `run_<metric>(ctx: EvalContext) -> dict[str, float]`. The table of all metrics (and the default sets)
is `evaluators/metrics.py`, which imports the family files; this module knows no metric by name.
"""
from __future__ import annotations

import dataclasses
import importlib
import types
from typing import Callable, Sequence

GROUPS = ("Fidelity", "Personalization", "Compatibility", "Retrieval", "Text", "Oracle", "Grounding")
TASKS = ("pfitb", "gor")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric: where its runner lives, the networks it needs, its tasks, table group, description and the
    (key, column label) pairs of its headline numbers in the report's table (everything else goes to Details)."""

    name: str
    module: str
    function: str
    networks: tuple[str, ...]
    tasks: tuple[str, ...]
    group: str
    description: str
    headline: tuple[tuple[str, str], ...] = ()
    default_function: str | None = None  # runner used when the metric runs as part of the default set

    def load(self) -> Callable:
        """The runner, looked up by name at call time (so it can be monkeypatched in tests)."""
        return getattr(importlib.import_module(self.module), self.function)


_REGISTERED: dict[str, MetricSpec] = {}


def register(name: str, *, group: str, description: str, networks=(), tasks=TASKS, headline=(),
             default_function: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: registers the decorated runner as metric `name` (each name once)."""
    if group not in GROUPS:
        raise ValueError(f"metric {name!r}: unknown group {group!r}; expected one of {GROUPS}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTERED:
            raise ValueError(f"metric {name!r} is registered twice ({_REGISTERED[name].module} and {fn.__module__})")
        _REGISTERED[name] = MetricSpec(name, fn.__module__, fn.__name__, tuple(networks), tuple(tasks), group,
                                       description, tuple(tuple(h) for h in headline), default_function)
        return fn
    return deco


def table(families: Sequence[types.ModuleType]) -> dict[str, MetricSpec]:
    """Every registered metric in table order: by group (GROUPS order), then by family (the order of `families`,
    unlisted modules last), then in registration order within the family file (independent of import order)."""
    rank = {m.__name__: i for i, m in enumerate(families)}
    seq = {name: i for i, name in enumerate(_REGISTERED)}
    return dict(sorted(_REGISTERED.items(), key=lambda kv: (GROUPS.index(kv[1].group),
                                                            rank.get(kv[1].module, len(rank)), seq[kv[0]])))
