"""`dualfashion-jax evaluate` end to end on a tiny synthetic dataset + fake results dirs, with tiny networks."""
import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from dualfashion_jax.core import params as core_params
from dualfashion_jax.evaluators.nets import clip_weights as oc_conv
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data import records as R
from dualfashion_jax.evaluators import cli, inception_score, metrics
from dualfashion_jax.evaluators.nets import clip_text, clip_tokenizer
from dualfashion_jax.text.tokenizer import caption_json


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from dualfashion_jax.data.synthetic.make import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth"), seed=0, image_size=32, num_users=8, verbose=False)


def _fake_results(data_dir, out, task, rows=3, samples=2):
    """Generated image = GT image + noise; caption = the GT item's attributes; preference = the user's."""
    ds, rng = SafeDataset(data_dir), np.random.default_rng(0)
    fitb, full = ds.fitb("test"), ds.split("test")
    info = json.loads((data_dir / "text" / "item_info.json").read_text())
    prefs = json.loads((data_dir / "text" / "test_preference.json").read_text())
    (out / "img").mkdir(parents=True)
    recs = []
    for i in range(rows):
        uid, oid = int(fitb.uids[i]), int(fitb.oids[i])
        outfit, cats = tuple(int(x) for x in full.outfits[i]), tuple(int(x) for x in full.category[i])
        blanks = (int(np.flatnonzero(fitb.outfits[i] == 0)[0]),) if task == "pfitb" else (0, 1, 2, 3)
        gen = []
        for s in blanks:
            gt = np.asarray(Image.open(ds.image_file(outfit[s])).convert("RGB")).astype(int)
            for k in range(samples):
                p = f"img/{uid}_{oid}_{s}_{k}.png"
                Image.fromarray(np.clip(gt + rng.integers(-25, 25, gt.shape), 0, 255).astype(np.uint8)).save(out / p)
                gen.append(R.GenEntry(s, k, 10 + k, p, caption_json(info[str(outfit[s])]["elements"])))
        pref = {s: caption_json(prefs[str(uid)][str(cats[s])]["Frequency"]) for s in blanks
                if str(cats[s]) in prefs.get(str(uid), {})}
        recs.append(R.Record(uid, oid, task, outfit, cats, blanks, tuple(gen),
                             tuple(R.GrdEntry(s, outfit[s]) for s in blanks), pref, {}))
    R.write_records(out, recs, {"model": "fake-model", "task": task, "split": "test", "seeds": [10, 11]})
    return out


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory):
    """A converted tiny CLIP dir with the BPE file beside it (exercises the --clip loading path)."""
    model = clip_text.CLIP(clip_text.get_config("tiny"), rngs=nnx.Rngs(3))
    out = tmp_path_factory.mktemp("clip") / "tiny_clip"
    try:
        bpe = clip_tokenizer.find_bpe_file()
    except FileNotFoundError:
        pytest.skip("CLIP BPE file unavailable (install open-clip-torch==3.3.0 --no-deps)")
    return oc_conv.save_clip(out, model.config, core_params.flat_params(model), source="tiny test CLIP", bpe_file=bpe)


def test_pfitb_end_to_end(data_dir, clip_ckpt, tmp_path):
    res = _fake_results(data_dir, tmp_path / "pfitb", "pfitb")
    metrics = ("clip_score,clip_image_score,personal_sim,compatibility,retrieval_acc,caption_parse_rate,"
               "text_align,text_personalization,text_diversity,oracle,lpips_diversity,grounded_retrieval_acc,"
               "grounded_clip_score,grounded_clip_image_score,grounded_lpips,grounded_personal_sim,"
               "grounded_compatibility")
    rc = cli.main(["--results", str(res), "--data", str(data_dir), "--task", "pfitb", "--metrics", metrics,
                   "--clip", str(clip_ckpt), "--batch-size", "64", "--no-progress"])
    rep = json.loads((res / "report.json").read_text())
    assert rc == 0, rep["errors"]
    m = rep["metrics"]
    assert set(m) == set(metrics.split(","))
    assert rep["networks"]["clip"]["weights"] == "real-weight" and rep["networks"]["compat"]["weights"] == "random-weight"
    assert rep["paper_comparable_networks"] is False
    assert m["clip_image_score"]["n"] == 6 and 0 < m["clip_image_score"]["clip_image_score"] <= 100
    assert m["caption_parse_rate"]["caption_parse_rate"] == 1.0
    assert m["oracle"]["oracle_category_acc"] == 1.0  # noisy copies of GT renders decode to the GT attributes
    assert m["lpips_diversity"]["num_rows"] == 3 and m["text_diversity"]["text_diversity_rows"] == 3
    assert m["compatibility"]["n"] == 6  # one outfit per generated sample
    # grounding: retrieval among the 5 candidates is the plain retrieval; noisy GT copies retrieve their GT items
    assert m["grounded_retrieval_acc"]["grounded_retrieval_acc"] == m["retrieval_acc"]["retrieval_acc"]
    for k in ("grounded_clip_score", "grounded_clip_image_score", "grounded_personal_sim", "grounded_compatibility"):
        assert m[k]["n"] == 6 and np.isfinite(m[k][k])
    assert m["grounded_lpips"]["num_images"] == 6 and m["grounded_lpips"]["grounded_lpips"] >= 0
    assert rep["settings"]["grounding"]["retrieval"].startswith("pfitb: argmax")
    md = (res / "report.md").read_text()
    assert "| | Fidelity |" in md and "**random-weight**" in md and "Not paper-comparable" in md
    # the random compat net's numbers are kept out of the main table, in their own section
    assert rep["random_weight_metrics"] == ["compatibility", "grounded_compatibility"]
    main, _, standins = md.partition("## Random-weight stand-ins (not meaningful)")
    assert "Compat." not in main.split("## Grounding")[0] and "Compat." in standins and "CS" not in standins
    assert "## Grounding (generate-then-retrieve)" in md and "| **Model** | **CS** | **CIS** | **LPIPS↓** |" in md
    assert rep["settings"]["generation_settings"]["seeds"] == [10, 11]


def test_gor_end_to_end_trained_compat(data_dir, tmp_path, monkeypatch):
    res = _fake_results(data_dir, tmp_path / "gor", "gor", rows=2, samples=1)

    def no_bpe(explicit=None):  # as if open-clip-torch (which ships the BPE file) were not installed
        raise FileNotFoundError("CLIP BPE merges file not found (test)")
    monkeypatch.setattr(clip_tokenizer, "find_bpe_file", no_bpe)
    rc = cli.main(["--results", str(res), "--data", str(data_dir), "--metrics",
                   "compatibility,grounding_recall,clip_image_score,text_align,grounded_retrieval_acc,"
                   "grounded_clip_image_score,grounded_personal_sim,grounded_compatibility", "--compat-train-steps", "20",
                   "--original-gor-indexing", "--batch-size", "64", "--no-progress", "--out", str(tmp_path / "r.json"),
                   "--collage-size", "64"])
    rep = json.loads((tmp_path / "r.json").read_text())
    # Without a tokenizer only the text metric is not available, by name and with the reason; image metrics still run.
    assert rc == 0 and list(rep["errors"]) == ["text_align"] and "BPE" in rep["errors"]["text_align"]
    assert "- `text_align`: not available: FileNotFoundError: CLIP BPE" in (tmp_path / "r.md").read_text()
    assert rep["networks"]["compat"]["weights"] == "trained-here" and rep["networks"]["clip"]["weights"] == "random-weight"
    assert rep["metrics"]["compatibility"]["gor_indexing"] == "original (bugged)"
    assert rep["settings"]["gor_collage_size"] == 64
    assert rep["metrics"]["compatibility"]["n"] == 2 and rep["metrics"]["clip_image_score"]["n"] == 2  # collages
    assert rep["metrics"]["grounding_recall"]["n"] == 8
    g = rep["metrics"]
    assert g["grounded_retrieval_acc"]["n"] == 8 and g["grounded_clip_image_score"]["n"] == 2  # collages
    assert g["grounded_retrieval_acc"]["grounded_retrieval_acc"] <= g["grounding_recall"]["recall@10"]
    assert g["grounded_compatibility"]["n"] == 2 and g["grounded_personal_sim"]["n"] >= 1
    md = (tmp_path / "r.md").read_text()
    # every CLIP-based number came from the random CLIP: none in the main table, all in the stand-ins section
    main, _, standins = md.partition("## Random-weight stand-ins (not meaningful)")
    assert "## Grounding (generate-then-retrieve)" not in main and "| **Model** |" not in main
    assert "**Grd R@1** | **Grd R@10**" in standins and "**R@10**" in standins and "**Compat.**" in standins


def test_cli_errors(data_dir, tmp_path, capsys):
    res = _fake_results(data_dir, tmp_path / "p", "pfitb", rows=1, samples=1)
    assert cli.main(["--results", str(res), "--data", str(data_dir), "--task", "gor"]) == 2
    assert "holds a 'pfitb' run" in capsys.readouterr().err
    assert cli.main(["--results", str(res), "--data", str(data_dir), "--metrics", "grounding_recall"]) == 2
    assert "do not apply to task 'pfitb'" in capsys.readouterr().err
    assert cli.main(["--results", str(res), "--data", str(data_dir), "--metrics", "nope"]) == 2
    # The judge refuses without --llm-judge: listed as not available (exit 0), or exit 1 with --strict; the report
    # is written either way.
    argv = ["--results", str(res), "--data", str(data_dir), "--metrics", "llm_judge,caption_parse_rate", "--no-progress"]
    assert cli.main(argv) == 0
    assert "llm_judge not available" in capsys.readouterr().err
    assert cli.main(argv + ["--strict"]) == 1
    assert "--strict: 1 metric(s) not available: llm_judge" in capsys.readouterr().err
    rep = json.loads((res / "report.json").read_text())
    assert "--llm-judge" in rep["errors"]["llm_judge"] and rep["metrics"]["caption_parse_rate"]["n"] == 1
    with pytest.raises(SystemExit):
        cli.main(["--results", str(res), "--data", str(data_dir), "--collage-size", "63"])
    assert "--collage-size must be an even number" in capsys.readouterr().err
    assert cli.main(["--list-metrics"]) == 0 and "grounding_recall" in capsys.readouterr().out
    assert set(metrics.DEFAULT_METRICS["gor"]) <= set(metrics.METRICS)


def test_default_metrics_include_is_and_lpips_diversity(monkeypatch):
    """IS / IS-acc@3 and LPIPS diversity are defaults; the default IS refuses without --inception (listed as not
    available by the CLI) and delegates to the runner with it; requested by name it is the plain runner."""
    import types

    for task in ("pfitb", "gor"):
        specs = {s.name: s for s in metrics.resolve(None, task)}
        assert {"inception_score", "lpips_diversity"} <= set(specs)
    run = metrics.resolve("default", "pfitb")[0].load()
    assert run is inception_score.run_default_inception_score
    ctx = types.SimpleNamespace(opt=types.SimpleNamespace(checkpoints={"inception": None}))
    with pytest.raises(ValueError, match="no --inception checkpoint"):
        run(ctx)
    monkeypatch.setattr(inception_score, "run_inception_score", lambda c: {"is_acc_top3": 1.0})
    ctx.opt.checkpoints["inception"] = "/ckpt/Inception-finetune-epoch300"
    assert run(ctx) == {"is_acc_top3": 1.0}
    assert metrics.resolve("inception_score", "gor")[0].load() is inception_score.run_inception_score
