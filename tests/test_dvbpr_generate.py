"""DVBPR through `generate` and `evaluate` (issue #17): --dvbpr-eta for PFITB (eta 0 bit-identical to the plain
sampler), --task design end to end (records, resume, score rises), settings round trips, evaluate --dvbpr."""
import json

import numpy as np
import pytest

from generation_support import make_workdir, make_world

from dualfashion_jax.core import config as config_lib
from dualfashion_jax.evaluators import cli as eval_cli
from dualfashion_jax.generation import cli
from dualfashion_jax.generation.design import DesignSettings
from dualfashion_jax.generation.settings import GenSettings
from dualfashion_jax.samplers.flow_euler import GuidanceConfig
from dualfashion_jax.samplers.score_guidance import ScoreGuidanceConfig
from dualfashion_jax.training import train

FAST = ["--steps", "2", "--caption-steps", "2", "--num-images", "1", "--max-rows", "2", "--rows-per-batch", "2",
        "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_world(tmp_path_factory.mktemp("dvgen"))
    make_workdir(root, root / "wd")
    c = config_lib.load(f"configs/dvbpr.py:tiny,data={root / 'data'},steps=2,batch=8")
    c.progress_bar, c.tensorboard, c.checkpoint.async_save = False, False, False
    train.run(c, str(root / "dvbpr"))
    return root


def _gen(world, out, *extra, task="pfitb"):
    return cli.main(["--task", task, "--checkpoint", str(world / "wd"), "--out", str(out), *FAST, *extra])


def _pngs(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted((out / "rows").rglob("*.png"))}


def test_settings_round_trip_and_old_files():
    s = GenSettings(score=ScoreGuidanceConfig(eta=0.3, interval=(0.1, 0.9)))
    blob = json.loads(json.dumps(s.to_json()))
    assert GenSettings.from_json(blob) == s and blob["score"] == {"eta": 0.3, "normalize": True,
                                                                   "interval": [0.1, 0.9]}
    old = {k: v for k, v in GenSettings().to_json().items() if k != "score"}  # a settings.json from before #17
    assert GenSettings.from_json(old).score.eta == 0.0
    d = DesignSettings(strength=0.4, score=ScoreGuidanceConfig(eta=2.0), guidance=GuidanceConfig(mode="cfg"), seed=5)
    assert DesignSettings.from_json(json.loads(json.dumps(d.to_json()))) == d


def test_eta_flags_and_errors(world, tmp_path, capsys):
    p = cli._parser()
    base = ["--task", "pfitb", "--checkpoint", "C", "--out", "O"]
    assert cli.settings_from_args(p.parse_args(base)).score.eta == 0.0
    assert cli.settings_from_args(p.parse_args(base + ["--dvbpr-eta", "0.5"])).score.eta == 0.5
    with pytest.raises(ValueError, match="--dvbpr-eta -1.0: must be >= 0"):
        cli.settings_from_args(p.parse_args(base + ["--dvbpr-eta", "-1"]))
    d = cli.design_settings_from_args(p.parse_args(["--task", "design", "--checkpoint", "C", "--out", "O",
                                                    "--strength", "0.3", "--steps", "5"]))
    assert (d.strength, d.score.eta, d.guidance.mode, d.guidance.cfg_scale, d.guidance.num_steps) == \
        (0.3, 1.0, "cfg", 4.0, 5)
    with pytest.raises(ValueError, match="no outfit context"):
        cli.design_settings_from_args(p.parse_args(["--task", "design", "--checkpoint", "C", "--out", "O",
                                                    "--guidance", "four_way"]))
    assert _gen(world, tmp_path / "a", "--dvbpr-eta", "0.5") == 1
    assert "--dvbpr-eta 0.5 needs --dvbpr WORKDIR" in capsys.readouterr().err
    assert _gen(world, tmp_path / "b", task="design") == 1
    assert "--task design needs --dvbpr WORKDIR" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_pfitb_eta_zero_is_bit_identical_and_eta_changes_images(world, tmp_path):
    assert _gen(world, tmp_path / "plain") == 0
    assert _gen(world, tmp_path / "eta0", "--dvbpr", str(world / "dvbpr"), "--dvbpr-eta", "0") == 0
    assert _gen(world, tmp_path / "eta", "--dvbpr", str(world / "dvbpr"), "--dvbpr-eta", "3") == 0
    plain, eta0, eta = (_pngs(tmp_path / n) for n in ("plain", "eta0", "eta"))
    assert plain == eta0 and len(plain) > 0
    gen = [k for k in plain if k.name.startswith("gen_")]
    assert gen and all(plain[k] != eta[k] for k in gen)
    run = json.loads((tmp_path / "eta" / "run.json").read_text())
    assert run["sampler"]["score"]["eta"] == 3.0 and run["dvbpr"]["source"] == str(world / "dvbpr")
    assert "dvbpr" not in json.loads((tmp_path / "eta0" / "run.json").read_text())
    # resuming with another eta is refused (one results dir, one setting)
    assert _gen(world, tmp_path / "eta", "--dvbpr", str(world / "dvbpr"), "--dvbpr-eta", "1") == 1


@pytest.mark.slow
def test_design_end_to_end_and_resume(world, tmp_path, capsys):
    out = tmp_path / "design"
    args = ["--dvbpr", str(world / "dvbpr"), "--dvbpr-eta", "3", "--strength", "0.5", "--scales", "2"]
    assert _gen(world, out, *args, task="design") == 0
    assert "2 rows (2 generated now" in capsys.readouterr().out
    blob = json.loads((out / "design.json").read_text())
    assert blob["task"] == "design" and [r["index"] for r in blob["rows"]] == [0, 1]
    for r in blob["rows"]:
        assert (out / r["source_image"]).is_file() and (out / r["edited_image"]).is_file()
        assert r["score_after"] > r["score_before"], r  # eta 3 along the score gradient
    settings = json.loads((out / "settings.json").read_text())
    assert settings["task"] == "design" and settings["sampler"]["score"]["eta"] == 3.0
    assert "score before -> after" in (out / "index.html").read_text()
    before = _pngs(out)
    assert _gen(world, out, *args, task="design") == 0
    assert "0 generated now, 2 already done" in capsys.readouterr().out and _pngs(out) == before
    assert _gen(world, out, *args[:-1], "3", task="design") == 1  # other settings: refused
    assert "different settings" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_dvbpr_flag(world, tmp_path):
    res = tmp_path / "res"
    assert _gen(world, res) == 0
    common = ["--results", str(res), "--data", str(world / "data"), "--metrics", "dvbpr_ranking", "--no-progress"]
    assert eval_cli.main(common + ["--dvbpr", str(world / "dvbpr"), "--out", str(tmp_path / "r.json")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    m = rep["metrics"]["dvbpr_ranking"]
    assert m["dvbpr_step"] == 2.0 and 0.0 <= m["dvbpr/auc"] <= 1.0 and "popularity/auc" in m
    assert rep["networks"]["dvbpr"]["weights"] == "trained-here"
    assert eval_cli.main(common + ["--out", str(tmp_path / "n.json")]) == 0  # without it: listed as not available
    assert "needs a trained DVBPR workdir" in json.loads((tmp_path / "n.json").read_text())["errors"]["dvbpr_ranking"]

