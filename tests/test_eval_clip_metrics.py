"""CLIP metric formulas on hand-made embeddings (exact expected values), prompt rule and collage layout."""
import numpy as np
import pytest

from dualfashion_jax.evaluators import clip_metrics as cm, preprocess


def test_eval_prompt_rule():
    assert cm.eval_prompt("pants") == "A photo of a pair of pants, on white background"
    assert cm.eval_prompt("casual pants") == "A photo of a pair of casual pants, on white background"
    assert cm.eval_prompt("earrings") == "A photo of a pair of earrings, on white background"
    assert cm.eval_prompt("bag") == "A photo of a bag, on white background"


def test_scores_and_personalization():
    img = np.array([[1.0, 0, 0], [0, 2.0, 0]])
    txt = np.array([[3.0, 0, 0], [1.0, 1.0, 0]])
    r = cm.clip_score(img, txt)
    assert r["clip_score"] == pytest.approx((100 + 100 / np.sqrt(2)) / 2, rel=1e-6) and r["n"] == 2
    assert cm.clip_image_score(img, img)["clip_image_score"] == pytest.approx(100.0, rel=1e-6)
    cat = np.array([[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 3.0, 0]])
    hist = {5: {2: [1, 2]}, 6: {9: [3]}}
    means, has = cm.history_means(cat, hist, np.array([5, 6, 7]), np.array([2, 9, 2]))
    np.testing.assert_allclose(means[0], [0.5, 0.5, 0])  # mean of UNnormalised embeddings
    assert has.tolist() == [True, True, False]
    gen = np.array([[1.0, 0, 0], [0, 1.0, 0], [5.0, 5.0, 5.0]])
    p = cm.personalization_sim(gen, means, has)
    assert p["personal_sim"] == pytest.approx((100 / np.sqrt(2) + 100) / 2, rel=1e-6)
    assert p["n"] == 2 and p["skipped_no_history"] == 1
    with pytest.raises(ValueError, match="outside the catalogue"):
        cm.history_means(cat, {1: {1: [9]}}, np.array([1]), np.array([1]))


def test_fitb_retrieval():
    gen = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    cands = np.array([[[2, 0], [0, 1], [1, 1], [-1, 0], [0, -1]],     # GT best -> hit
                      [[1, 0], [0, 5], [1, 1], [-1, 0], [0, -1]],     # candidate 1 best -> miss
                      [[3, 3], [0, 1], [1, 0], [-1, 0], [0, -1]]], float)  # GT (unnormalised) best -> hit
    r, pred = cm.fitb_retrieval(gen, cands)
    assert pred.tolist() == [0, 1, 0] and r["retrieval_acc"] == pytest.approx(2 / 3) and r["chance"] == 0.2


def test_grounding_recall():
    rng = np.random.default_rng(0)
    n_items = 300
    item_cat = np.concatenate([[-1], rng.integers(0, 2, n_items)])
    cat_emb = np.concatenate([np.zeros((1, 8)), rng.normal(size=(n_items, 8))])
    gt = np.array([np.flatnonzero(item_cat == 0)[0], np.flatnonzero(item_cat == 1)[3]])
    sims0 = cat_emb / np.linalg.norm(cat_emb, axis=1, keepdims=True).clip(1e-12)
    q = np.stack([cat_emb[gt[0]] * 2, -cat_emb[gt[1]]])  # exact hit; worst possible
    r = cm.grounding_recall(q, item_cat[gt], gt, cat_emb, item_cat, batch_size=4)
    assert r["recall@10"] == 0.5 and r["recall@100"] == 0.5 and r["n"] == 2
    # brute force check of the rank of the second query
    same = np.flatnonzero(item_cat == 1)
    s = sims0[same] @ (q[1] / np.linalg.norm(q[1]))
    assert (s > s[list(same).index(gt[1])]).sum() >= 100
    with pytest.raises(ValueError, match="category differs"):
        cm.grounding_recall(q, np.array([1, 1]), gt, cat_emb, item_cat)


def test_collage():
    imgs = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 60, 120, 180)])
    c = preprocess.collage_2x2(imgs, size=16)
    assert c.shape == (16, 16, 3)
    assert c[0, 0, 0] == 0 and c[0, 15, 0] == 60 and c[15, 0, 0] == 120 and c[15, 15, 0] == 180  # row-major
    with pytest.raises(ValueError, match="4 images"):
        preprocess.collage_2x2(imgs[:3])
