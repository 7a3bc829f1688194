"""Caption metrics with a deterministic fake text encoder (exact values), and the LLM judge's refusals."""
import math

import numpy as np
import pytest

from dualfashion_jax.evaluators import caption_metrics as tm, llm_judge

VOCAB = ["red", "blue", "denim", "silk", "casual", "formal", "plain", "color", "material"]


def fake_encode(texts):
    """Bag-of-words over VOCAB (+1 bias dim), so cosines are easy to compute by hand."""
    out = np.zeros((len(texts), len(VOCAB) + 1))
    for i, t in enumerate(texts):
        for w in t.lower().replace(":", " ").replace('"', " ").replace(",", " ").split():
            if w in VOCAB:
                out[i, VOCAB.index(w)] += 1
        out[i, -1] = 1
    return out


CAP = '{"Color": "red", "Material": "denim", "Design features": "plain", "Clothing Fashion Style": "casual"}'


def test_parse_rate():
    r = tm.parse_rate([CAP, "{'Color': 'red', 'Material': 'silk',}", "garbage", None])
    assert r["caption_parse_rate"] == 0.25 and r["n"] == 4


def test_text_personalization():
    pref = '{"Color": "red", "Material": "silk"}'
    r = tm.text_personalization([CAP, CAP], [pref, None], fake_encode)
    assert r["text_personalization_color"] == pytest.approx(1.0)          # "Color: red" vs "Color: red"
    assert r["text_personalization_material"] == pytest.approx(2 / 3)     # [material, denim, 1]·[material, silk, 1]
    assert r["text_personalization_color_n"] == 1 and r["text_personalization_design_features_n"] == 0
    assert r["text_personalization"] == pytest.approx((1 + 2 / 3) / 2)


def test_alignment_uses_own_caption():
    img = fake_encode(["color red"])  # identical to "Color: red"
    r = tm.text_image_alignment([CAP], img, fake_encode)
    assert r["text_align_color"] == pytest.approx(1.0) and r["text_align_material_n"] == 1
    with pytest.raises(ValueError, match="1 captions vs 2"):
        tm.text_image_alignment([CAP], np.zeros((2, 10)), fake_encode)


def test_diversity_and_entropy():
    other = CAP.replace("red", "blue")
    r = tm.semantic_diversity([[CAP, CAP], [CAP, other], [CAP]], fake_encode)
    e1, e2 = fake_encode([CAP])[0], fake_encode([other])[0]
    d2 = 1 - e1 @ e2 / (np.linalg.norm(e1) * np.linalg.norm(e2))
    # the metric's cosine is fp32 (clip_metrics.cosine): 1 - cos = 0.14 carries cos's absolute rounding (~1e-7),
    # ~1e-6 relative, so the float64 reference is met to an absolute 1e-6, not pytest's default relative 1e-6
    assert r["text_diversity_rows"] == 2 and r["text_diversity_semantic"] == pytest.approx(d2 / 2, rel=0, abs=1e-6)
    ent = tm.attribute_entropy([CAP, other, other.replace("denim", "silk"), None])
    assert ent["attr_entropy_color"] == pytest.approx(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3))
    assert ent["attr_entropy_clothing_fashion_style"] == 0.0
    assert ent["attr_entropy_weighted"] == pytest.approx(ent["attr_entropy_mean"])  # 3 values for every key


def test_llm_judge_refuses(monkeypatch):
    monkeypatch.delenv(llm_judge.API_KEY_ENV, raising=False)
    with pytest.raises(llm_judge.LLMJudgeError, match="--llm-judge"):
        llm_judge.judge([], enabled=False)
    with pytest.raises(llm_judge.LLMJudgeError, match="GEMINI_API_KEY"):
        llm_judge.judge([], enabled=True)
    assert llm_judge.parse_scores('```json\n{"Color": 8, "Material": 11, "Design features": "x"}\n```') == {"Color": 8}
