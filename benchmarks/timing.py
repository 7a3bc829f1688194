"""Timing helper shared by the side-by-side benchmark scripts (run as `python benchmarks/<name>.py`)."""
import time

import numpy as np


def median_seconds(fn, iters: int) -> float:
    """Seconds per call (median of `iters`) after one warm-up call (jit compile / TorchScript profiling)."""
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
