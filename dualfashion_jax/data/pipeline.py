"""Deterministic, resumable, multi-host batch loading over a random-access source with `grain.MapDataset`.

Per epoch e the whole source is shuffled with a seed derived from (seed, e), cut to a whole number of GLOBAL
batches (drop remainder, so every process sees the same number of steps), and process p takes every P-th
example (`ds[p::P]`): global batch b is then exactly the b-th block of the epoch's permutation, split over
processes, and the shards are disjoint. Because every batch is addressed by (epoch, position), the iterator
state is a tiny JSON-able dict and resuming is bitwise identical; prefetching (threads) cannot change results.
Local batches are numpy dicts; with a `NamedSharding` they become global `jax.Array`s through
`jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import grain
import jax
import numpy as np

STATE_VERSION = 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit shuffle seed for (seed, epoch)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint32)[0])


def to_global(local_batch: dict, sharding) -> dict:
    """Assemble global arrays from each process's local batch (batch dim sharded as `sharding` says)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


class BatchIterator:
    """Iterates local batches of `source` (len + __getitem__) for this process; checkpointable via get/set_state."""

    def __init__(self, source, *, global_batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, process_index: int | None = None, process_count: int | None = None,
                 sharding=None, transform: Callable[[dict], dict] | None = None, prefetch: int = 2):
        if process_index is None or process_count is None:
            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                             f"process_count {process_count}")
        n = len(source)
        if n < global_batch_size:
            raise ValueError(f"source has {n} examples, fewer than one global batch ({global_batch_size})")
        self.source, self.seed, self.shuffle = source, int(seed), bool(shuffle)
        self.global_batch_size, self.num_epochs = int(global_batch_size), num_epochs
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch_size = self.global_batch_size // self.process_count
        self.batches_per_epoch = n // self.global_batch_size
        self.sharding, self.transform = sharding, transform
        self._epoch, self._position = 0, 0
        self._datasets: dict[int, Any] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, prefetch)) if prefetch > 0 else None
        self._prefetch = int(prefetch)
        self._pending: dict[tuple[int, int], Future] = {}

    # -- dataset for one epoch
    def _epoch_dataset(self, epoch: int):
        if epoch not in self._datasets:
            ds = grain.MapDataset.source(self.source)
            if self.shuffle:
                ds = ds.shuffle(seed=epoch_seed(self.seed, epoch))
            ds = ds[: self.batches_per_epoch * self.global_batch_size][self.process_index::self.process_count]
            if self.transform is not None:
                ds = ds.map(self.transform)
            self._datasets = {epoch: ds.batch(self.local_batch_size, drop_remainder=True)}  # keep one epoch
        return self._datasets[epoch]

    def _load(self, epoch: int, position: int) -> dict:
        return self._epoch_dataset(epoch)[position]

    def _next_address(self, epoch: int, position: int) -> tuple[int, int]:
        position += 1
        return (epoch + 1, 0) if position >= self.batches_per_epoch else (epoch, position)

    def _finished(self, epoch: int) -> bool:
        return self.num_epochs is not None and epoch >= self.num_epochs

    # -- iteration
    def __iter__(self):
        return self

    def __next__(self):
        addr = (self._epoch, self._position)
        if self._finished(addr[0]):
            raise StopIteration
        fut = self._pending.pop(addr, None)
        batch = fut.result() if fut is not None else self._load(*addr)
        self._epoch, self._position = self._next_address(*addr)
        if self._pool is not None:
            a = (self._epoch, self._position)
            for _ in range(self._prefetch):
                if self._finished(a[0]) or a[0] != addr[0]:
                    break  # prefetch within the current epoch only (one epoch dataset is cached)
                if a not in self._pending:
                    self._pending[a] = self._pool.submit(self._load, *a)
                a = self._next_address(*a)
        return batch if self.sharding is None else to_global(batch, self.sharding)

    # -- checkpointing
    def get_state(self) -> dict:
        """{"version", "epoch", "position", "seed", "global_batch_size", "process_count"}: JSON-able."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "position": self._position, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "process_count": self.process_count}

    def set_state(self, state: dict) -> None:
        """Resume from `get_state()` output; the seed and batch geometry must match (else a clear error)."""
        for k in ("epoch", "position", "seed"):
            if k not in state:
                raise ValueError(f"loader state lacks {k!r}: {state}")
        for k, mine in (("seed", self.seed), ("global_batch_size", self.global_batch_size),
                        ("process_count", self.process_count)):
            if k in state and int(state[k]) != mine:
                raise ValueError(f"loader state {k}={state[k]} does not match this loader's {k}={mine}")
        if not 0 <= int(state["position"]) < self.batches_per_epoch:
            raise ValueError(f"loader state position {state['position']} not in [0, {self.batches_per_epoch})")
        self._pending.clear()
        self._epoch, self._position = int(state["epoch"]), int(state["position"])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
