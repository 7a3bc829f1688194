"""Fixed-size batched mapping of a jitted function over a large image array, with a progress bar.

The last batch is padded to `batch_size` (and the padding dropped from the result) so a jitted function
compiles once per run, not once per remainder size.
"""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np
from tqdm.auto import tqdm


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "", enabled: bool = True):
    """tqdm progress bar when enabled (long metric runs), else the plain iterable."""
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def map_batches(fn: Callable[[jax.Array], jax.Array], images: np.ndarray, *, batch_size: int = 32,
                desc: str = "", show_progress: bool = True) -> np.ndarray:
    """Applies `fn` ([b, ...] -> [b, ...]) to `images` [N, ...] in batches of exactly `batch_size`.

    Returns the concatenated numpy output [N, ...]. The padding rows repeat the last image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    if n == 0:
        raise ValueError(f"{desc or 'map_batches'}: got an empty image array")
    outs = []
    starts = range(0, n, batch_size)
    for s in progress(starts, total=len(starts), desc=desc, enabled=show_progress):
        batch = np.asarray(images[s:s + batch_size])
        real = len(batch)
        if real < batch_size:
            pad = np.repeat(batch[-1:], batch_size - real, axis=0)
            batch = np.concatenate([batch, pad], axis=0)
        outs.append(np.asarray(fn(batch))[:real])
    return np.concatenate(outs, axis=0)
