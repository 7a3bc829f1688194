"""Caption templates: GT-free length budget (default) vs the original ground-truth template, real sentencepiece."""
import numpy as np
import pytest

from dualfashion_jax.samplers import templates as T
from dualfashion_jax.text import tokenizer as tk

COLORS, MATS = ["red", "navy blue", "light grey"], ["cotton", "denim", "silk blend"]
DESIGNS, STYLES = ["v-neck, long sleeves", "plain", "button front with pockets"], ["casual", "formal business"]
CAPS = [tk.caption_json({"Color": c, "Material": m, "Design features": d, "Clothing Fashion Style": s})
        for c in COLORS for m in MATS for d in DESIGNS for s in STYLES]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tk.build_test_tokenizer(CAPS, tmp_path_factory.mktemp("tok"), vocab_size=120, max_length=160)


def _value_token_counts(tok, caption):
    """Reference: tokens overlapping each key's value span, counted from the raw offsets, per key."""
    enc = tok.hf([caption], return_offsets_mapping=True, add_special_tokens=True)
    offs = np.asarray(enc["offset_mapping"][0])
    obj, out = tk.check_caption(caption), {}
    for k in tk.CAPTION_KEYS:
        start = caption.index(f'"{k}": "') + len(f'"{k}": "')
        end = start + len(obj[k])
        out[k] = int(np.sum((offs[:, 0] < end) & (offs[:, 1] > start)))
    return out


def test_median_value_lengths(tok):
    counts = [_value_token_counts(tok, c) for c in CAPS]
    ref = {k: max(1, int(round(float(np.median([c[k] for c in counts]))))) for k in tk.CAPTION_KEYS}
    assert T.median_value_lengths(tok, CAPS) == ref
    with pytest.raises(ValueError, match="no usable value"):
        T.median_value_lengths(tok, ['{"Color": "red"}'])


def test_budget_template_is_gt_free_and_exact(tok):
    lengths = {"Color": 2, "Material": 1, "Design features": 5, "Clothing Fashion Style": 3}
    t = T.build_template(tok, value_lengths=lengths)
    assert t.value_lengths() == [2, 1, 5, 3]
    n = int(t.attention_mask.sum())
    assert np.all(t.ids[t.label_mask > 0] == tok.mask_id)
    assert t.ids[n - 1] == tok.eos_id and np.all(t.ids[n:] == tok.pad_id) and np.all(t.attention_mask[:n] == 1)
    # The non-value tokens are exactly the canonical skeleton's.
    ids, attn, lm = tok.encode_caption(tk.caption_json({k: T.FILLER for k in tk.CAPTION_KEYS}))
    np.testing.assert_array_equal(t.ids[:n][t.label_mask[:n] == 0], ids[(attn > 0) & (lm == 0)])
    assert t.text.count("<extra_id_0>") == 11 and '"Color"' in t.text
    # One int = the same budget for every key; an over-long budget is a clear error.
    assert T.budget_template(tok, 4).value_lengths() == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="longer than the tokenizer's max_length"):
        T.budget_template(tok, 60)
    with pytest.raises(ValueError, match="missing"):
        T.budget_template(tok, {"Color": 2})


def test_ground_truth_template_reproduces_the_original(tok):
    cap = CAPS[7]
    t = T.build_template(tok, source="ground_truth", gt_caption=cap)
    ids, attn, lm = tok.encode_caption(cap)
    np.testing.assert_array_equal(t.ids, np.where(lm > 0, tok.mask_id, ids))
    np.testing.assert_array_equal(t.label_mask, lm)
    ref = _value_token_counts(tok, cap)
    assert t.value_lengths() == [ref[k] for k in tk.CAPTION_KEYS]  # the GT lengths leak (spec §7.2 item 12)
    with pytest.raises(ValueError, match="gt_caption"):
        T.build_template(tok, source="ground_truth")
    with pytest.raises(ValueError, match="template_source"):
        T.build_template(tok, source="oracle", value_lengths=3)
    stacked = T.stack_templates([t, T.budget_template(tok, 2)])
    assert [a.shape for a in stacked] == [(2, 160)] * 3


def test_templates_that_do_not_fit_are_named_errors(tok):
    n = tok.check_scaffold()
    short = tk.CaptionTokenizer.from_pretrained(tok.source, max_length=n - 1)
    with pytest.raises(T.TemplateError, match=f"takes {n} tokens .*max_length={n - 1}") as e:
        T.budget_template(short, 2)
    assert f"tokenizer {tok.source} (max_length={n - 1})" in str(e.value)
    lengths = tok.lengths(CAPS)
    longest = CAPS[int(np.argmax(lengths))]
    cut = tk.CaptionTokenizer.from_pretrained(tok.source, max_length=max(lengths) - 1)
    with pytest.raises(T.TemplateError, match="ground_truth_template") as e:
        T.build_template(cut, source="ground_truth", gt_caption=longest)
    assert tok.source in str(e.value)


def test_median_value_lengths_leaves_truncated_captions_out_with_a_count(tok):
    lengths = tok.lengths(CAPS)
    L = int(np.median(lengths))
    cut = tk.CaptionTokenizer.from_pretrained(tok.source, max_length=L)
    n_cut = sum(n > L for n in lengths)
    assert 0 < n_cut < len(CAPS)
    with pytest.warns(tk.TruncationWarning, match=f"{n_cut} of {len(CAPS)} texts"):
        got = T.median_value_lengths(cut, CAPS)
    assert got == T.median_value_lengths(tok, [c for c, n in zip(CAPS, lengths) if n <= L])
