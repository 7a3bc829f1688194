"""The README's demo command as a new user meets it: a new venv, and HOME, XDG_CACHE_HOME and DUALFASHION_CACHE
pointing at empty folders, so nothing an earlier run left behind can hide a missing install step. The demo (--fast)
is stopped by SIGTERM during stage 1, must exit non-zero saying how to resume, and the rerun must finish with FID and
LPIPS from real weights in the main table."""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _fresh_env(tmp: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DUALFASHION", "XDG", "VIRTUAL_ENV"))}
    for name in ("home", "xdg_cache", "project_cache"):
        (tmp / name).mkdir()
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "xdg_cache"),
               DUALFASHION_CACHE=str(tmp / "project_cache"), VENV=str(tmp / "venv"), PYTHONUNBUFFERED="1")
    return env


def _demo(env, out, log):
    return subprocess.Popen(["bash", "scripts/demo.sh", str(out), "--fast"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_demo_from_an_empty_home_sigterm_then_resume(tmp_path):
    env, out, log_path = _fresh_env(tmp_path), tmp_path / "demo_out", tmp_path / "demo.log"
    with open(log_path, "w") as log:
        proc = _demo(env, out, log)
        deadline = time.time() + 1500  # the install (fresh venv, empty pip cache) + data + stage-1 compile
        while "demo: stage1" not in log_path.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(3.0)  # inside stage 1 (compiling or stepping)
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=600)
    text = log_path.read_text()
    assert rc == 143, text[-3000:]
    assert "SIGTERM during phase 'stage1'" in text and "Rerun the same command to resume" in text
    ledger = json.loads((out / "phases.json").read_text())
    assert ledger["stage1"]["id"] is None and "stage2" not in ledger and not (out / "stage2").exists()

    with open(log_path, "a") as log:  # the same command again resumes and finishes
        assert _demo(env, out, log).wait(timeout=1500) == 0, log_path.read_text()[-3000:]
    ledger = json.loads((out / "phases.json").read_text())
    assert all(e["id"] for e in ledger.values()) and ledger["stage2"]["built_from"]["stage1"] == ledger["stage1"]["id"]
    rep = json.loads((out / "generations" / "pfitb" / "report.json").read_text())
    assert rep["networks"]["fid"]["weights"] == "real-weight" and rep["networks"]["lpips"]["weights"] == "real-weight"
    assert rep["errors"] == {} and rep["random_weight_metrics"] == []
    main_table = (out / "generations" / "pfitb" / "report.md").read_text().split("## Networks")[0]
    assert "FID↓" in main_table and "LPIPS↓" in main_table and "not available" not in main_table
    assert not any((tmp_path / "project_cache").iterdir()), "the demo wrote into the project cache"
    assert not (tmp_path / "home" / ".cache" / "dualfashion_jax").exists()  # nothing of ours in HOME either
