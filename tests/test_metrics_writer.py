"""training/metrics.py MetricWriter: metrics.jsonl + TensorBoard scalars, without importing torch."""
import json
import pathlib
import struct
import subprocess
import sys

CODE = """
import sys
from dualfashion_jax.training import metrics
w = metrics.MetricWriter(sys.argv[1])
w.write(1, {"loss": 0.5}); w.write(2, {"loss": 0.25})
w.close()
print("torch imported:", "torch" in sys.modules)
import torch  # still importable afterwards
print("torch version:", torch.__version__.split("+")[0])
"""


def _scalars(event_file: pathlib.Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of a TFRecord event file (8-byte length, 4-byte CRC, payload, 4-byte CRC per record)."""
    from tensorboardX.proto import event_pb2

    data, out, pos = event_file.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        out += [(ev.step, v.tag, v.simple_value) for v in ev.summary.value]
    return out


def test_scalars_reach_tensorboard_without_importing_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CODE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch imported: False" in proc.stdout and "torch version: 2.13.0" in proc.stdout, proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    assert _scalars(event_file) == [(1, "train/loss", 0.5), (2, "train/loss", 0.25)]
