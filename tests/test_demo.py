"""`dualfashion-jax demo --fast` end to end (data -> 3 stages -> PFITB/GOR -> evaluate).

First as a new user meets the README's command: a new venv, HOME, XDG_CACHE_HOME and DUALFASHION_CACHE pointing at
empty folders and none of the suite's XLA / JAX settings, so nothing an earlier run left behind can hide a missing
install step; stopped by SIGTERM during stage 1, it must exit non-zero saying how to resume, and the rerun must
finish with FID and LPIPS from real weights in the main table. The finished folder of that resumed run is then
checked in-process (one demo per file): the artefacts exist, both training losses fall, a rerun resumes instead of
redoing work, another plan is refused with nothing touched, and a redone input redoes every later phase (the old
outputs moved to stale/).
scripts/test_latest.sh deselects the fresh-machine test, so its in-process part builds the folder with one
in-process run in the newest versions, at the fresh-machine test's XLA settings, loading the programs that test
compiled (`_seed_suite_cache`).
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from dualfashion_jax import demo, demo_state

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fresh_env(tmp: pathlib.Path) -> dict[str, str]:
    # none of the suite's settings either: no fake devices or -O0 (XLA_FLAGS), no compile cache or platform (JAX_*)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST", "DUALFASHION", "XDG", "VIRTUAL_ENV", "XLA_", "JAX_"))}
    for name in ("home", "xdg_cache", "project_cache"):
        (tmp / name).mkdir()
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "xdg_cache"),
               DUALFASHION_CACHE=str(tmp / "project_cache"), VENV=str(tmp / "venv"), PYTHONUNBUFFERED="1")
    return env


def _demo(env, out, log):
    return subprocess.Popen(["bash", "scripts/demo.sh", str(out), "--fast"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory) -> dict:
    """The README's command in a new venv with an empty HOME, stopped by SIGTERM during stage 1, then run again."""
    tmp = tmp_path_factory.mktemp("fresh")
    env, out, log_path = _fresh_env(tmp), tmp / "demo_out", tmp / "demo.log"
    with open(log_path, "w") as log:
        proc = _demo(env, out, log)
        deadline = time.time() + 1500  # the install (fresh venv, empty pip cache) + data + stage-1 compile
        while "demo: stage1" not in log_path.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(3.0)  # inside stage 1 (compiling or stepping)
        os.killpg(proc.pid, signal.SIGTERM)
        stopped_rc = proc.wait(timeout=600)
    stopped = {"rc": stopped_rc, "log": log_path.read_text(), "ledger": json.loads((out / "phases.json").read_text()),
               "stage2_exists": (out / "stage2").exists()}
    with open(log_path, "a") as log:  # the same command again resumes and finishes
        rc = _demo(env, out, log).wait(timeout=1500)
    _seed_suite_cache(out / ".jax_cache")
    return {"tmp": tmp, "out": out, "stopped": stopped, "rc": rc, "log": log_path.read_text()}


def _seed_suite_cache(demo_cache: pathlib.Path) -> None:
    """Copies the run's compiled programs into the suite's compile cache: scripts/test_latest.sh runs the fast demo
    at the same XLA settings (DUALFASHION_TEST_XLA=user) and loads them (entries are keyed by the jax version and
    the program, so a changed program is compiled, never loaded stale)."""
    suite = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not suite or not demo_cache.is_dir():
        return
    dest = pathlib.Path(suite)
    dest.mkdir(parents=True, exist_ok=True)
    for f in demo_cache.iterdir():
        if f.is_file() and not (dest / f.name).exists():
            shutil.copy2(f, dest / f.name)


def test_demo_from_an_empty_home_sigterm_then_resume(fresh_run):
    stopped, out, tmp = fresh_run["stopped"], fresh_run["out"], fresh_run["tmp"]
    assert stopped["rc"] == 143, stopped["log"][-3000:]
    assert "SIGTERM during phase 'stage1'" in stopped["log"] and "Rerun the same command to resume" in stopped["log"]
    assert stopped["ledger"]["stage1"]["id"] is None and "stage2" not in stopped["ledger"]
    assert not stopped["stage2_exists"]
    assert fresh_run["rc"] == 0, fresh_run["log"][-3000:]
    ledger = json.loads((out / "phases.json").read_text())
    assert all(e["id"] for e in ledger.values()) and ledger["stage2"]["built_from"]["stage1"] == ledger["stage1"]["id"]
    rep = json.loads((out / "generations" / "pfitb" / "report.json").read_text())
    assert rep["networks"]["fid"]["weights"] == "real-weight" and rep["networks"]["lpips"]["weights"] == "real-weight"
    assert rep["errors"] == {} and rep["random_weight_metrics"] == []
    main_table = (out / "generations" / "pfitb" / "report.md").read_text().split("## Networks")[0]
    assert "FID↓" in main_table and "LPIPS↓" in main_table and "not available" not in main_table
    assert not any((tmp / "project_cache").iterdir()), "the demo wrote into the project cache"
    assert f"compiled programs are cached in {out / '.jax_cache'}" in fresh_run["log"]  # no user cache: its own
    assert any((out / ".jax_cache").iterdir())
    assert not (tmp / "home" / ".cache" / "dualfashion_jax").exists()  # nothing of ours in HOME either


@pytest.fixture(scope="module")
def run(request, tmp_path_factory) -> pathlib.Path:
    """The finished fast demo: the fresh-machine run's folder when that test is selected (one demo per file),
    else (scripts/test_latest.sh) one in-process run."""
    if any(item.name == "test_demo_from_an_empty_home_sigterm_then_resume" for item in request.session.items):
        fresh = request.getfixturevalue("fresh_run")
        assert fresh["rc"] == 0, fresh["log"][-3000:]
        return fresh["out"]
    out = tmp_path_factory.mktemp("demo")
    demo.run(out, demo.DemoPlan.fast(), log=lambda s: None)
    return out


def test_artefacts_and_table(run):
    out = run
    for task, n_images in (("pfitb", 4), ("gor", 16)):
        res = out / "generations" / task
        assert (res / "records.json").is_file() and (res / "index.html").is_file()
        rep = json.loads((res / "report.json").read_text())
        assert rep["settings"]["num_generated"] == n_images
        oracle = rep["metrics"]["oracle"]
        for key in ("oracle_category_acc", "oracle_pref_colour_match", "oracle_pref_colour_chance"):
            assert 0.0 <= oracle[key] <= 1.0, (task, key, oracle[key])
    for s in (1, 2, 3):
        wd = out / f"stage{s}"
        assert (wd / "loss_curve.png").is_file() and (wd / "metrics.jsonl").is_file()
        assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(wd) for f in fs), wd
    readme = (out / "README.md").read_text()
    assert "Personalization (oracle)" in readme and "| PFITB |" in readme and "stage1/" in readme
    assert "FID / random real" in readme and "render error (GT)" in readme  # fidelity beside personalization
    pfitb = json.loads((out / "generations" / "pfitb" / "report.json").read_text())["metrics"]
    assert pfitb["fid_ratio"]["fid_random_real"] > 0 and pfitb["oracle_fidelity"]["oracle_render_err"] >= 0
    assert "<!-- evaluation:begin -->" in (out / "generations" / "pfitb" / "index.html").read_text()
    assert json.loads((out / "timings.json").read_text())["total"] > 0
    cfg = json.loads((out / "stage2" / "config.json").read_text())
    assert cfg["t5"]["preset"] == "small_demo" and cfg["vae"]["checkpoint"] == str(out / "vae")
    assert cfg["t5"]["checkpoint"] == str(out / "t5")  # the pretrained stand-in T5, loaded as a converted T5
    t5_meta = json.loads((out / "t5" / "config.json").read_text())
    assert t5_meta["kind"] == "t5" and t5_meta["pretrain"]["steps"] == 30 and not (out / "stage2" / "frozen").exists()
    assert "Captions (oracle)" in readme and "caption_oracle" in json.loads(
        (out / "generations" / "pfitb" / "report.json").read_text())["metrics"]
    vae_cfg = json.loads((out / "vae" / "config.json").read_text())["config"]
    plan = demo.DemoPlan.fast()
    assert vae_cfg["architecture"] == "pixel_s2d"  # + the fitted decoder head, sized by the plan
    assert (vae_cfg["refiner_width"], vae_cfg["refiner_depth"]) == (dict(plan.vae_refiner)["width"],
                                                                    dict(plan.vae_refiner)["depth"]) != (0, 0)  # the latents the MMDiT was trained on: image size / VAE factor, the VAE's channels
    h = plan.image_size // plan.vae_factor
    assert np.load(out / "data" / "latents" / "latents.npy", mmap_mode="r").shape[1:] == (h, h, plan.vae_channels)


def test_both_losses_fall(run):
    out = run
    rows = [json.loads(line) for line in (out / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == demo.DemoPlan.fast().steps[0]
    k = len(rows) // 4
    for key in ("loss_img", "loss_txt"):
        first, last = np.mean([r[key] for r in rows[:k]]), np.mean([r[key] for r in rows[-k:]])
        assert last < 0.9 * first, f"stage-1 {key}: first {k} steps mean {first:.4f}, last {k} {last:.4f}"


def test_rerun_resumes(run):
    out = run
    ckpt = out / "stage2" / "checkpoints" / str(demo.DemoPlan.fast().steps[1])
    mtime = ckpt.stat().st_mtime
    (out / "generations" / "gor" / "report.json").unlink()
    result = demo.run(out, demo.DemoPlan.fast(), log=lambda s: None)  # finished phases are skipped
    t = result["timings"]
    assert ckpt.stat().st_mtime == mtime  # not retrained
    assert json.loads((out / "timings.json").read_text())["stage2"] > 0  # the file keeps the building run's time
    assert max(t[k] for k in ("data", "vae", "tokenizer", "t5", "stage1", "stage2", "stage3")) < 5.0, t
    assert json.loads((out / "generations" / "gor" / "report.json").read_text())["settings"]["num_generated"] == 16


def test_cli_rejects_unknown_flag(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--out", "x", "--steps", "3"])
    assert "unrecognized arguments" in capsys.readouterr().err


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_other_plan_is_refused_and_nothing_changes(run):
    out = run
    before = _digest(out)
    other = dataclasses.replace(demo.DemoPlan.fast(), num_users=160, steps=(500, 2500, 20))
    with pytest.raises(demo_state.DemoPlanMismatch, match=r"num_users: 16 -> 160.*steps: \[24, 8, 4\] -> \[500"):
        demo.run(out, other, log=lambda s: None)
    assert _digest(out) == before


def test_random_t5_folder_is_another_plan(run):
    out = run
    with pytest.raises(demo_state.DemoPlanMismatch, match=r"t5: 'pretrained' -> '<absent>'"):
        demo.run(out, dataclasses.replace(demo.DemoPlan.fast(), t5="random"), log=lambda s: None)


def test_redone_input_redoes_every_later_phase(run):
    """GOR generated from a stage 3 that was trained again since: GOR's generation is redone (its old output moved
    to stale/, not deleted), which gives it a new id and so redoes its evaluation; PFITB's phases are kept."""
    out = run
    ledger = json.loads((out / "phases.json").read_text())
    ledger["generate_gor"]["built_from"] = {"stage3": "an-older-stage-3"}
    (out / "phases.json").write_text(json.dumps(ledger))
    old_records = (out / "generations" / "gor" / "records.json").read_bytes()
    messages = []
    result = demo.run(out, demo.DemoPlan.fast(), log=messages.append)
    t = result["timings"]
    assert t["stage3"] == t["generate_pfitb"] == t["evaluate_pfitb"] == 0.0, t
    assert t["generate_gor"] > 0 and t["evaluate_gor"] > 0, t
    stale = sorted((out / "stale").iterdir())
    assert [p.name.split(".")[0] for p in stale] == ["generate_gor"], stale
    assert (stale[0] / "generations" / "gor" / "records.json").read_bytes() == old_records  # moved, not deleted
    assert any("generate_gor: generations/gor were built from other inputs" in m for m in messages), messages
    new = json.loads((out / "phases.json").read_text())
    assert new["generate_gor"]["built_from"] == {"stage3": ledger["stage3"]["id"]}
    assert new["generate_gor"]["id"] != ledger["generate_gor"]["id"]
    assert new["evaluate_gor"]["built_from"] == {"generate_gor": new["generate_gor"]["id"]}
    assert new["generate_pfitb"] == ledger["generate_pfitb"] and new["evaluate_pfitb"] == ledger["evaluate_pfitb"]
