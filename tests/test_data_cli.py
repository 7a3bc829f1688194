"""`dualfashion-jax data` CLI end to end on the built-in synthetic dataset: make-demo, validate, info, examples."""
import pytest

from dualfashion_jax.cli import main as top_main
from dualfashion_jax.data import examples as E
from dualfashion_jax.data.cli import main as data_main
from dualfashion_jax.data.format import SafeDataset, sentence_text
from dualfashion_jax.text import tokenizer as tk


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ds"
    assert top_main(["data", "make-demo", "--out", str(out), "--seed", "0"]) == 0
    return SafeDataset(out)


def test_validate_and_info(demo, capsys):
    assert data_main(["validate", str(demo.root)]) == 0
    out = capsys.readouterr().out
    assert "images" in out and out.strip().endswith("OK")
    assert data_main(["info", str(demo.root)]) == 0
    out = capsys.readouterr().out
    assert "synthetic_outfits" in out and "test:" in out and "augmented.json" in out


def test_stage_sources_on_demo_captions(demo, tmp_path):
    caps = [r["caption"] for r in demo.stage1] + [r["re_caption"] for r in demo.stage1]
    texts = caps + [sentence_text(c) for c in demo.categories.values()] + [tk.caption_json({})]
    tok = tk.build_test_tokenizer(texts, tmp_path / "tok", vocab_size=200, max_length=128)
    s1, s2, s3 = E.Stage1Source(demo, tok), E.Stage2Source(demo, tok), E.Stage3Source(demo, tok)
    assert s1[0]["images"].shape == (32, 32, 3) and s1[0]["caption_label_mask"].sum() > 0
    ex = s2[7]
    assert ex["context_images"].shape == (3, 32, 32, 3) and ex["caption_label_mask"].sum() > 0
    assert tk.parse_caption(tok.decode(ex["pref_ids"])[0]).keys() == set(tk.CAPTION_KEYS)
    assert s3[0]["caption_ids"].shape == (s3.n_aug, 128) and (s3[0]["caption_label_mask"].sum(1) > 0).all()
    row = E.TaskRows(demo, "test")[0]
    assert row.candidates[0] == row.target and row.categories[row.blank] in row.history


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert data_main(["info", str(tmp_path / "nope")]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
    (tmp_path / "meta.json").write_text("{")
    assert data_main(["validate", str(tmp_path)]) == 1
    assert "meta.json: not valid JSON" in capsys.readouterr().err
