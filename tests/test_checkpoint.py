"""Checkpoints through the real `dualfashion-jax train` process:
6 uninterrupted steps == 3 steps + SIGKILL + resume, bitwise on CPU (losses, params, opt state, EMA, data
iterator), on the toy config AND on the stage-3 demo config (real DualMMDiT, frozen T5, grain pipeline);
SIGTERM saves and exits cleanly; a corrupted/partial latest checkpoint is skipped with a warning."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.sharding import mesh as mesh_lib, rules
from dualfashion_jax.training import checkpoint as ckpt_lib, metrics, tasks, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "toy_cpu.py")
TIMEOUT = 240


def _cmd(workdir, *extra, config=CONFIG + ":steps=6"):
    return [sys.executable, "-m", "dualfashion_jax.cli", "train", "--config", config,
            "--workdir", str(workdir), "--config.progress_bar=False", "--config.tensorboard=False",
            "--config.log_every=1", *extra]


def _run(workdir, *extra, config=CONFIG + ":steps=6"):
    p = subprocess.run(_cmd(workdir, *extra, config=config), capture_output=True, text=True, timeout=TIMEOUT,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _wait_for(cond, proc, what, timeout=TIMEOUT):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"train process exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _last_step(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    rows = [line for line in open(path).read().splitlines() if line.strip()]
    return len(rows)


def _restore(workdir, step=None, config=CONFIG + ":steps=6"):
    """(step, host state, data state) of a workdir's checkpoint, restored onto one device (another sharding)."""
    config = config_lib.load(config)
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    spec = train.build_state_spec(config, tasks.build(config), mesh, rules.get("fsdp"))
    ck = ckpt_lib.Checkpointer(workdir, keep=3)
    try:
        out = ck.restore(spec.abstract, spec.shardings, step=step)
    finally:
        ck.close()
    return None if out is None else (out[0], jax.tree.map(np.asarray, ckpt_lib.to_savable(out[1])), out[2])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = tmp_path_factory.mktemp("ref")
    _run(wd)
    return wd


def _assert_same_state(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)  # bitwise


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    """A tiny synthetic dataset + test tokenizer, the stage-3 demo config on it, and its 6-step reference run."""
    from dualfashion_jax.data.format import SafeDataset
    from dualfashion_jax.data.synthetic.make import make_dataset
    from dualfashion_jax.text import tokenizer as tk

    root = tmp_path_factory.mktemp("s3")
    ds = SafeDataset(make_dataset(root / "data", seed=0, image_size=32, num_users=16, verbose=False))
    texts = [json.dumps(v["elements"]) for v in ds.item_info.values()] + list(ds.categories.values())
    tk.build_test_tokenizer(texts, root / "tokenizer", vocab_size=200, max_length=32,
                            user_symbols=tk.caption_scaffold())
    config = (os.path.join(ROOT, "configs", "stage3.py") +
              f":tiny,data={root / 'data'},tokenizer={root / 'tokenizer'},steps=6,init_from=")
    _run(root / "ref", "--config.checkpoint.every_steps=3", config=config)
    return config, root / "ref"


@pytest.fixture(params=["toy", "stage3_demo"])
def kill_setup(request, reference):
    if request.param == "toy":
        return CONFIG + ":steps=6", reference
    return request.getfixturevalue("stage3")


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(kill_setup, tmp_path):
    config, reference = kill_setup
    proc = subprocess.Popen(_cmd(tmp_path, "--config.debug_step_delay_s=1.0", "--config.checkpoint.every_steps=3",
                                 config=config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _wait_for(lambda: os.path.isdir(tmp_path / "checkpoints" / "3") and _last_step(tmp_path) >= 3, proc,
              "checkpoint 3")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "checkpoints" / "6").exists(), "killed too late: the run had already finished"
    resumed = _run(tmp_path, "--config.checkpoint.every_steps=3", config=config)
    assert "resumed from" in resumed.stderr and "/checkpoints/3" in resumed.stderr
    ref_rows = {r["step"]: r for r in metrics.read_metrics(str(reference / "metrics.jsonl"))}
    new_rows = {r["step"]: r for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl"))}
    assert sorted(new_rows) == [1, 2, 3, 4, 5, 6]
    for s in range(1, 7):
        assert new_rows[s]["loss"] == ref_rows[s]["loss"], (s, new_rows[s]["loss"], ref_rows[s]["loss"])
    s_ref, st_ref, data_ref = _restore(str(reference), config=config)
    s_new, st_new, data_new = _restore(str(tmp_path), config=config)
    assert s_ref == s_new == 6 and data_ref == data_new and data_ref
    _assert_same_state(st_ref, st_new)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, "--config.total_steps=500", "--config.checkpoint.every_steps=1000",
                                 "--config.debug_step_delay_s=0.5"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _wait_for(lambda: _last_step(tmp_path) >= 2, proc, "step 2")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    assert "(sigterm)" in out
    last = _last_step(tmp_path)
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [last]
    step, state, data = _restore(str(tmp_path))
    assert step == last and int(state["step"]) == last and data == {"step": last}


def test_corrupted_latest_checkpoint_falls_back_with_warning(reference, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(reference, wd)
    state_dir = wd / "checkpoints" / "6" / "state"
    for root, _, files in os.walk(state_dir):  # truncate every data file of the latest step
        for f in files:
            if not f.startswith("_"):
                open(os.path.join(root, f), "wb").close()
    with pytest.warns(ckpt_lib.CorruptCheckpointWarning, match="checkpoints/6: checkpoint is corrupted"):
        step, state, data = _restore(str(wd))
    assert step == 3 and data == {"step": 3} and int(state["step"]) == 3
    assert not (wd / "checkpoints" / "6").exists() and len(os.listdir(wd / "checkpoints_corrupt")) == 1
    _, ref3, _ = _restore(str(reference), step=3)
    _assert_same_state(ref3, state)


def test_partial_checkpoint_missing_item_is_skipped(reference, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(reference, wd)
    shutil.rmtree(wd / "checkpoints" / "6" / "state")
    with pytest.warns(ckpt_lib.CorruptCheckpointWarning):
        step, _, _ = _restore(str(wd))
    assert step == 3
    with pytest.raises(ValueError, match="could not be restored"):
        _restore(str(reference), step=4)
