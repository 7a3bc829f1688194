"""configs/ as the one source of truth: every resolved field the demo trains with, its plan.json and generate flags,
the old per-size config files and `generate`'s settings are what they were before the configs became one file per
stage (tests/configs_golden.json, from main 3755dfc); config files load by path or by name without sys.path edits."""
import dataclasses
import json
import os
import pathlib
import sys

import pytest

from dualfashion_jax import demo, demo_plan
from dualfashion_jax.core import config as config_lib
from dualfashion_jax.generation import cli as gen_cli
from dualfashion_jax.training import main as train_main

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = json.loads((pathlib.Path(__file__).parent / "configs_golden.json").read_text())
OUT = pathlib.Path("/DEMO_OUT")  # the demo folder the golden configs were resolved with
PLANS = ("demo", "demo_quality", "demo_fast")


def _flat(c, prefix=""):
    """Every leaf of a ConfigDict as {'a.b': [type name, value]} (empty blocks as '{}')."""
    out = {}
    for k, v in sorted(c.items()):
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}.") or {prefix + k: "{}"})
        else:
            out[prefix + k] = [type(v).__name__, v]
    return json.loads(json.dumps(out))


def _diff(old: dict, new: dict) -> dict:
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


@pytest.mark.parametrize("size", PLANS)
def test_demo_trains_with_the_same_configs(size):
    """`demo` (default), `demo --quality` and `--fast`: every field of every stage config, and its config.json."""
    plan = demo.DemoPlan.from_configs(size)
    for stage in (1, 2, 3):
        c = demo.stage_config(OUT, plan, stage)
        key = f"{size}/stage{stage}"
        assert _diff(GOLDEN["demo_stage_configs"][key], _flat(c)) == {}, key
        assert c.to_json_best_effort(indent=1) == GOLDEN["demo_config_json"][key]  # workdir config.json, bytewise
        # the same config from the command line: `train --config configs/stage<n>.py:<size>,out=OUT`
        cli, _ = train_main.parse(["--config", f"configs/stage{stage}.py:{size},out={OUT}", "--workdir", "x"])
        assert _flat(cli) == _flat(c)


@pytest.mark.parametrize("size", PLANS)
def test_demo_plan_and_generate_flags_unchanged(size, monkeypatch):
    plan = demo.DemoPlan.from_configs(size)
    record = json.loads(json.dumps(plan.record()))
    assert record == GOLDEN["plans"][size] and list(record) == list(GOLDEN["plans"][size])  # OUT/plan.json
    seen = []
    monkeypatch.setattr(demo, "_cli", lambda argv, what: seen.append(argv))
    for task in ("pfitb", "gor"):
        demo.generate(OUT, plan, task)
    assert seen == GOLDEN["demo_generate_argv"][size]
    assert {"default": demo.DemoPlan.default(), "quality": demo.DemoPlan.quality(),
            "fast": demo.DemoPlan.fast()}[{v: k for k, v in demo_plan.SIZES.items()}[size]] == plan


def test_old_config_files_are_sizes_now():
    """configs/stage<n>_demo.py -> stage<n>.py:tiny, stage<n>_sd3_medium.py -> stage<n>.py:sd3_medium, toy_cpu.py."""
    for spec, old in GOLDEN["files"].items():
        assert _diff(old["fields"], _flat(config_lib.load(str(ROOT / "configs" / spec)))) == {}, (spec, old["old_file"])


def test_generate_settings_from_config_and_flags_unchanged():
    for name, case in GOLDEN["generate"].items():
        if name.startswith("bad/"):
            args = gen_cli._parser().parse_args(["--task", "pfitb", "--checkpoint", "C", "--out", "O"] +
                                                name[4:].split(" "))
            with pytest.raises(ValueError) as e:
                gen_cli.settings_from_args(args)
            assert str(e.value) == case
            continue
        args = gen_cli._parser().parse_args(case["argv"])
        assert json.loads(json.dumps(gen_cli.settings_from_args(args).to_json())) == case["settings"], name
        assert {n: getattr(args, n) for n in case["run"]} == case["run"], name


def test_generate_config_file_then_flags(tmp_path):
    cfg = tmp_path / "gen.py"
    cfg.write_text((ROOT / "configs" / "generate.py").read_text().replace("c.steps = 28", "c.steps = 9"))
    base = ["--task", "gor", "--checkpoint", "C", "--out", "O", "--config", f"{cfg}:gor"]
    s = gen_cli.settings_from_args(gen_cli._parser().parse_args(base))
    assert s.guidance.num_steps == 9 and s.num_images == 5
    s = gen_cli.settings_from_args(gen_cli._parser().parse_args(base + ["--steps", "3", "--num-images", "1"]))
    assert s.guidance.num_steps == 3 and s.num_images == 1


def test_configs_load_by_path_or_name_without_sys_path_edits(tmp_path, monkeypatch):
    path_before = list(sys.path)
    monkeypatch.chdir(tmp_path)  # not the checkout: `stage2.py:tiny` is the shipped file of that name
    a = config_lib.load("stage2.py:tiny,steps=3")
    b = config_lib.load(str(ROOT / "configs" / "stage2.py") + ":tiny,steps=3")
    assert a.to_dict() == b.to_dict() and a.total_steps == 3 and a.init_from == "demo_out/stage1"
    c, _ = train_main.parse(["--config", "configs/stage2.py:tiny", "--workdir", "w"])  # a missing path: by name
    assert c.stage == "stage2"
    assert sys.path == path_before and not any(m == "common" for m in sys.modules)
    assert config_lib.configs_dir() == ROOT / "configs"
    with pytest.raises(ValueError, match="a size must come first, one of .*'demo'"):
        config_lib.load("stage1.py")
    with pytest.raises(ValueError, match="config arg 'nope' unknown"):
        config_lib.load("stage1.py:sd3_medium,nope=1")


def test_train_flags_and_override_errors_name_the_field():
    argv = ["--config", "configs/stage3.py:tiny", "--workdir", "w"]
    c, fv = train_main.parse(argv + ["--allow-config-change", "--config.optim.ema_decay=0.99", "--num_processes=2",
                                     "--config.total_steps", "7"])
    assert fv["allow-config-change"].value and fv.num_processes == 2 and fv.workdir == "w"
    assert c.optim.ema_decay == 0.99 and c.total_steps == 7 and c.is_locked
    assert train_main.parse(argv)[0].optim.ema_decay is None  # stage 3 keeps no EMA
    for bad, msg in [(["--config.optim.nope=1"], r"--config\.optim\.nope: no field 'nope' in config\.optim"),
                     (["--config.loss.text_dropout=x"], r"--config\.loss\.text_dropout: expected float"),
                     (["--config.model.dtype.x=1"], r"--config\.model\.dtype\.x: no field 'x'"),
                     (["stray"], "unrecognized argument 'stray'")]:
        with pytest.raises(ValueError, match=msg):
            train_main.parse(argv + bad)
    with pytest.raises(ValueError, match="--workdir is required"):
        train_main.parse(argv[:2])


def test_demo_plan_is_a_view_of_the_configs():
    plan = demo.DemoPlan.quality()
    s2 = config_lib.load("stage2.py:demo_quality")
    assert plan.steps[1] == s2.total_steps == 2500 and plan.preference_dropout == s2.loss.preference_dropout
    latent = ("in_channels", "out_channels")
    skip = ("joint_attention_dim", "scan_layers") + latent  # scan_layers: speed only, per stage (not in plan.json)
    assert dict(plan.model) == {k: v for k, v in s2.model.overrides.items() if k not in skip}
    assert [s2.model.overrides[k] for k in latent] == [plan.vae_channels] * 2  # the MMDiT takes the VAE's latents
    assert dataclasses.replace(plan, size="x").record() == plan.record()  # plan.json does not hold the size name
    # folders made before the field existed (16 channels) keep their plan.json
    assert "vae_channels" not in dataclasses.replace(plan, vae_channels=16).record()
    assert os.path.basename(str(config_lib.resolve("demo.py:demo_fast")[0])) == "demo.py"


def test_demo_plan_rejects_latent_channels_the_model_does_not_take(monkeypatch):
    real = config_lib.load

    def load(spec):
        c = real(spec)
        if spec.startswith("demo.py"):
            c.vae.latent_channels = 32
        return c

    monkeypatch.setattr(demo.config_lib, "load", load)
    with pytest.raises(ValueError, match=r"stage\{1,2,3\}.py:demo: model.overrides in_channels / out_channels must "
                                         r"equal configs/demo.py:demo vae.latent_channels \(32\)"):
        demo.DemoPlan.from_configs("demo")
