"""T5 span corruption (`text/span_corruption.py`) against the reference's `random_spans_noise_mask` semantics."""
import numpy as np
import pytest

from dualfashion_jax.text import span_corruption as sc

FIRST = 499  # <extra_id_0> of a 500-id T5-layout vocabulary


def _spans(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


@pytest.mark.parametrize("length", [1, 2, 3, 7, 17, 20, 35, 100, 513])
def test_noise_mask_counts_match_the_reference(length):
    # t5.data.preprocessors.random_spans_noise_mask: round(L * 0.15) noise tokens (clipped to [1, L - 1]) in
    # max(round(noise / 3), 1) spans, alternating with as many non-noise spans, non-noise first
    eff = max(length, 2)
    want_noise = min(max(int(round(eff * 0.15)), 1), eff - 1)
    want_spans = max(int(round(want_noise / 3.0)), 1)
    for seed in range(20):
        m = sc.random_spans_noise_mask(length, np.random.default_rng(seed))
        assert m.shape == (length,) and m.dtype == bool
        if length == 1:
            assert not m.any()  # the reference computes on length 2 and keeps the first (non-noise) token
            continue
        assert not m[0], "the sequence must start with a non-noise span"
        assert m.sum() == want_noise
        assert len(_spans(m)) == want_spans
        assert len(_spans(~m)) == want_spans and m[-1]  # keep, noise, ..., keep, noise (no random roll)


def test_noise_mask_is_seeded_and_spans_are_random_compositions():
    a = sc.random_spans_noise_mask(200, np.random.default_rng(3))
    b = sc.random_spans_noise_mask(200, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    lengths, starts = [], set()
    for seed in range(300):
        m = sc.random_spans_noise_mask(200, np.random.default_rng(seed))
        lengths += _spans(m)
        starts.add(int(np.argmax(m)))
    assert np.mean(lengths) == pytest.approx(3.0)  # 30 noise tokens in exactly 10 spans
    assert min(lengths) >= 1 and max(lengths) > 6  # random segmentation, not fixed-length spans
    assert len(starts) > 20


def test_noise_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="length"):
        sc.random_spans_noise_mask(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="noise_density"):
        sc.random_spans_noise_mask(10, np.random.default_rng(0), noise_density=1.0)


def test_corrupt_sentinel_order_and_reconstruction():
    tokens = np.arange(10, 30)  # 20 tokens
    mask = np.zeros(20, bool)
    mask[[3, 4, 10, 15, 16, 17]] = True  # three spans
    inputs, targets = sc.corrupt(tokens, mask, FIRST)
    np.testing.assert_array_equal(inputs, [10, 11, 12, 499, 15, 16, 17, 18, 19, 498, 21, 22, 23, 24, 497, 28, 29])
    # T5's nonnoise_span_to_unique_sentinel: every non-noise span -> a sentinel, so a trailing one ends the target
    np.testing.assert_array_equal(targets, [499, 13, 14, 498, 20, 497, 25, 26, 27, 496])
    np.testing.assert_array_equal(sc.reconstruct(inputs, targets, FIRST), tokens)


def test_random_corruptions_reconstruct_and_keep_the_noise_fraction():
    rng = np.random.default_rng(0)
    noise = total = 0
    for _ in range(200):
        tokens = rng.integers(3, 300, int(rng.integers(2, 60)))
        mask = sc.random_spans_noise_mask(len(tokens), rng)
        inputs, targets = sc.corrupt(tokens, mask, FIRST)
        np.testing.assert_array_equal(sc.reconstruct(inputs, targets, FIRST), tokens)
        sent = inputs[inputs > 300]
        np.testing.assert_array_equal(sent, FIRST - np.arange(len(sent)))  # <extra_id_0>, <extra_id_1>, ...
        np.testing.assert_array_equal(targets[targets > 300], sent)
        noise, total = noise + mask.sum(), total + len(tokens)
    assert noise / total == pytest.approx(0.15, abs=0.01)


def test_make_batch_pads_appends_eos_and_masks():
    rng = np.random.default_rng(0)
    seqs = [np.arange(10, 27), np.arange(10, 60)]  # 17 tokens; 50 tokens (cut to input_length - 1)
    b = sc.make_batch(seqs, rng, first_sentinel=FIRST, eos_id=1, pad_id=0, input_length=24, target_length=10)
    assert b["inputs"].shape == (2, 24) and b["targets"].shape == (2, 10)
    for i in range(2):
        n_in, n_tg = b["input_mask"][i].sum(), b["target_mask"][i].sum()
        assert b["inputs"][i, n_in - 1] == 1 and b["targets"][i, n_tg - 1] == 1  # EOS last
        assert (b["inputs"][i, n_in:] == 0).all() and (b["targets"][i, n_tg:] == 0).all()
        rebuilt = sc.reconstruct(b["inputs"][i, :n_in - 1], b["targets"][i, :n_tg - 1], FIRST)
        np.testing.assert_array_equal(rebuilt, seqs[i][:23])


def test_too_many_spans_is_an_error():
    with pytest.raises(ValueError, match="sentinels"):
        sc.sentinel_ids(FIRST, 101)
