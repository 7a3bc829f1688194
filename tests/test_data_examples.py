"""Stage-1/2/3 examples, PFITB/GOR task rows, image preprocessing/latents, and the grain batch pipeline."""
import json
import warnings

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from dualfashion_jax.data import examples as E
from dualfashion_jax.data.format import SafeDataset, sentence_text
from dualfashion_jax.data.images import ItemImages, preprocess
from dualfashion_jax.data.pipeline import BatchIterator
from dualfashion_jax.data.tiny import make_tiny_dataset
from dualfashion_jax.text import tokenizer as tk

L = 96


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return SafeDataset(make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "ds", num_items=30, rows_per_split=8))


@pytest.fixture(scope="module")
def tok(ds, tmp_path_factory):
    texts = [tk.caption_json(v["elements"]) for v in ds.item_info.values()]
    texts += [sentence_text(c) for c in ds.categories.values()] + [tk.caption_json({})]
    return tk.build_test_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=150, max_length=L)


@pytest.fixture(scope="module")
def stage2(ds, tok):
    return E.Stage2Source(ds, tok, split="train", use_latents=False)


def test_preprocess_short_side_resize_and_centre_crop():
    px = np.zeros((10, 30, 3), np.uint8)
    px[:, :10, 0] = px[:, 10:20, 1] = px[:, 20:, 2] = 255  # red | green | blue columns
    out = preprocess(Image.fromarray(px), 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out == [0, 255, 0]).all()  # the centre third
    big = preprocess(Image.fromarray(px), 20)  # bicubic x2 then crop the centre 20 columns of 60
    assert big.shape == (20, 20, 3) and (big[:, 5:15] == [0, 255, 0]).all()


def test_stage1_examples(ds, tok):
    src = E.Stage1Source(ds, tok, use_latents=False)
    assert len(src) == 30
    ex = src[4]
    rec = ds.stage1[4]
    assert ex["images"].shape == (16, 16, 3) and ex["images"].dtype == np.uint8 and int(ex["ids"]) == rec["iid"]
    np.testing.assert_array_equal(ex["images"], ItemImages(ds)(rec["iid"]))
    ids, mask = tok.encode([rec["re_caption"]])
    np.testing.assert_array_equal(ex["re_caption_ids"], ids[0])
    np.testing.assert_array_equal(ex["re_caption_mask"], mask[0])
    assert "re_caption_label_mask" not in ex
    assert ex["caption_label_mask"].sum() > 0 and ex["caption_ids"].shape == (L,)


def test_stage2_example_contents(ds, tok, stage2):
    t = ds.split("train")
    assert len(stage2) == 4 * len(t)
    ex = stage2[4 * 3 + 2]  # row 3, target slot 2
    iid, cid, uid = int(t.outfits[3, 2]), int(t.category[3, 2]), int(t.uids[3])
    assert (int(ex["ids"]), int(ex["cid"]), int(ex["uid"]), int(ex["oid"])) == (iid, cid, uid, int(t.oids[3]))
    imgs = ItemImages(ds)
    np.testing.assert_array_equal(ex["target_images"], imgs(iid))
    np.testing.assert_array_equal(ex["context_images"], imgs.many(t.outfits[3, [0, 1, 3]]))
    assert ex["context_images"].shape == (3, 16, 16, 3)
    pref = tk.caption_json(ds.preference("train")[uid][cid]["Frequency"])
    assert tok.decode(ex["pref_ids"]) == [pref]
    assert tok.decode(ex["sentence_ids"]) == [sentence_text(ds.categories[cid])]
    want = tok.encode_caption(tk.caption_json(ds.item_info[iid]["elements"]))
    for got, exp in zip((ex["caption_ids"], ex["caption_mask"], ex["caption_label_mask"]), want):
        np.testing.assert_array_equal(got, exp)
    cached = E.Stage2Source(ds, tok, split="train", use_latents=False, cache_items=64)
    for _ in range(2):  # miss, then hit
        got = cached[4 * 3 + 2]
        assert all(np.array_equal(got[k], ex[k]) for k in ex)


def test_stage2_missing_captions_error_or_skip(ds, tok, tmp_path):
    import shutil

    from dualfashion_jax.data.writer import DatasetWriter

    root = tmp_path / "ds"
    shutil.copytree(ds.root, root)
    t = ds.split("train")
    gone = int(t.outfits[0, 1])
    DatasetWriter(root).write_item_info({k: v for k, v in ds.item_info.items() if k != gone})
    with pytest.raises(KeyError, match=rf"item_info.json: 1 item\(s\) of split 'train' have no caption, first: \[{gone}\]"):
        E.Stage2Source(SafeDataset(root), tok, use_latents=False)
    src = E.Stage2Source(SafeDataset(root), tok, use_latents=False, missing_captions="skip")
    n = int((t.outfits == gone).sum())
    assert src.num_skipped == n and len(src) == 4 * len(t) - n
    assert gone not in {int(src[i]["ids"]) for i in range(len(src))}


def test_stage3_and_task_rows(ds, tok):
    s3 = E.Stage3Source(ds, tok)
    ex = s3[0]
    assert s3.n_aug == 3 and ex["caption_ids"].shape == (3, L) and ex["caption_label_mask"].sum() > 0
    assert tok.decode(ex["pref_ids"]) == [tk.caption_json({})]
    rows = E.TaskRows(ds, "test")
    r = rows[5]
    t, f, c = ds.split("test"), ds.fitb("test"), ds.candidates("test")
    assert r.fitb_outfit == tuple(f.outfits[5]) and r.fitb_outfit[r.blank] == 0
    assert r.target == c.candidates[5, 0] == r.candidates[0] and r.outfit == tuple(t.outfits[5])
    assert r.history == ds.history("test")[r.uid] and len(r.preferences) == len(r.sentences) == 4
    assert json.loads(r.preferences[r.blank]) == ds.preference("test")[r.uid][r.categories[r.blank]]["Frequency"]


class _Recorder:
    """Wraps a CaptionTokenizer and records every text the sources hand it."""

    def __init__(self, tok, seen):
        self.tok, self.seen = tok, seen

    def encode_caption(self, s, **kw):
        self.seen.append(s)
        return self.tok.encode_caption(s, **kw)

    def encode(self, texts):
        self.seen += list(texts)
        return self.tok.encode(texts)


def test_distinct_texts_are_exactly_what_the_sources_tokenize(ds, tok):
    for src in (E.Stage1Source(ds, tok, use_latents=False), E.Stage2Source(ds, tok, use_latents=False),
                E.Stage3Source(ds, tok)):
        seen = []
        src.texts.tok = _Recorder(tok, seen)
        for i in range(len(src)):
            src[i]
        distinct = src.distinct_texts()
        assert len(distinct) == len(set(distinct)) and set(distinct) == set(seen), type(src).__name__


def test_check_truncation_counts_and_an_unfitting_scaffold_is_an_error(ds, tok):
    n = tok.check_scaffold()
    texts = E.Stage2Source(ds, tok, use_latents=False).distinct_texts()
    n_cut = sum(k > n for k in tok.lengths(texts))
    assert 0 < n_cut < len(texts)
    short = tk.CaptionTokenizer.from_pretrained(tok.source, max_length=n)
    with pytest.warns(tk.TruncationWarning, match=f"stage2 texts: {n_cut} of {len(texts)} texts .*max_length={n}"):
        found = E.check_truncation(E.Stage2Source(ds, short, use_latents=False), "stage2 texts")
    assert found.count == n_cut and found.first in texts
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert E.check_truncation(E.Stage3Source(ds, tok), "stage3 texts").count == 0
    too_short = tk.CaptionTokenizer.from_pretrained(tok.source, max_length=n - 1)
    with pytest.raises(tk.TokenizerError, match="caption scaffold"):
        E.check_truncation(E.Stage1Source(ds, too_short, use_latents=False), "stage1 texts")


def test_latents_are_used_when_present(ds, tok, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(ds.root, root)
    lat = np.random.default_rng(0).normal(size=(31, 2, 2, 16)).astype(np.float32)
    (root / "latents").mkdir()
    np.save(root / "latents" / "latents.npy", lat)
    d2 = SafeDataset(root)
    src = E.Stage2Source(d2, tok)
    ex = src[1]
    t = d2.split("train")
    np.testing.assert_array_equal(ex["target_latents"], lat[t.outfits[0, 1]])
    np.testing.assert_array_equal(ex["context_latents"], lat[t.outfits[0, [0, 2, 3]]])
    (root / "latents" / "latents.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(ValueError, match="latents.npy: cannot read latents"):
        E.Stage2Source(SafeDataset(root), tok)


def test_missing_image_is_named_at_load(ds, tok, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(ds.root, root)
    d2 = SafeDataset(root)
    iid = int(d2.split("train").outfits[0, 0])
    (root / "images" / d2.image_paths[iid]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"item {iid} image .*{d2.image_paths[iid]} not found"):
        E.Stage2Source(d2, tok, use_latents=False)[0]
    (root / "images" / d2.image_paths[iid]).write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match=rf"item {iid} image .* cannot be decoded"):
        E.Stage2Source(d2, tok, use_latents=False)[0]


def _run(it, n=None):
    out = []
    for b in it:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def test_pipeline_resume_is_bitwise(stage2):
    kw = dict(global_batch_size=4, seed=3, num_epochs=2, process_index=0, process_count=1)
    full = _run(BatchIterator(stage2, **kw))
    assert len(full) == 2 * (len(stage2) // 4) and full[0]["target_images"].shape == (4, 16, 16, 3)
    it = BatchIterator(stage2, **kw)
    _run(it, 11)  # crosses the epoch boundary (8 batches per epoch)
    state = json.loads(json.dumps(it.get_state()))
    assert state["epoch"] == 1 and state["position"] == 3
    resumed = BatchIterator(stage2, **kw)
    resumed.set_state(state)
    rest = _run(resumed)
    assert len(rest) == len(full) - 11
    for a, b in zip(full[11:], rest):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(full[0]["ids"], full[8]["ids"])  # a fresh permutation each epoch
    with pytest.raises(ValueError, match="seed=3 does not match this loader's seed=4"):
        BatchIterator(stage2, **{**kw, "seed": 4}).set_state(state)


def test_pipeline_two_processes_are_disjoint_and_cover(stage2):
    kw = dict(global_batch_size=8, seed=0, num_epochs=1)
    a = _run(BatchIterator(stage2, process_index=0, process_count=2, **kw))
    b = _run(BatchIterator(stage2, process_index=1, process_count=2, **kw))
    single = _run(BatchIterator(stage2, process_index=0, process_count=1, **kw))
    assert len(a) == len(b) == len(single) == len(stage2) // 8
    key = lambda x: list(zip(x["oid"].tolist(), x["ids"].tolist()))  # noqa: E731  (unique per example)
    for xa, xb, xs in zip(a, b, single):
        assert xa["ids"].shape == (4,) and not set(key(xa)) & set(key(xb))
        assert sorted(key(xa) + key(xb)) == sorted(key(xs))
    with pytest.raises(ValueError, match="multiple of process_count 3"):
        BatchIterator(stage2, global_batch_size=8, process_index=0, process_count=3)


def test_pipeline_global_arrays_on_a_mesh(stage2):
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    sh = NamedSharding(mesh, P(("data", "fsdp")))
    it = BatchIterator(stage2, global_batch_size=8, seed=0, num_epochs=1, sharding=sh)
    g = next(it)
    local = BatchIterator(stage2, global_batch_size=8, seed=0, num_epochs=1, process_index=0, process_count=1)
    ref = next(local)
    assert isinstance(g["target_images"], jax.Array) and g["target_images"].sharding == sh
    assert g["context_images"].shape == (8, 3, 16, 16, 3)
    np.testing.assert_array_equal(np.asarray(g["caption_ids"]), ref["caption_ids"])
