"""Multi-host: 2 local processes (jax.distributed + gloo collectives) train 2 steps of the toy config (losses equal
the 1-process 8-device run's, rtol 1e-6: cross-process reductions may reorder) and generate PFITB into one shared
folder (the same records and images as one process)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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


def _run_two(cmd, devices_each: int) -> list[tuple[str, str]]:
    """Runs `cmd` as processes 0 and 1 of a 2-process job on 127.0.0.1; returns their (stdout, stderr)."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}",
               "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                      env=env))
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
    return outs


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single = subprocess.run(_cmd(tmp_path / "single"), capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert single.returncode == 0, single.stderr[-3000:]
    outs = _run_two(_cmd(tmp_path / "multi"), devices_each=4)
    assert "over 8 devices (2 processes)" in outs[0][1]
    ref = metrics.read_metrics(str(tmp_path / "single" / "metrics.jsonl"))
    got = metrics.read_metrics(str(tmp_path / "multi" / "metrics.jsonl"))
    assert [r["step"] for r in got] == [1, 2]
    for a, b in zip(got, ref):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(b["loss"]), (a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * abs(b["grad_norm"])
    assert (tmp_path / "multi" / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_two_process_generation_matches_one_process(tmp_path):
    """`generate` on 2 processes x 2 devices (rows dealt round-robin, one shared --out) = 1 process x 4 devices."""
    from generation_support import make_workdir, make_world

    world = make_world(tmp_path / "world")
    make_workdir(world, world / "wd")

    def cmd(out):
        return [sys.executable, "-m", "dualfashion_jax.cli", "generate", "--task", "pfitb", "--checkpoint",
                str(world / "wd"), "--out", str(out), "--steps", "2", "--caption-steps", "2", "--seed", "5",
                "--rows-per-batch", "2", "--num-images", "1", "--no-progress"]

    single = subprocess.run(cmd(tmp_path / "one"), capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert single.returncode == 0, single.stderr[-3000:]
    outs = _run_two(cmd(tmp_path / "two"), devices_each=2)
    n = len(np.load(world / "data" / "splits" / "test.npz")["uids"])
    assert n >= 3 and f"{n} rows" in outs[0][0]
    generated = [int(o.split("rows (")[1].split(" generated")[0]) for o, _ in outs]
    assert sorted(generated) == [n // 2, n - n // 2]  # each process generated its own half of the rows
    from dualfashion_jax.data.records import read_records

    (a, _), (b, _) = read_records(tmp_path / "one"), read_records(tmp_path / "two")
    assert len(a) == len(b) == n
    for ra, rb in zip(a, b):
        assert (ra.uid, ra.oid) == (rb.uid, rb.oid) and len(ra.gen) == len(rb.gen) == 1
        for ga, gb in zip(ra.gen, rb.gen):
            assert ga.caption == gb.caption
            ia = np.asarray(Image.open(tmp_path / "one" / ga.image).convert("RGB"), np.int16)
            ib = np.asarray(Image.open(tmp_path / "two" / gb.image).convert("RGB"), np.int16)
            assert np.abs(ia - ib).max() <= 1  # 1 grey level: reductions may differ across device layouts
