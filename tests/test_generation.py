"""PFITB / GOR generation end to end on the synthetic dataset with a tiny model loaded from a training workdir:
records the evaluators read, captions JSON, grids + HTML, resumability, determinism, 1- vs 8-device sharding,
GOR's dependence on earlier items, the CLI and its errors."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from generation_support import make_workdir, make_world

from dualfashion_jax.data.records import read_records
from dualfashion_jax.generation import cli, runner
from dualfashion_jax.generation.bundle import BundleError, load_bundle
from dualfashion_jax.generation.settings import GenSettings, gor_order
from dualfashion_jax.samplers.flow_euler import GuidanceConfig

SETTINGS = GenSettings(num_images=2, num_captions=2, seed=3, guidance=GuidanceConfig(num_steps=2), caption_steps=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_world(tmp_path_factory.mktemp("gen"))
    make_workdir(root, root / "wd")
    return root


@pytest.fixture(scope="module")
def bundle(world):
    return load_bundle(world / "wd")


@pytest.fixture(scope="module")
def pfitb_run(world, bundle):
    """PFITB interrupted after 2 rows (--max-rows 2), then resumed over the whole split, on 8 devices."""
    out = world / "pfitb8"
    first = runner.run("pfitb", bundle, SETTINGS, out=out, rows_per_batch=2, max_rows=2, progress=False)
    files = {p: p.read_bytes() for p in sorted((out / "rows").rglob("*")) if p.is_file()}
    second = runner.run("pfitb", bundle, SETTINGS, out=out, rows_per_batch=2, progress=False, original_layout=True)
    return out, first, second, files


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def test_bundle_ema_raw_and_provenance(world, bundle):
    raw = load_bundle(world / "wd", ema=False)
    k_ema = np.asarray(bundle.model.context_embedder.kernel[...])
    k_raw = np.asarray(raw.model.context_embedder.kernel[...])
    np.testing.assert_allclose(k_ema - k_raw, 0.01, atol=1e-6)  # the fake workdir's EMA = params + 0.01
    assert bundle.info["ema"] is True and raw.info["ema"] is False and bundle.info["step"] == 1
    assert bundle.info["t5"].endswith("frozen/t5") and bundle.image_size == 32
    assert set(bundle.value_lengths) == {"Color", "Material", "Design features", "Clothing Fashion Style"}


def test_pfitb_records_outputs_and_resume(world, pfitb_run):
    out, first, second, files = pfitb_run
    n = len(np.load(world / "data" / "splits" / "test.npz")["uids"])
    assert (first.rows, first.generated, first.skipped) == (2, 2, 0)
    assert (second.rows, second.generated, second.skipped, second.records) == (n, n - 2, 2, n)
    for p, data in files.items():  # rows finished before the "interruption" were not regenerated
        assert p.read_bytes() == data, p
    records, settings = read_records(out)
    assert len(records) == n and settings["task"] == "pfitb" and settings["sampler"]["num_images"] == 2
    assert settings["truncated_inputs"]["count"] == 0 and settings["truncated_inputs"]["total"] > 0
    for r in records:
        assert len(r.blank_slots) == 1 and [g.sample for g in r.gen_for(r.blank_slots[0])] == [0, 1]
        assert all(g.caption is not None for g in r.gen) and r.grd[0].iid == r.outfit[r.blank_slots[0]]
        for g in r.gen:
            assert _png(out / g.image).shape == (32, 32, 3)
    caps = json.loads((out / "generated_caption.json").read_text())
    assert len(caps) == n and {"uid", "oid", "target_item_id", "preference_text", "sentence_text",
                               "caption_template", "generated_captions"} <= set(caps[0])
    assert len(caps[0]["generated_captions"]) == 2 and "<extra_id_0>" in caps[0]["caption_template"]
    html = (out / "index.html").read_text()
    assert html.count("grid.png'><img") == n
    for r in records:
        assert (out / r.gen[0].image).parent.joinpath("grid.png").is_file()
    gen = np.load(out / "gen.npy", allow_pickle=True).item()  # our own file (original layout on request)
    assert set(gen) == {r.uid for r in records}


@pytest.mark.slow
def test_pfitb_samples_differ_and_one_device_matches_eight(world, bundle, pfitb_run):
    out8 = pfitb_run[0]
    recs8, _ = read_records(out8)
    g = recs8[0].gen
    assert np.abs(_png(out8 / g[0].image) - _png(out8 / g[1].image)).max() > 10  # sample index -> other noise
    from dualfashion_jax.generation.sampling import make_mesh
    import jax

    out1 = world / "pfitb1"  # 1 device, 3 rows per batch: other batch composition and padding
    runner.run("pfitb", bundle, SETTINGS, out=out1, rows_per_batch=3, mesh=make_mesh(jax.devices()[:1]),
               progress=False)
    recs1, _ = read_records(out1)
    for a, b in zip(recs1, recs8):
        assert (a.uid, a.oid) == (b.uid, b.oid)
        for ga, gb in zip(a.gen, b.gen):
            assert ga.caption == gb.caption  # identical tokens
            # tolerance: 1 grey level (fp32 reductions may differ across sharding/batch size before rounding)
            assert np.abs(_png(out1 / ga.image) - _png(out8 / gb.image)).max() <= 1


def test_rerun_with_other_settings_is_refused(world, bundle, pfitb_run):
    import dataclasses
    with pytest.raises(ValueError, match="different settings"):
        runner.run("pfitb", bundle, dataclasses.replace(SETTINGS, seed=4), out=pfitb_run[0], progress=False)


def test_resume_of_a_dir_written_before_guidance_interval(world, bundle, pfitb_run, tmp_path):
    """A run.json without `guidance.interval` (older versions) resumes with the default interval (0, 1)."""
    out = tmp_path / "old"
    shutil.copytree(pfitb_run[0], out)
    info = json.loads((out / runner.RUN_FILE).read_text())
    assert info["sampler"]["guidance"].pop("interval") == [0.0, 1.0]
    (out / runner.RUN_FILE).write_text(json.dumps(info))
    s = runner.run("pfitb", bundle, SETTINGS, out=out, rows_per_batch=2, progress=False)
    assert s.generated == 0 and s.skipped == s.rows
    with pytest.raises(ValueError, match="interval"):
        runner.run("pfitb", bundle, GenSettings(**{**SETTINGS.__dict__, "guidance": GuidanceConfig(
            num_steps=2, interval=(0.5, 1.0))}), out=out, rows_per_batch=2, progress=False)


def test_gor_end_to_end(world, bundle):
    s = GenSettings(num_images=2, num_captions=1, seed=1, guidance=GuidanceConfig(num_steps=2), caption_steps=3)
    out = world / "gor"
    summary = runner.run("gor", bundle, s, out=out, rows_per_batch=2, max_rows=2, progress=False)
    assert summary.records == 2
    records, settings = read_records(out)
    assert settings["task"] == "gor"
    for r in records:
        assert r.blank_slots == (0, 1, 2, 3) and len(r.gen) == 8 and len(r.grd) == 4
        assert sorted((g.slot, g.sample) for g in r.gen) == [(sl, k) for sl in range(4) for k in range(2)]
    caps = json.loads((out / "generated_captions.json").read_text())
    entry = caps[0]["generated_captions"]
    assert len(entry) == 8 and [e["slot"] for e in entry[:4]] == gor_order(1, records[0].uid, records[0].oid, 0)
    assert sorted(gor_order(1, 5, 6, 0)) == [0, 1, 2, 3]
    assert len({tuple(gor_order(1, 5, 6, k)) for k in range(8)}) > 1  # a permutation per sample


def test_gor_item_depends_on_earlier_items(bundle):
    """Item k's context (and so its offset and caption image stream) comes from the generated items < k."""
    from dualfashion_jax.generation import conditioning as cond
    from dualfashion_jax.generation.gor import history_context

    rng = np.random.default_rng(0)
    hist = rng.standard_normal((1, 2, 16, 16, 16)).astype(np.float32)  # items 0, 1 generated
    hist2 = hist.copy()
    hist2[:, 0] += 1.0  # change item 0
    lat0, valid0 = history_context(hist[:, :0], 0)
    assert valid0.sum() == 0 and not lat0.any()  # first item: zero context
    offs = []
    for h in (hist, hist2):
        lat, valid = history_context(h[:, :1], 1)  # item 1 sees item 0 only
        np.testing.assert_array_equal(valid, [[1, 0, 0]])
        offs.append(np.asarray(cond.context_offset(bundle.model, cond.masked_context_mean(lat, valid))))
    assert np.abs(offs[0] - offs[1]).max() > 1e-4
    lat, valid = history_context(np.concatenate([hist, hist], 1), 4)  # step 4 sees the last 3 items
    np.testing.assert_array_equal(valid, [[1, 1, 1]])


def test_cli_errors(world, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--task", "retrieval", "--checkpoint", str(world / "wd"), "--out", str(tmp_path / "x")])
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    (data / "text" / "test_preference.json").unlink()
    rc = cli.main(["--task", "pfitb", "--checkpoint", str(world / "wd"), "--data", str(data), "--out",
                   str(tmp_path / "o"), "--no-progress"])
    assert rc == 1 and "test_preference.json" in capsys.readouterr().err
    rc = cli.main(["--task", "gor", "--checkpoint", str(world / "wd"), "--out", str(tmp_path / "o2"),
                   "--gor-offset", "projector", "--no-progress"])
    assert rc == 1 and "gor_projector" in capsys.readouterr().err
    rc = cli.main(["--task", "pfitb", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o3")])
    assert rc == 1 and "neither a training workdir" in capsys.readouterr().err
    for bad, msg in (("0.5", "two numbers"), ("0.9,0.1", "interval")):
        rc = cli.main(["--task", "pfitb", "--checkpoint", str(world / "wd"), "--out", str(tmp_path / "o4"),
                       "--guidance-interval", bad])
        assert rc == 1 and msg in capsys.readouterr().err


def test_cli_num_images_defaults_per_task():
    """GOR: the original's 5 samples per outfit; PFITB: 2 (LPIPS diversity needs >= 2); --num-images overrides."""
    for task, k in (("pfitb", 2), ("gor", 5)):
        args = cli._parser().parse_args(["--task", task, "--checkpoint", "c", "--out", "o"])
        assert cli.settings_from_args(args).num_images == k
    args = cli._parser().parse_args(["--task", "gor", "--checkpoint", "c", "--out", "o", "--num-images", "1"])
    assert cli.settings_from_args(args).num_images == 1


def test_checkpoint_config_mismatch(world, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(world / "wd", wd)
    cfg = json.loads((wd / "config.json").read_text())
    cfg["model"]["overrides"] = {"num_layers": 3}  # the config now builds a deeper model than was saved
    (wd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="checkpoint/config mismatch"):
        load_bundle(wd)


@pytest.mark.slow
def test_cli_generate_runs(world, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--task", "pfitb", "--checkpoint", str(world / "wd"), "--out", str(out), "--steps", "2",
            "--caption-steps", "3", "--num-images", "2", "--num-captions", "2", "--seed", "3", "--max-rows", "1",
            "--rows-per-batch", "2", "--guidance-interval", "0.2,0.9", "--no-progress"]
    assert cli.main(args) == 0 and "1 rows (1 generated now" in capsys.readouterr().out
    assert cli.main(args) == 0 and "0 generated now, 1 already done" in capsys.readouterr().out
    records, _ = read_records(out)
    assert len(records) == 1



def test_converted_layout_loads(world, bundle, tmp_path):
    """DIR/{transformer, t5, vae, tokenizer} (convert outputs) gives the same model as the workdir."""
    from flax import nnx

    from dualfashion_jax.core import converted, params as core_params
    from dualfashion_jax.conversion.mmdit import POS_EMBED_KEY

    flat = core_params.flat_params(bundle.model)
    flat[POS_EMBED_KEY] = np.asarray(bundle.model.patch_embed.pos_embed[...])
    converted.save_converted(tmp_path / "transformer", kind="mmdit", config=bundle.model.config.to_dict(), params=flat)
    for kind, mod in (("t5", bundle.t5), ("vae", bundle.vae)):
        converted.save_converted(tmp_path / kind, kind=kind, config=mod.cfg.to_dict(),
                                 params=core_params.flat_params(mod))
    shutil.copytree(world / "tokenizer", tmp_path / "tokenizer")
    conv = load_bundle(tmp_path, data=str(world / "data"))
    assert conv.info["kind"] == "converted" and conv.image_size == bundle.image_size
    a, b = nnx.state(conv.model, nnx.Param), nnx.state(bundle.model, nnx.Param)
    for (pa, va), (pb, vb) in zip(a.flat_state(), b.flat_state()):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))


def test_ground_truth_template_is_the_target_caption(world, bundle):
    """--template ground_truth masks the GT item's own value tokens; the default budget is GT-free."""
    import dataclasses

    from dualfashion_jax.generation.inputs import SplitInputs
    from dualfashion_jax.samplers.templates import value_runs
    from dualfashion_jax.text.tokenizer import CAPTION_KEYS, caption_json

    inp = SplitInputs(world / "data", "test", bundle, dataclasses.replace(SETTINGS, template_source="ground_truth"))
    row = inp.row(0)
    t = inp.template(row.target)
    _, _, labels = bundle.tokenizer.encode_caption(caption_json(inp.ds.item_info[row.target]["elements"]))
    assert t.value_lengths() == [e - s for s, e in value_runs(labels)] and "<extra_id_0>" in t.text
    budget = SplitInputs(world / "data", "test", bundle, SETTINGS)
    assert budget.template(row.target).value_lengths() == [bundle.value_lengths[k] for k in CAPTION_KEYS]
    assert budget.template(row.target) is budget.template(inp.row(1).target)  # one template for every row


def test_gor_projector_variant_reachable(bundle):
    """gor_offset='projector' needs (and uses) a checkpoint with the original GOR projector/gate modules."""
    import dataclasses

    from flax import nnx

    from dualfashion_jax.generation import conditioning as cond
    from dualfashion_jax.generation.bundle import Bundle
    from dualfashion_jax.modeling.restore import module_from_flat
    from dualfashion_jax.generation.sampling import Programs
    from dualfashion_jax.models import mmdit
    from generation_support import random_params

    cfg = dataclasses.replace(bundle.model.config, stage2_variant="gor_projector")
    factory = lambda: mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    model = module_from_flat(factory, random_params(factory, seed=1), source="random gor_projector")
    b = Bundle(model, bundle.t5, bundle.vae, bundle.tokenizer, bundle.value_lengths)
    Programs(b, dataclasses.replace(SETTINGS, gor_offset="projector"))  # accepted
    with pytest.raises(ValueError, match="stage2_variant 'mlp'"):
        Programs(b, SETTINGS)  # the default (trained MLP) path needs the MLP
    z = np.zeros((1, 16, 16, 16), np.float32)
    off0, off1 = (np.asarray(cond.context_offset(model, x)) for x in (z, z + 1.0))
    assert np.abs(off0 - off1).max() > 1e-4  # r_t + sigmoid(gate) Conv(ctx + r_c) depends on the context


def test_saved_model_config_needs_no_dataset(world, bundle, tmp_path):
    """A workdir with training's model_config.json rebuilds the model without the dataset (no latents, no
    meta.json to read the latent size from); without it, the missing dataset is named."""
    import shutil

    wd = tmp_path / "wd"
    shutil.copytree(world / "wd", wd)
    cfg = json.loads((wd / "config.json").read_text())
    cfg["data"]["tokenizer"] = str(world / "tokenizer")
    (wd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="nodata"):
        load_bundle(wd, data=str(tmp_path / "nodata"))
    (wd / "model_config.json").write_text(json.dumps(bundle.model.config.to_dict()))
    b = load_bundle(wd, data=str(tmp_path / "nodata"))
    assert b.model.config == bundle.model.config
    np.testing.assert_array_equal(np.asarray(b.model.context_embedder.kernel[...]),
                                  np.asarray(bundle.model.context_embedder.kernel[...]))


def test_truncated_generation_inputs_are_counted_and_warned(bundle):
    import dataclasses

    from dualfashion_jax.text.tokenizer import TruncationWarning

    tok = bundle.tokenizer
    before = dataclasses.replace(tok.truncation)
    tok.encode(["fits", "far too long " * 60])
    with pytest.warns(TruncationWarning, match=r"generate pfitb inputs.*: 1 of 2 texts are longer than max_length=96"):
        cut = runner._truncated_since(tok, before, "generate pfitb inputs")
    assert cut == {"count": 1, "total": 2}
