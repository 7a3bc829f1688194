"""Safe dataset format: round trip, structural errors on truncated/malformed files, cross-file validation errors."""
import json
import shutil

import numpy as np
import pytest

from dualfashion_jax.data import format as F
from dualfashion_jax.data.tiny import make_tiny_dataset
from dualfashion_jax.data.validate import ValidationError, validate_dataset
from dualfashion_jax.data.writer import DatasetWriter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "ds", num_items=30, rows_per_split=6)


@pytest.fixture
def copy(tiny, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(tiny, dst)
    return dst


def test_tiny_dataset_validates_and_round_trips(tiny):
    ds = F.SafeDataset(tiny)
    rep = validate_dataset(ds)
    assert "images" in rep.checked and "test_history" in rep.checked and not rep.missing_images
    t, f, c = ds.split("test"), ds.fitb("test"), ds.candidates("test")
    assert t.outfits.shape == (6, 4) and t.outfits.dtype == np.int64
    assert ((f.outfits == 0).sum(1) == 1).all()
    np.testing.assert_array_equal(c.candidates[:, 0], t.outfits[f.outfits == 0])
    h = ds.history("test")
    assert all(isinstance(u, int) and all(isinstance(k, int) for k in per) for u, per in h.items())
    assert ds.iid_category[0] == -1 and ds.image_file(0) is None and ds.image_file(1).is_file()
    assert ds.available_splits() == ["train", "valid", "test"]


def test_writer_refuses_bad_input(tmp_path):
    w = DatasetWriter(tmp_path)
    with pytest.raises(F.FormatError, match=r"'outfits' must have shape \[N, 4\]"):
        w.write_split("train", [1], [1], [[1, 2, 3]], [[0, 1, 2]])
    with pytest.raises(F.FormatError, match="row 0 has item id < 1"):
        w.write_split("train", [1], [1], [[1, 2, 0, 4]], [[0, 1, 2, 3]])
    with pytest.raises(F.FormatError, match="different row counts"):
        w.write_candidates("test", [1, 2], [1], [[1, 2, 3, 4, 5]] * 2)
    with pytest.raises(F.FormatError, match="object array"):
        F.write_npz(tmp_path / "x.npz", a=np.array([{"a": 1}], dtype=object))
    with pytest.raises(F.FormatError, match="unknown split"):
        w.write_history("training", {})
    with pytest.raises(F.FormatError, match="ids must be integers"):
        w.write_history("train", {1: {0: [2.5]}})
    with pytest.raises(F.FormatError, match="user 1 category 0: item ids must be >= 1"):
        w.write_history("train", {1: {0: [0]}})
    with pytest.raises(F.FormatError, match=r"iid_category\[0\]"):
        w.write_items(np.array([0, 1, 2]))


@pytest.mark.parametrize("rel, cut", [("splits/test.npz", 60), ("splits/test_history.json", 25),
                                       ("items.npz", 100), ("categories.json", 10)])
def test_truncated_files_raise_naming_the_file(copy, rel, cut):
    p = copy / rel
    p.write_bytes(p.read_bytes()[:cut])
    ds = F.SafeDataset(copy)
    with pytest.raises(F.FormatError, match="truncated or corrupt") as e:
        {"splits/test.npz": lambda: ds.split("test"), "splits/test_history.json": lambda: ds.history("test"),
         "items.npz": lambda: ds.iid_category, "categories.json": lambda: ds.categories}[rel]()
    assert str(p) in str(e.value)


def test_meta_and_field_errors(copy):
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "format_version": 7}))
    with pytest.raises(F.FormatError, match="format_version 7"):
        F.SafeDataset(copy)
    (copy / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "num_items"}))
    with pytest.raises(F.FormatError, match=r"missing key\(s\) \['num_items'\]"):
        F.SafeDataset(copy)
    (copy / "meta.json").write_text(json.dumps(meta))
    F.write_npz(copy / "splits" / "valid.npz", uids=np.ones(2, np.int64), oids=np.ones(2, np.int64),
                outfits=np.ones((2, 4), np.int64))
    with pytest.raises(F.FormatError, match=r"valid.npz: missing field\(s\) \['category'\]"):
        F.SafeDataset(copy).split("valid")
    F.write_json(copy / "image_paths.json", ["", "a.png"])
    with pytest.raises(F.FormatError, match="image_paths.json: 2 entries, expected num_items"):
        F.SafeDataset(copy).image_paths


def _rewrite_split(root, name, **changes):
    p = root / "splits" / f"{name}.npz"
    d = dict(np.load(p))
    d.update(changes)
    F.write_npz(p, **d)


def test_wrong_category_is_named(copy):
    t = F.SafeDataset(copy).split("test")
    cat = t.category.copy()
    cat[2, 1] = (cat[2, 1] + 1) % 6
    while cat[2, 1] in np.delete(cat[2], 1):
        cat[2, 1] = (cat[2, 1] + 1) % 6
    _rewrite_split(copy, "test", category=cat)
    with pytest.raises(ValidationError, match=rf"test.npz: row 2 \(uid {t.uids[2]}, oid {t.oids[2]}\) slot 1: "
                                              rf"item {t.outfits[2, 1]} has category"):
        validate_dataset(F.SafeDataset(copy))


def test_fitb_and_candidate_misalignment_are_named(copy):
    ds = F.SafeDataset(copy)
    f, c = ds.fitb("valid"), ds.candidates("valid")
    two = f.outfits.copy()
    two[0, np.argmax(two[0] != 0)] = 0
    _rewrite_split(copy, "fitb_valid", outfits=two)
    with pytest.raises(ValidationError, match=r"fitb_valid.npz: row 0 .* must have exactly one 0"):
        validate_dataset(F.SafeDataset(copy))
    _rewrite_split(copy, "fitb_valid", outfits=f.outfits)
    cand = c.candidates.copy()
    cand[3, 0] = cand[3, 1] if cand[3, 1] != cand[3, 0] else cand[3, 0] % 30 + 1
    _rewrite_split(copy, "fitb_valid_candidates", candidates=cand)
    with pytest.raises(ValidationError, match=r"candidates.npz: row 3 .* candidates\[0\] = .* ground-truth blank"):
        validate_dataset(F.SafeDataset(copy))
    _rewrite_split(copy, "fitb_valid_candidates", candidates=c.candidates)
    _rewrite_split(copy, "fitb_valid", uids=f.uids[::-1].copy())
    with pytest.raises(ValidationError, match=r"fitb_valid.npz: row \d+ uid .* differs"):
        validate_dataset(F.SafeDataset(copy))


def test_history_category_and_missing_image_are_named(copy):
    ds = F.SafeDataset(copy)
    h = json.loads(json.dumps(ds.history("train")))  # a copy (the reader caches its dict)
    h = {int(u): {int(c): v for c, v in per.items()} for u, per in h.items()}
    u = next(iter(h))
    other = int(np.flatnonzero(ds.iid_category == 1)[0])
    h[u][0] = [other]
    DatasetWriter(copy).write_history("train", h)
    with pytest.raises(ValidationError, match=rf"train_history.json: user {u} category 0: item {other} has category 1"):
        validate_dataset(F.SafeDataset(copy))
    DatasetWriter(copy).write_history("train", ds.history("train"))
    iid = int(ds.split("test").outfits[0, 0])
    (copy / "images" / ds.image_paths[iid]).unlink()
    with pytest.raises(ValidationError, match=rf"1 referenced item image\(s\) missing, first: \[\({iid}, "):
        validate_dataset(F.SafeDataset(copy))
    assert validate_dataset(F.SafeDataset(copy), check_images=False).missing_images == []


def test_text_files_structure(copy):
    F.write_json(copy / "text" / "item_info.json", {"1": {"elements": "red"}})
    with pytest.raises(F.FormatError, match="item_info.json: item 1: expected"):
        F.SafeDataset(copy).item_info
    F.write_json(copy / "text" / "stage1.json", [{"iid": 999, "caption": "{}", "re_caption": "{}"}])
    with pytest.raises(F.FormatError, match="stage1.json: record 0: iid 999 is not in 1..30"):
        F.SafeDataset(copy).stage1
    (copy / "text" / "augmented.json").write_text('{"1": ["{\\"Color\\"')
    with pytest.raises(F.FormatError, match="augmented.json: not valid JSON"):
        F.SafeDataset(copy).augmented
