"""Training metrics sinks: JSON lines (always), TensorBoard via tensorboardX, and a final loss-curve PNG.

Only process 0 writes; other processes get a no-op writer, so call sites need no `if`.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Mapping

import numpy as np

log = logging.getLogger(__name__)


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it is installed (2-4 s
    per process) only to accept torch tensors, and only Python floats are written here."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError inside tensorboardX, which it handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]  # a later `import torch` elsewhere loads it as usual
    return SummaryWriter


class MetricWriter:
    """Appends `{"step": s, **metrics}` to `<workdir>/metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
            if tensorboard:
                try:
                    self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))
                except ImportError:
                    log.warning("tensorboardX not installed: TensorBoard logging off (metrics.jsonl still written)")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(f"train/{k}", v, int(step))

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl; for resumed runs the last row per step wins (steps may repeat)."""
    rows: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def smooth(values, span: float = 0.1) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard-style), time constant `span` of the series length
    (at least 1 point): the trend of a noisy per-step loss. [N] -> [N]."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1:
        raise ValueError(f"smooth expects a 1-D series, got shape {v.shape}")
    beta = 1.0 - 1.0 / max(1.0, span * len(v))
    out, acc, norm = np.empty_like(v), 0.0, 0.0
    for i, x in enumerate(v):
        acc, norm = beta * acc + (1 - beta) * x, beta * norm + (1 - beta)
        out[i] = acc / norm
    return out


def plot_loss_curve(metrics_path: str, out_png: str, keys: tuple[str, ...] = ("loss",)) -> str | None:
    """Writes a loss-vs-step PNG (matplotlib, Agg backend): each series raw (faint) and smoothed (`smooth`);
    returns its path, or None without data."""
    if not os.path.exists(metrics_path):
        return None
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    extra = sorted(k for k in rows[-1] if k.startswith("loss_"))
    for k in tuple(keys) + tuple(extra):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        if pts:
            steps, vals = zip(*pts)
            line, = ax.plot(steps, smooth(vals), label=f"{k} (smoothed)", linewidth=1.8)
            ax.plot(steps, vals, color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if all(r.get("loss", 1) > 0 for r in rows) else "linear")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
