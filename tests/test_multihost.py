"""Multi-host: 2 local processes x 4 CPU devices (jax.distributed + gloo collectives) train 2 steps of the toy
config; their losses equal the 1-process 8-device run's (rtol 1e-6: cross-process reductions may reorder)."""
import os
import socket
import subprocess
import sys

import pytest

from dualfashion_jax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "toy_cpu.py")
ARGS = ["--config.progress_bar=False", "--config.tensorboard=False", "--config.checkpoint.every_steps=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(workdir):
    return [sys.executable, "-m", "dualfashion_jax.cli", "train", "--config", CONFIG + ":steps=2",
            "--workdir", str(workdir), *ARGS]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single = subprocess.run(_cmd(tmp_path / "single"), capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen(_cmd(tmp_path / "multi"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=ROOT, env=env))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "over 8 devices (2 processes)" in outs[0][1]
    ref = metrics.read_metrics(str(tmp_path / "single" / "metrics.jsonl"))
    got = metrics.read_metrics(str(tmp_path / "multi" / "metrics.jsonl"))
    assert [r["step"] for r in got] == [1, 2]
    for a, b in zip(got, ref):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(b["loss"]), (a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * abs(b["grad_norm"])
    assert (tmp_path / "multi" / "checkpoints" / "2").is_dir()
