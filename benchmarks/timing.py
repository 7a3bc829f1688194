"""Timing helper shared by the side-by-side benchmark scripts (run as `python benchmarks/<name>.py`)."""
import os
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


def interleaved_rounds(fns: dict, rounds: int, *args) -> tuple[dict[str, list[float]], str]:
    """Each side `fns[name](*args)` once per round, in turn (every side sees the same load); returns the seconds of
    each call per side and the 1-minute load average's range over the rounds ("1.7-2.0")."""
    times, loads = {k: [] for k in fns}, []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(*args)
            times[k].append(time.perf_counter() - t0)
    loads.append(os.getloadavg()[0])
    return times, f"{min(loads):.1f}-{max(loads):.1f}"


def spread(times: dict[str, list[float]], side: str, base: str = "before", digits: int = 1) -> tuple[float, str, str]:
    """(median seconds, "median (min-max)", speed-up of `side` over `base` or "-") for one side's round times."""
    t = times[side]
    med = float(np.median(t))
    up = f"{np.median(times[base]) / med:.2f}x" if base in times else "-"
    return med, f"{med:.{digits}f} ({min(t):.{digits}f}-{max(t):.{digits}f})", up
