"""CaptionTokenizer: T5 id layout, pad=EOS, fixed length, looked-up mask id, label masks; caption format/parse."""
import json
import shutil

import numpy as np
import pytest

from dualfashion_jax.text import tokenizer as tk

CAPS = [tk.caption_json({"Color": c, "Material": m, "Design features": d, "Clothing Fashion Style": s})
        for c, m, d, s in [("navy blue", "cotton", "short sleeves, round neck", "casual"),
                           ("red", "wool", "zipper", "elegant"), ("black", "leather", "pockets", "sporty")]]
TEXTS = CAPS * 3 + ["Recommend a fashion dress item, on white background.", "Unknown"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tk.build_test_tokenizer(TEXTS, d, vocab_size=120)
    return d


@pytest.fixture(scope="module")
def tok(tok_dir):
    return tk.CaptionTokenizer.from_pretrained(tok_dir, max_length=128)


def test_t5_id_layout_and_mask_lookup(tok):
    hf = tok.hf
    assert hf.convert_tokens_to_ids("<pad>") == 0 and tok.eos_id == 1 and hf.unk_token_id == 2
    assert tok.pad_id == tok.eos_id == 1  # DualFashion pads with </s>
    n_extra = sum(t.startswith("<extra_id_") for t in hf.get_vocab())
    assert n_extra == 100
    assert tok.mask_id == hf.convert_tokens_to_ids("<extra_id_0>") == tok.vocab_size - 1  # like 32099 in T5
    assert tok.vocab_size == len(hf) > 100 + tk.MIN_BASE_VOCAB


def test_encode_pads_with_eos_and_truncates(tok):
    ids, mask = tok.encode(["navy blue", "red " * 300])
    assert ids.shape == mask.shape == (2, 128) and ids.dtype == np.int32 and mask.dtype == np.int32
    n = int(mask[0].sum())
    assert ids[0, n - 1] == tok.eos_id and (ids[0, n:] == tok.eos_id).all() and (mask[0, n:] == 0).all()
    assert mask[1].all() and ids[1, -1] == tok.eos_id  # truncated, EOS kept at the end
    assert tok.decode(ids[:1]) == ["navy blue"]


def test_label_mask_covers_exactly_the_values(tok):
    cap = CAPS[0]
    ids, attn, lab = tok.encode_caption(cap)
    assert ids.shape == attn.shape == lab.shape == (128,)
    assert (lab <= attn).all() and lab.sum() > 0
    enc = tok.hf([cap], return_offsets_mapping=True)
    offs = np.asarray(enc["offset_mapping"][0])
    spans = tk.value_spans(cap)
    assert [cap[a:b] for a, b in spans] == ["navy blue", "cotton", "short sleeves, round neck", "casual"]
    inside = np.array([any(s < b and e > a for a, b in spans) for s, e in offs])
    np.testing.assert_array_equal(lab[: len(offs)], inside.astype(np.int32))
    # every value character is covered by a labelled token; no key character is
    covered = np.zeros(len(cap), bool)
    for (s, e), m in zip(offs, lab):
        covered[s:e] |= bool(m)
    for a, b in spans:
        assert covered[a:b][[c != " " for c in cap[a:b]]].all()
    assert not covered[cap.index('"Color"'):cap.index('"Color"') + 7].any()


def test_label_mask_escaped_quote_and_zero_on_padding(tok):
    cap = json.dumps({"Color": 'say "red"', "Material": "wool", "Design features": "x",
                      "Clothing Fashion Style": "casual"})
    _, attn, lab = tok.encode_caption(cap)
    assert lab.sum() > 0 and (lab[attn == 0] == 0).all()
    assert tk.value_spans(cap)[0] == (cap.index("say"), cap.index('red\\"') + 5)


@pytest.mark.parametrize("bad, needle", [
    ('{"Color": "red", "Material": ', "not valid JSON"),
    ('["Color", "red"]', "must be a JSON object"),
    ('{"Color": "red"}', "lacks string value"),
])
def test_malformed_caption_is_named(tok, bad, needle):
    with pytest.raises(tk.CaptionError, match=needle) as e:
        tok.encode_caption(bad)
    assert bad[:30] in str(e.value)


def test_long_malformed_caption_quotes_first_80_chars(tok):
    bad = '{"Color": "' + "x" * 200
    with pytest.raises(tk.CaptionError) as e:
        tok.encode_captions([CAPS[0], bad])
    assert repr(bad[:80] + "...") in str(e.value)


def test_caption_json_canonical():
    s = tk.caption_json({"Clothing Fashion Style": "casual", "Color": "rouge é", "Extra": "x", "Material": ""})
    assert s == ('{"Color": "rouge é", "Material": "Unknown", "Design features": "Unknown", '
                 '"Clothing Fashion Style": "casual"}')
    assert list(json.loads(s)) == list(tk.CAPTION_KEYS)


@pytest.mark.parametrize("text, want", [
    ("'Color': 'red', 'Material': 'wool',", {"Color": "red", "Material": "wool"}),
    ('{"Color": "red", "Material": "", "Design features": "zip", "Other": "x",}', {"Color": "red",
                                                                                     "Design features": "zip"}),
    ('garbage "Color": "blue" more "Clothing Fashion Style" : "chic" {', {"Color": "blue",
                                                                           "Clothing Fashion Style": "chic"}),
    ("not a caption", {}),
    ('{"Color": 3}', {}),
])
def test_parse_caption_lenient(text, want):
    assert tk.parse_caption(text) == want


def test_stub_and_missing_mask_are_refused(tok_dir, tmp_path):
    from transformers import T5Tokenizer

    with pytest.raises(tk.TokenizerError, match="not found"):
        tk.CaptionTokenizer.from_pretrained("google/t5-v1_1-xxl")  # a hub id: never silently a stub
    shutil.copy(tok_dir / "spiece.model", tmp_path / "spiece.model")
    no_extra = T5Tokenizer.from_pretrained(str(tmp_path), extra_ids=0)
    with pytest.raises(tk.TokenizerError, match="extra_id_0"):
        tk.CaptionTokenizer(no_extra, source="no-extra")
    stub = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("a", -1.0)], extra_ids=100)
    with pytest.raises(tk.TokenizerError, match="stub"):
        tk.CaptionTokenizer(stub, source="stub")


def test_bpe_words_stay_whole_and_scaffold_is_one_token_each(tmp_path):
    """BPE vocab is segmented by the fewest pieces (transformers used to split learned words into early
    merges); the caption scaffold pieces are single tokens; label masks still cover exactly the values;
    decoding leaves no word-marker space at a value's start."""
    texts = CAPS * 20 + ["Recommend a fashion dress item, on white background."] * 5
    bare = tk.build_test_tokenizer(texts, tmp_path / "bare", vocab_size=150, model_type="bpe", max_length=64)
    toks = bare.hf.convert_ids_to_tokens(bare.encode(["blue sleeves round neck"])[0][0][:4].tolist())
    assert toks == ["▁blue", "▁sleeves", "▁round", "▁neck"], toks
    scaffold = tk.caption_scaffold()
    tok = tk.build_test_tokenizer(texts, tmp_path / "scaf", vocab_size=150, model_type="bpe", max_length=64,
                                  user_symbols=scaffold + ["Recommend a fashion"])
    ids, attn, labels = tok.encode_captions(CAPS[:1])
    pieces = tok.hf.convert_ids_to_tokens(ids[0][: attn[0].sum()].tolist())
    assert pieces[:4] == ['{"', 'Color": "', "▁navy", "▁blue"], pieces
    assert all(s in pieces for s in ('", "', '"}', 'Material": "', 'Clothing Fashion Style": "'))
    assert attn[0].sum() < bare.encode(CAPS[:1])[1][0].sum()  # shorter than without the scaffold
    value_pieces = [p for p, m in zip(pieces, labels[0]) if m]
    assert "".join(value_pieces).replace("▁", " ").split() == "navy blue cotton short sleeves, round neck casual".split()
    assert tok.decode(ids)[0] == CAPS[0]
    sent = tok.hf.convert_ids_to_tokens(tok.encode(["Recommend a fashion dress item, on white background."])[0][0][:2])
    assert sent == ["Recommend a fashion", "▁dress"]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_user_symbols_stay_single_tokens_whatever_the_transformers_version(tmp_path, model_type):
    """The demo's setting (scaffold user symbols, max_length 24): each scaffold piece is one token and the skeleton
    caption fits with its 4 value spans, also after a reload from spiece.model alone (transformers 5.25 stopped
    turning a unigram model's user-defined pieces into added tokens, issue #12)."""
    texts = CAPS * 20 + ["Recommend a fashion dress item, on white background."] * 5
    scaffold = tk.caption_scaffold()
    tok = tk.build_test_tokenizer(texts, tmp_path, vocab_size=150, model_type=model_type, max_length=24,
                                  user_symbols=scaffold)
    for piece in scaffold:
        ids = tok.hf(piece, add_special_tokens=False)["input_ids"]
        assert ids == [tok.hf.convert_tokens_to_ids(piece)], (piece, tok.hf.convert_ids_to_tokens(ids))
    skeleton = tk.caption_json({k: "x" for k in tk.CAPTION_KEYS})
    assert len(tok.hf(skeleton)["input_ids"]) <= 24, tok.hf.convert_ids_to_tokens(tok.hf(skeleton)["input_ids"])
    ids, attn, lab = tok.encode_caption(skeleton)
    assert int(np.sum(np.diff(np.concatenate([[0], lab, [0]])) == 1)) == 4  # one label run per value
    assert tok.check_scaffold() == int(attn.sum()) and tok.truncation.count == 0
    # spiece ids: longest first, then alphabetical (not set order, which changes with PYTHONHASHSEED)
    assert [s for _, s in tk.spm_user_symbols(tmp_path / "spiece.model")] == sorted(scaffold,
                                                                                   key=lambda s: (-len(s), s))
    want = tok.encode_captions(CAPS)[0]
    for f in tmp_path.iterdir():
        if f.name != "spiece.model":
            f.unlink()
    np.testing.assert_array_equal(tk.CaptionTokenizer.from_pretrained(tmp_path, max_length=24).encode_captions(CAPS)[0],
                                  want)


def test_truncation_is_counted_and_an_unfitting_scaffold_is_named(tok_dir):
    full = tk.CaptionTokenizer.from_pretrained(tok_dir, max_length=128)
    lengths = full.lengths(CAPS)
    n_skeleton = full.check_scaffold()
    L = max(lengths) - 1
    assert n_skeleton <= L
    short = tk.CaptionTokenizer.from_pretrained(tok_dir, max_length=L)
    short.encode_captions(CAPS)
    short.encode(["red", "red " * 300])
    long_caps = [c for c, n in zip(CAPS, lengths) if n > L]
    assert long_caps and short.truncation.count == len(long_caps) + 1 and short.truncation.total == len(CAPS) + 2
    assert short.truncation.first == long_caps[0]
    scan = short.count_truncated(["red", "red " * 300] + CAPS, batch_size=2)
    assert (scan.count, scan.total, scan.first) == (len(long_caps) + 1, len(CAPS) + 2, "red " * 300)
    assert short.truncation.total == len(CAPS) + 2  # a scan leaves the running count alone
    msg = scan.message("stage1 texts", short)
    assert f"{len(long_caps) + 1} of {len(CAPS) + 2}" in msg and f"max_length={L}" in msg and str(tok_dir) in msg
    too_short = tk.CaptionTokenizer.from_pretrained(tok_dir, max_length=n_skeleton - 1)
    with pytest.raises(tk.TokenizerError, match=f"takes {n_skeleton} tokens .* max_length={n_skeleton - 1}") as e:
        too_short.check_scaffold()
    assert str(tok_dir) in str(e.value)
