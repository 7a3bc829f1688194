"""Path -> key string ("blocks/attn/to_q/kernel"), the one spelling of a parameter's name in flat dicts and on disk.

Accepts an `nnx` flat-state path (`("blocks", 0, "kernel")`), a `jax.tree_util` key path (`DictKey`, `GetAttrKey`,
`SequenceKey` entries) or a tuple of strings; a Variable's trailing `value` is not part of the key.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np


def key_part(entry: Any) -> str:
    """One path entry -> its name: `DictKey.key`, `GetAttrKey.name`, `SequenceKey.idx`, or the entry itself."""
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def key_str(path: Iterable[Any]) -> str:
    """A path -> "a/b/0/kernel" (a trailing "value", the Variable's own field, is dropped)."""
    parts = [key_part(k) for k in path]
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """`{"a": {"b": x}}` -> `{"a/b": x}` as numpy (a trailing "value" level, as in NNX state dicts, is dropped)."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key_str(key.split("/"))] = np.asarray(v)
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """`{"a/b/c": x}` -> `{"a": {"b": {"c": x}}}` (integer path parts become int keys, as NNX uses for lists)."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = [int(p) if p.isdigit() else p for p in key.split("/")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree
