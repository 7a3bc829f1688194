"""Ranking metrics (issue #17) on hand-made inputs: AUC with ties, FITB ties, Recall@K within a category, the oracle
AUC, and the popularity / profile scorers; the registry lists `dvbpr_ranking`, which names its missing workdir."""
import numpy as np
import pytest

from dualfashion_jax.evaluators import metrics, ranking_metrics as rm


def test_pair_auc_counts_ties_half_and_matches_brute_force():
    assert rm.pair_auc([3.0], [1.0, 2.0]) == 1.0
    assert rm.pair_auc([1.0], [1.0, 2.0]) == 0.25  # one tie (1/2), one loss
    r = np.random.default_rng(0)
    p, n = r.integers(0, 5, 40).astype(float), r.integers(0, 5, 30).astype(float)
    brute = np.mean((p[:, None] > n[None]) + 0.5 * (p[:, None] == n[None]))
    assert rm.pair_auc(p, n) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="both positives and negatives"):
        rm.pair_auc([], [1.0])


def test_heldout_auc_excludes_blank_seen_and_heldout_items():
    scores = np.array([[99.0, 5.0, 4.0, 3.0, 0.0, 9.0]])  # items 1..5; item 0 (blank) is never a negative
    held = {7: np.array([2])}
    seen = {7: np.array([5])}  # the train positive 5 is not a negative either
    assert rm.heldout_auc(scores, np.array([7]), held, seen) == pytest.approx(2 / 3)  # 4 > 3, 0; < 5


def test_fitb_accuracy_with_ties():
    s = np.array([[5, 1, 2, 3, 4], [1, 5, 0, 0, 0], [2, 2, 0, 0, 0]], float)
    assert rm.fitb_accuracy(s) == pytest.approx((1 + 0 + 0.5) / 3)


def test_recall_at_k_within_category_pessimistic_ties():
    cat = np.array([-1, 0, 0, 0, 1, 1])
    scores = np.array([[0, 1.0, 3.0, 2.0, 9.0, 9.0],    # gt 3 ranks 2nd among category 0 (item 4/5 ignored)
                       [0, 1.0, 1.0, 1.0, 0.0, 0.0]])   # gt 1 tied with 2 others: rank 3
    r = rm.recall_at_k(scores, np.array([3, 1]), cat, ks=(1, 2, 3))
    assert r == {1: 0.0, 2: 0.5, 3: 1.0}


def test_oracle_auc_perfect_reversed_and_constant():
    cat = np.array([-1, 0, 0, 0, 1, 1])
    colour = np.array([-1, 0, 1, 2, 0, 1])
    pref = np.zeros((1, 2, 3))
    pref[0, 0] = [0.1, 0.5, 0.9]
    pref[0, 1] = [0.7, 0.2, 0.0]
    good = np.array([[0, 1.0, 2.0, 3.0, 5.0, 4.0]])
    assert rm.oracle_auc(good, pref, cat, colour) == 1.0
    assert rm.oracle_auc(-good, pref, cat, colour) == 0.0
    assert rm.oracle_auc(np.zeros_like(good), pref, cat, colour) == 0.5


def test_popularity_and_profile_scorers():
    train = {0: np.array([1, 2]), 1: np.array([2])}
    pop = rm.popularity_scorer(train, 3)(np.array([0, 1]))
    np.testing.assert_array_equal(pop, [[0, 1, 2, 0], [0, 1, 2, 0]])
    feats = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], float)
    prof = rm.profile_scorer(feats, train)(np.array([1]))
    np.testing.assert_allclose(prof, [[0, 0, 1, np.sqrt(0.5)]], atol=1e-12)


def test_registered_and_missing_workdir_is_named():
    assert "dvbpr_ranking" in metrics.METRICS and metrics.METRICS["dvbpr_ranking"].group == "Retrieval"

    class Ctx:  # the runner reads only the options before it needs a workdir
        class opt:
            checkpoints = {}

    with pytest.raises(FileNotFoundError, match=r"checkpoints\['dvbpr'\]"):
        rm.run_dvbpr_ranking(Ctx())
