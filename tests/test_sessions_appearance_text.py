"""Appearance in the preference text (stage-2 flag + inference) and the typical-value fill of partly stated
preferences (why cold sessions ignored feedback: a half-"Unknown" text is one the model never trained on)."""
import json
import types

import ml_collections as mlc
import numpy as np
import pytest

from dualfashion_jax.data import examples as E, keys as K
from dualfashion_jax.data.cli import main as data_main
from dualfashion_jax.data.format import SafeDataset, preference_text, sentence_text
from dualfashion_jax.data.writer import DatasetWriter
from dualfashion_jax.data.tiny import make_tiny_dataset
from dualfashion_jax.generation.api import trained_with_appearance
from dualfashion_jax.sessions import profile as P
from dualfashion_jax.text import tokenizer as tk
from dualfashion_jax.training.stage2 import AppearanceStage2Source, stage2_source

APP = {"skin_tone": "deep", "body_shape": "pear", "height": "tall"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    plain = make_tiny_dataset(root / "plain", num_items=30, rows_per_split=8)
    app = make_tiny_dataset(root / "app", num_items=30, rows_per_split=8)
    users = sorted(set(SafeDataset(app).split("train").uids.tolist()))
    DatasetWriter(app).write_appearance({u: APP for u in users})
    ds = SafeDataset(app)
    texts = [tk.caption_json(v["elements"]) for v in ds.item_info.values()] + [json.dumps(APP)]
    texts += [sentence_text(c) for c in ds.categories.values()] + [tk.caption_json({})]
    tok = tk.build_test_tokenizer(texts, root / "tok", vocab_size=150, max_length=128)
    return SafeDataset(plain), ds, tok


def test_preference_text_appends_sorted_appearance():
    pref = {"Color": "red", "Material": "denim"}
    assert preference_text(pref) == preference_text(pref, {}) == tk.caption_json(pref)
    d = json.loads(preference_text(pref, APP))
    assert list(d) == list(tk.CAPTION_KEYS) + ["body_shape", "height", "skin_tone"]
    assert d["Color"] == "red" and d["Design features"] == "Unknown" and d["skin_tone"] == "deep"
    with pytest.raises(ValueError, match="collide with the caption keys"):
        preference_text(pref, {"Color": "x"})


def _cfg(flag=None):
    c = mlc.ConfigDict(dict(split="train", use_latents=False))
    if flag is not None:
        c.preference_appearance = flag
    return c


def test_stage2_flag_off_is_byte_identical_on_adds_appearance(data):
    _, ds, tok = data
    ref = E.Stage2Source(ds, tok, split="train", use_latents=False)
    for flag in (None, False):
        src = stage2_source(ds, tok, _cfg(flag))
        assert type(src) is E.Stage2Source and src.distinct_texts() == ref.distinct_texts()
        for i in (0, 5, len(ref) - 1):
            a, b = src[i], ref[i]
            assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    on = stage2_source(ds, tok, _cfg(True))
    assert isinstance(on, AppearanceStage2Source) and len(on) == len(ref)
    for i in (0, 5):
        a, b = on[i], ref[i]
        text = tok.decode(a[K.PREF_IDS][None])[0]
        assert '"skin_tone": "deep"' in text and text.startswith(tok.decode(b[K.PREF_IDS][None])[0][:-1])
        assert all(a[k].tobytes() == b[k].tobytes() for k in a if k not in (K.PREF_IDS, K.PREF_MASK))
        assert a[K.PREF_MASK].sum() > b[K.PREF_MASK].sum()
    new = set(on.distinct_texts()) - set(ref.distinct_texts())  # the preference texts, now with appearance
    assert new and all(t.endswith('"height": "tall", "skin_tone": "deep"}') for t in new)


def test_stage2_flag_on_without_appearance_is_a_clear_error(data):
    plain, _, tok = data
    with pytest.raises(ValueError, match=r"preference_appearance=True but .*appearance\.json is missing"):
        stage2_source(plain, tok, _cfg(True))


def test_trained_with_appearance_reads_the_checkpoint_config(tmp_path):
    def wd(name, stage, data, init_from=None):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"stage": stage, "data": data,
                                                                 "init_from": init_from}))
        return tmp_path / name
    bundle = lambda p, kind="workdir": types.SimpleNamespace(info={"kind": kind, "source": str(p)})  # noqa: E731
    s2_on = wd("s2on", "stage2", {"preference_appearance": True})
    s2_old = wd("s2old", "stage2", {"dir": "d"})
    assert trained_with_appearance(bundle(s2_on)) and not trained_with_appearance(bundle(s2_old))
    assert trained_with_appearance(bundle(wd("s3", "stage3", {"dir": "d"}, str(s2_on))))
    assert not trained_with_appearance(bundle(wd("s3old", "stage3", {"dir": "d"}, str(s2_old))))
    assert not trained_with_appearance(bundle(s2_on, kind="converted"))


def test_typical_preferences_and_model_preference(data):
    _, ds, _ = data
    typ = P.typical_preferences(ds)
    prefs = ds.preference("train")
    for cid, name in ds.categories.items():
        vals = [per[cid]["Frequency"]["Color"] for per in prefs.values() if cid in per]
        vals = [v for v in vals if v != tk.UNKNOWN]
        if vals:
            top = max(vals.count(v) for v in vals)
            assert typ[name]["Color"] == min(v for v in vals if vals.count(v) == top)
    t = {"Color": "red", "Material": "denim", "Design features": "plain", "Clothing Fashion Style": "casual"}
    unk = {k: tk.UNKNOWN for k in tk.CAPTION_KEYS}
    assert P.model_preference(unk, t) == unk  # nothing stated: the all-"Unknown" text the model trained on
    assert P.model_preference({**unk, "Color": "pink"}, t) == {**t, "Color": "pink"}
    assert P.model_preference({**unk, "Color": "pink"}, t, {"Material": ["denim"]}) == \
        {**t, "Color": "pink", "Material": tk.UNKNOWN}
    assert P.model_preference({**unk, "Color": "pink"}, {}) == {**unk, "Color": "pink"}


def test_make_demo_appearance_flag(tmp_path):
    assert data_main(["make-demo", "--out", str(tmp_path / "d"), "--appearance"]) == 0
    ds = SafeDataset(tmp_path / "d")
    assert len(ds.appearance) == 160 and set(ds.appearance[0]) == {"body_shape", "height", "skin_tone"}
    assert ds.meta["generator"]["appearance"] is True and (tmp_path / "d" / "truth" / "appearance_rules.json").is_file()
    assert data_main(["validate", str(tmp_path / "d"), "--no-images"]) == 0
