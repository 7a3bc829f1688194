"""The launch/ scripts: --dry-run prints the exact per-host commands; bad flags fail with a clear message."""
import pathlib
import shlex
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"


def _run(script, *args, ok=True):
    p = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def test_gpu_slurm_dry_run_sets_coordinator_and_ranks():
    out = _run("gpu_slurm.sh", "--dry-run", "--nodes", "gpu[01-03],dgx7", "--config", "configs/stage1.py:sd3_medium",
               "--workdir", "/ckpt/run", "--", "--config.optim.lr=1e-5").stdout
    cmds = [shlex.split(l) for l in out.splitlines() if l.startswith("env ")]
    assert len(cmds) == 4
    for rank, cmd in enumerate(cmds):
        env = dict(a.split("=", 1) for a in cmd[1:4])
        assert env == {"JAX_COORDINATOR_ADDRESS": "gpu01:12345", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": str(rank)}
        assert cmd[4:] == ["dualfashion-jax", "train", "--config", "configs/stage1.py:sd3_medium",
                           "--workdir", "/ckpt/run", "--config.optim.lr=1e-5"]
    assert "on dgx7" in out and "xla_gpu_enable_latency_hiding_scheduler" in out


def test_tpu_pod_dry_run_runs_same_command_on_all_workers():
    out = _run("tpu_pod.sh", "--dry-run", "--tpu", "pod1", "--zone", "us-east5-a", "--project", "proj",
               "--config", "configs/stage2.py:sd3_medium", "--workdir", "gs://b/run", "--preset", "v6e", "--setup").stdout
    setup, train = [shlex.split(l) for l in out.strip().splitlines()]
    for cmd in (setup, train):
        assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in cmd
        assert cmd[cmd.index("--project") + 1] == "proj" and cmd[cmd.index("--zone") + 1] == "us-east5-a"
    assert "pip install" in setup[-1]
    remote = train[-1]
    assert "LIBTPU_INIT_ARGS" in remote and "xla_tpu_scoped_vmem_limit_kib" in remote
    assert "dualfashion-jax train --config configs/stage2.py:sd3_medium --workdir gs://b/run" in remote


def test_generate_mode_runs_generate_on_every_host():
    gen = ["--task", "pfitb", "--checkpoint", "/ckpt/run", "--out", "/shared/pfitb"]
    out = _run("gpu_slurm.sh", "--dry-run", "--nodes", "gpu[01-02]", "--generate", "--", *gen).stdout
    cmds = [shlex.split(l) for l in out.splitlines() if l.startswith("env ")]
    assert [c[3] for c in cmds] == ["JAX_PROCESS_ID=0", "JAX_PROCESS_ID=1"]
    assert all(c[4:] == ["dualfashion-jax", "generate", *gen] for c in cmds)
    out = _run("tpu_pod.sh", "--dry-run", "--tpu", "pod1", "--zone", "z", "--generate", "--", *gen).stdout
    remote = shlex.split(out.strip().splitlines()[-1])[-1]
    assert "DUALFASHION_DISTRIBUTED=1" in remote and remote.endswith("dualfashion-jax generate " + " ".join(gen))
    for script, args in (("gpu_slurm.sh", ["--nodes", "n1"]), ("tpu_pod.sh", ["--tpu", "t", "--zone", "z"])):
        p = _run(script, "--dry-run", *args, "--generate", ok=False)
        assert p.returncode == 2 and "--generate needs the generate flags" in p.stderr


def test_single_host_dry_run():
    out = _run("single_host.sh", "--dry-run", "--config", "c.py", "--workdir", "w", "--preset", "h100").stdout
    assert out.strip().splitlines()[-1].strip() == "dualfashion-jax train --config c.py --workdir w"


@pytest.mark.parametrize("script,args,msg", [
    ("gpu_slurm.sh", ["--dry-run", "--config", "c", "--workdir", "w"], "not inside a SLURM allocation"),
    ("tpu_pod.sh", ["--dry-run", "--zone", "z", "--config", "c", "--workdir", "w"], "--tpu is required"),
    ("single_host.sh", ["--dry-run", "--config", "c", "--workdir", "w", "--preset", "tpu9"], "unknown XLA preset 'tpu9'"),
    ("single_host.sh", ["--bogus"], "unknown flag --bogus"),
])
def test_launcher_errors(script, args, msg):
    p = _run(script, *args, ok=False)
    assert p.returncode == 2 and msg in p.stderr


def test_hybrid_mesh_flags_reach_the_train_command():
    """--dcn-data / --slices put config.mesh.dcn_data on every process's train command (before user overrides)."""
    out = _run("gpu_slurm.sh", "--dry-run", "--nodes", "gpu[01-02]", "--dcn-data", "2", "--config", "c.py",
               "--workdir", "/w", "--", "--config.optim.lr=1e-5").stdout
    cmds = [shlex.split(l) for l in out.splitlines() if l.startswith("env ")]
    assert len(cmds) == 2 and all(c[-2:] == ["--config.mesh.dcn_data=2", "--config.optim.lr=1e-5"] for c in cmds)
    out = _run("tpu_pod.sh", "--dry-run", "--tpu", "p", "--zone", "z", "--slices", "4", "--config", "c.py",
               "--workdir", "gs://b/r").stdout
    assert shlex.split(out.strip().splitlines()[-1])[-1].endswith("--workdir gs://b/r --config.mesh.dcn_data=4")
