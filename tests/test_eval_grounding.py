"""Generate-then-retrieve grounding (difashion_eval.md §2.9): retrieval on hand-made embeddings, and the grounded
metrics of a real `EvalContext` (synthetic dataset, hand-made catalogue features and generated embeddings) checked
against values computed by hand with numpy. Tolerances: rel 1e-5 on fp32 cosines / sigmoid scores."""
import json

import numpy as np
import pytest

from dualfashion_jax.evaluators import clip_metrics as cm, compatibility as comp, grounding, metrics, report
from dualfashion_jax.evaluators.context import EvalContext, EvalOptions
from dualfashion_jax.evaluators.nets import clip_tokenizer
from test_eval_cli import _fake_results  # the fake PFITB/GOR results dirs of the CLI test

DIM = 16  # the tiny CLIP's embedding width (text embeddings are compared with the catalogue features)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_retrieve_among_candidates_is_the_argmax():
    cat = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [-1, 0], [0, -1], [3, 0.1]], np.float32)  # row = item id
    cands = np.array([[1, 2, 3, 4, 5], [2, 6, 3, 4, 5], [3, 1, 2, 4, 6]])                   # column 0 = GT
    gen = np.array([[2.0, 0.1], [1.0, 0.0], [0.2, 1.0]], np.float32)
    gr = grounding.retrieve_among_candidates(gen, cands, cat)
    brute = [c[np.argmax(_unit(cat[c]) @ _unit(g))] for g, c in zip(gen, cands)]
    assert gr.iids.tolist() == brute == [1, 6, 2] and gr.gt_iids.tolist() == [1, 2, 3]
    plain, _ = cm.fitb_retrieval(gen, cat[cands])
    assert gr.hits.mean() == pytest.approx(plain["retrieval_acc"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"item ids must lie in \[0, 7\)"):
        grounding.retrieve_among_candidates(gen, cands + 5, cat)
    # the grounded outfit: GT items at the visible slots, the retrieved item at the blank
    out = grounding.grounded_outfits(np.array([[11, 12, 13, 14]] * 3), [[0], [1], [2]], np.array([2, 0, 3]), gr.iids)
    assert out.tolist() == [[11, 12, 1, 14], [6, 12, 13, 14], [11, 12, 13, 2]]


def test_same_category_top1_masks_other_categories():
    rng = np.random.default_rng(0)
    item_cat = np.concatenate([[-1], rng.integers(0, 3, 60)])
    cat = np.concatenate([np.zeros((1, 8)), rng.normal(size=(60, 8))]).astype(np.float32)
    other = int(np.flatnonzero(item_cat == 2)[0])
    gen = np.stack([cat[other], cat[other], -cat[other]])      # item of category 2, queried in categories 0, 2, 1
    cats = np.array([0, 2, 1])
    top = cm.same_category_top1(gen, cats, cat, item_cat, batch_size=2)
    for g, c, t in zip(gen, cats, top):
        same = np.flatnonzero(item_cat == c)
        assert t == same[np.argmax(_unit(cat[same]) @ _unit(g))]
    assert top[1] == other and item_cat[top[0]] == 0
    gt = np.array([top[0], np.flatnonzero(item_cat == 2)[1], top[2]])
    gr = grounding.retrieve_same_category(gen, cats, gt, cat, item_cat)
    assert gr.hits.tolist() == [True, False, True]
    assert gr.hits.mean() == cm.grounding_recall(gen, cats, gt, cat, item_cat, ks=(1,))["recall@1"]  # == Recall@1
    with pytest.raises(ValueError, match=r"no catalogue item has category \[7\]"):
        cm.same_category_top1(gen, np.array([0, 7, 1]), cat, item_cat)


# ------------------------------------------------------------------------------------------------ on a context
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from dualfashion_jax.data.synthetic.make import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth_grounding"), seed=0, image_size=32, num_users=8, verbose=False)


def _context(data_dir, tmp_path, task, rows, feats):
    np.save(tmp_path / "cat.npy", feats)
    res = _fake_results(data_dir, tmp_path / task, task, rows=rows, samples=1)
    return EvalContext(res, data_dir, EvalOptions(catalogue_features=str(tmp_path / "cat.npy"), batch_size=8,
                                                  show_progress=False))


def _features(data_dir):
    n = json.loads((data_dir / "meta.json").read_text())["num_items"]
    return np.concatenate([np.zeros((1, DIM)), np.random.default_rng(1).normal(size=(n, DIM))]).astype(np.float32)


def _text(ctx):
    try:
        clip_tokenizer.find_bpe_file()
    except FileNotFoundError:
        pytest.skip("CLIP BPE file unavailable (install open-clip-torch==3.3.0 --no-deps)")
    names = ctx.category_names()
    return ctx.clip().texts([cm.eval_prompt(names[int(c)]) for c in ctx.categories])


def _personal_sim_by_hand(ctx, feats, retrieved):
    hist = ctx.dataset.history("test")
    sims = [100 * _unit(feats[r]) @ _unit(feats[h].mean(0)) for r, u, c in zip(retrieved, ctx.uids, ctx.categories)
            if (h := hist.get(int(u), {}).get(int(c), []))]
    assert sims, "the synthetic users should have history in these categories"
    return np.mean(sims)


def test_pfitb_grounded_metrics_by_hand(data_dir, tmp_path):
    feats = _features(data_dir)
    ctx = _context(data_dir, tmp_path, "pfitb", 2, feats)
    cands = ctx.candidate_iids()                                   # [2, 5], column 0 = GT
    assert (cands[:, 0] == ctx.gt_iids).all()
    # row 0's generated image looks like its GT, row 1's like its 4th candidate (a negative)
    ctx._cache["gen_clip"] = np.stack([2.0 * feats[cands[0, 0]], feats[cands[1, 3]] + 0.01])
    want = np.array([cands[0, 0], cands[1, 3]])
    assert grounding.for_context(ctx).iids.tolist() == want.tolist()

    acc = grounding.run_grounded_retrieval_acc(ctx)
    assert acc["grounded_retrieval_acc"] == 0.5 == cm.run_retrieval_acc(ctx)["retrieval_acc"]
    assert acc["chance"] == 0.2

    text = _text(ctx)
    cs = grounding.run_grounded_clip_score(ctx)["grounded_clip_score"]
    assert cs == pytest.approx(np.mean(100 * np.sum(_unit(feats[want]) * _unit(text), -1)), rel=1e-5)
    cis = grounding.run_grounded_clip_image_score(ctx)["grounded_clip_image_score"]
    by_hand = 100 * np.sum(_unit(feats[want]) * _unit(feats[ctx.gt_iids]), -1)
    assert by_hand[0] == pytest.approx(100) and cis == pytest.approx(by_hand.mean(), rel=1e-5)

    ps = _personal_sim_by_hand(ctx, feats, want)
    assert grounding.run_grounded_personal_sim(ctx)["grounded_personal_sim"] == pytest.approx(ps, rel=1e-5)

    compat = grounding.run_grounded_compatibility(ctx)
    outfits = np.array([r.outfit for r in ctx.records])
    grounded = outfits.copy()
    grounded[1, ctx.slots[1]] = want[1]                            # the negative replaces row 1's blank
    scores = comp.compatibility_scores(comp.compat_net(ctx), feats[grounded])
    gt_scores = comp.compatibility_scores(comp.compat_net(ctx), feats[outfits])
    assert compat["grounded_compatibility"] == pytest.approx(scores.mean(), rel=1e-5)
    assert scores[0] == pytest.approx(gt_scores[0], rel=1e-6) and abs(scores[1] - gt_scores[1]) > 1e-6
    assert compat["outfits_equal_to_gt"] == 1 and compat["n"] == 2
    # candidates whose GT column disagrees with records.json (wrong --data/--split) are refused, naming the row
    ctx._cache.pop("candidate_iids")
    ctx.gt_iids = ctx.gt_iids + 1
    with pytest.raises(ValueError, match=r"fitb_test_candidates gives GT item .* records.json has"):
        ctx.candidate_iids()


def test_gor_grounded_metrics_by_hand(data_dir, tmp_path):
    feats = _features(data_dir)
    ctx = _context(data_dir, tmp_path, "gor", 1, feats)
    ic = ctx.item_category()
    gt = ctx.gt_iids                                               # [4] slots 0..3 of the one outfit
    wrong_cat = int(np.flatnonzero((ic >= 0) & (ic != ctx.categories[0]))[0])
    other1 = int(np.flatnonzero((ic == ctx.categories[1]) & (np.arange(len(ic)) != gt[1]))[0])
    # slot 0 looks like an item of ANOTHER category (must not be retrieved), slot 1 like another item of its category
    ctx._cache["gen_clip"] = np.stack([feats[wrong_cat], feats[other1], feats[gt[2]], feats[gt[3]]])
    gr = grounding.for_context(ctx)
    same0 = np.flatnonzero(ic == ctx.categories[0])
    top0 = same0[np.argmax(_unit(feats[same0]) @ _unit(feats[wrong_cat]))]
    assert gr.iids.tolist() == [top0, other1, gt[2], gt[3]]
    acc = grounding.run_grounded_retrieval_acc(ctx)
    assert acc["grounded_retrieval_acc"] == pytest.approx(np.mean(gr.iids == gt))
    assert acc["chance"] == pytest.approx(np.mean([1 / np.sum(ic == c) for c in ctx.categories]))
    compat = grounding.run_grounded_compatibility(ctx)
    want = comp.compatibility_scores(comp.compat_net(ctx), feats[gr.iids][None])   # the 4 retrieved items, slot order
    assert compat["grounded_compatibility"] == pytest.approx(float(want[0]), rel=1e-5) and compat["n"] == 1
    ps = _personal_sim_by_hand(ctx, feats, gr.iids)
    assert grounding.run_grounded_personal_sim(ctx)["grounded_personal_sim"] == pytest.approx(ps, rel=1e-5)


def test_registry_and_report_layout():
    grounded = [n for n, s in metrics.METRICS.items() if s.group == "Grounding"]
    assert set(grounded) == {"grounded_retrieval_acc", "grounded_clip_score", "grounded_clip_image_score",
                             "grounded_lpips", "grounded_personal_sim", "grounded_compatibility"}
    for task in ("pfitb", "gor"):
        names = [s.name for s in metrics.resolve("all", task)]
        assert set(grounded) <= set(names)
        assert "grounded_lpips" not in metrics.DEFAULT_METRICS[task]
    assert {n for n, *_ in report.GROUNDING_TABLE} == set(grounded)
    rep = {"task": "gor", "model": "m", "metrics": {"grounded_retrieval_acc": {"grounded_retrieval_acc": 0.25},
                                                    "grounding_recall": {"recall@10": 0.5}},
           "errors": {}, "networks": {}, "paper_comparable_networks": False,
           "settings": {"grounding": grounding.describe("gor")}}
    md = report.to_markdown(rep)
    assert "## Grounding (generate-then-retrieve)" in md and "| **Model** | **R@1** | **R@10** |" in md
    assert "| m | 0.2500 | 0.5000 |" in md
