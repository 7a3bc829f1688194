"""Benchmark: stage-2 batch loading (examples/s) on CPU from the safe format, images vs precomputed latents.

Builds a small random dataset in a temp dir (PNG images stored slightly larger than the target resolution,
so every load does decode + bicubic resize + centre crop), a test tokenizer, and times `BatchIterator` over
`Stage2Source` (1 target + 3 context images, 3 tokenized texts per example) for a few configurations.

    .venv/bin/python benchmarks/data_loader.py --image-sizes 32 64 --batch-size 32 --batches 20
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from dualfashion_jax.core import host_memory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _bench(src, batch_size: int, batches: int, prefetch: int) -> float:
    """Examples/s over `batches` batches after one warm-up batch (fresh iterator, shuffled, epoch 0)."""
    from dualfashion_jax.data.pipeline import BatchIterator

    it = BatchIterator(src, global_batch_size=batch_size, seed=0, process_index=0, process_count=1,
                       prefetch=prefetch)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    it.close()
    return batches * batch_size / dt


def main(argv: list[str] | None = None) -> int:
    from dualfashion_jax.data.examples import Stage2Source
    from dualfashion_jax.data.format import SafeDataset, sentence_text
    from dualfashion_jax.data.tiny import make_tiny_dataset
    from dualfashion_jax.text import tokenizer as tk

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--num-items", type=int, default=400)
    p.add_argument("--prefetch", type=int, nargs="+", default=[0, 4])
    a = p.parse_args(argv)
    kept = host_memory.keep_freed_memory()  # as the CLI does (docs/performance.md §8); both sides share it
    print(f"host memory kept in-process (mallopt): {kept}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.image_sizes:
            stored = (size + size // 4, size + size // 2)
            root = make_tiny_dataset(Path(tmp) / f"ds{size}", num_items=a.num_items, num_users=20,
                                     rows_per_split=max(64, a.batch_size * (a.batches + 2) // 4 + 1),
                                     image_size=size, stored_size=stored, seed=0)
            ds = SafeDataset(root)
            texts = [tk.caption_json(v["elements"]) for v in ds.item_info.values()]
            texts += [sentence_text(c) for c in ds.categories.values()]
            tok = tk.build_test_tokenizer(texts, Path(tmp) / f"tok{size}", vocab_size=200, max_length=256)
            src = Stage2Source(ds, tok, use_latents=False)
            for pf in a.prefetch:
                rows.append((f"images {size}px (stored {stored[0]}x{stored[1]} PNG)", pf,
                             _bench(src, a.batch_size, a.batches, pf)))
            src = Stage2Source(ds, tok, use_latents=False, cache_items=a.num_items + 1)
            for i in range(a.num_items + 1):
                src.visual(i)  # fill the cache (steady state of a small dataset after one epoch)
            rows.append((f"images {size}px, in-memory cache (warm)", a.prefetch[0],
                         _bench(src, a.batch_size, a.batches, a.prefetch[0])))
            lat = np.random.default_rng(0).normal(size=(a.num_items + 1, size // 8, size // 8, 16))
            (root / "latents").mkdir()
            np.save(root / "latents" / "latents.npy", lat.astype(np.float32))
            src = Stage2Source(SafeDataset(root), tok, use_latents=True)
            for pf in a.prefetch:
                rows.append((f"latents [{size // 8},{size // 8},16] (mmap .npy)", pf,
                             _bench(src, a.batch_size, a.batches, pf)))
    print(f"\nstage-2 loader, batch {a.batch_size}, {a.batches} batches, {os.cpu_count()} CPU cores, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'visuals':<44}{'prefetch':>9}{'examples/s':>12}")
    for name, pf, eps in rows:
        print(f"{name:<44}{pf:>9}{eps:>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
