"""Real DiFashion split files -> safe format: known facts, image policies, and named errors on bad inputs.

Reads `../shared/data/difashion_splits` through the `splits_dir` fixture (skips when absent). Only the splits a
test needs are converted, once per module.
"""
import json

import numpy as np
import pytest
from PIL import Image

from dualfashion_jax.data import difashion
from dualfashion_jax.data.cli import main as data_main
from dualfashion_jax.data.format import SafeDataset
from dualfashion_jax.data.pickled import ConversionInputError, UntrustedPickleError
from dualfashion_jax.data.validate import ValidationError


def _quiet(_):
    pass


@pytest.fixture(scope="module")
def ifashion(splits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ifashion")
    rep = difashion.convert_real(splits_dir / "ifashion", out, dataset="ifashion", trust_pickle=True,
                                 splits=("valid", "test"), log=_quiet)
    return SafeDataset(out), rep


@pytest.fixture(scope="module")
def polyvore(splits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("polyvore")
    rep = difashion.convert_real(splits_dir / "polyvore", out, dataset="polyvore", trust_pickle=True,
                                 splits=("train", "test"), log=_quiet)
    return SafeDataset(out), rep


def test_ifashion_known_facts(ifashion):
    ds, rep = ifashion
    assert ds.num_items == 344_186 and (ds.iid_category[1:] >= 0).all()  # rebuilt map covers every item
    assert any("rebuilt it by inverting map/cate_iid_dict.npy (344186 items)" in n for n in rep.notices)
    assert ds.meta["num_categories"] == 50 and ds.categories[0] == "skirt"
    for split, rows, users in (("test", 2207, 1450), ("valid", 2547, 1409)):
        t = ds.split(split)
        assert (len(t), len(set(t.uids.tolist()))) == (rows, users)
    t, f, c = ds.split("test"), ds.fitb("test"), ds.candidates("test")
    assert (t.uids[0], t.oids[0], t.outfits[0].tolist(), t.category[0].tolist()) == (
        9239, 17895, [134195, 154420, 232152, 156333], [29, 38, 37, 46])
    blank = np.argmax(f.outfits == 0, axis=1)
    gt_blank = t.outfits[np.arange(len(t)), blank]
    assert (c.candidates[:, 0] == gt_blank).mean() == 1.0
    hist = ds.history("test")
    blank_cat = t.category[np.arange(len(t)), blank]
    assert all(int(c_) in hist[int(u)] for u, c_ in zip(t.uids, blank_cat))  # 2,207 / 2,207
    assert any("images" in a for a in rep.absent) and any("item_info" in a for a in rep.absent)


def test_polyvore_known_facts(polyvore):
    ds, _ = polyvore
    tr = ds.split("train")
    assert len(tr) == 26_921 and len(set(tr.uids.tolist())) == 517
    uniq, counts = np.unique(np.stack([tr.uids, tr.oids], 1), axis=0, return_counts=True)
    dups = sorted(map(tuple, uniq[counts > 1].tolist()))
    assert dups == [(226, 14630), (286, 18898)]
    t, f, c = ds.split("test"), ds.fitb("test"), ds.candidates("test")
    assert len(t) == 3631
    assert (c.candidates[:, 0] == t.outfits[f.outfits == 0]).all()
    assert ds.num_items == 119_202


def test_cli_info_and_validate_on_converted(ifashion, capsys):
    ds, _ = ifashion
    assert data_main(["info", str(ds.root)]) == 0
    out = capsys.readouterr().out
    assert "test: 2207 rows, 1450 users" in out and "items 344186" in out
    assert data_main(["validate", str(ds.root)]) == 0
    assert "OK" in capsys.readouterr().out


# ------------------------------------------------------------------------ stand-in images on real splits
@pytest.fixture(scope="module")
def src_with_images(splits_dir, tmp_path_factory):
    """iFashion test split + all_item_image_paths.npy + tiny PNGs for the items of rows 0..2 only."""
    src = tmp_path_factory.mktemp("src")
    real = splits_dir / "ifashion"
    (src / "map").mkdir()
    (src / "map" / "cate_iid_dict.npy").symlink_to(real / "map" / "cate_iid_dict.npy")
    for n in ("id_cate_dict.npy", "test_grd_dict.npy", "fitb_test.npy", "fitb_test_retrieval_candidates.npy",
              "test_history.npy"):
        (src / n).symlink_to(real / n)
    grd = np.load(real / "test_grd_dict.npy", allow_pickle=True).item()
    cand = np.load(real / "fitb_test_retrieval_candidates.npy", allow_pickle=True).item()
    have = set()
    for r in range(3):
        u, o = grd["uids"][r], grd["oids"][r]
        have |= set(grd["outfits"][r]) | {int(i) for i in cand[u][o]}
    paths = np.array([""] + [f"{i % 97}/{i}.jpg" for i in range(1, 344_187)], dtype=object)
    np.save(src / "all_item_image_paths.npy", paths, allow_pickle=True)
    for i in have:
        p = src / "images" / paths[i]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10, 3), i % 255, np.uint8)).save(p, format="PNG")
    return src, sorted(have), grd


def test_missing_images_error_policy_lists_them(src_with_images, tmp_path):
    src, have, _ = src_with_images
    with pytest.raises(ValidationError, match=r"referenced item image\(s\) missing, first: \[\(\d+, '\d+/\d+\.jpg'\)"):
        difashion.convert_real(src, tmp_path / "out", dataset="ifashion", trust_pickle=True, splits=("test",),
                               log=_quiet)


def test_missing_images_skip_policy_drops_rows(src_with_images, tmp_path):
    src, have, grd = src_with_images
    rep = difashion.convert_real(src, tmp_path / "out", dataset="ifashion", trust_pickle=True, splits=("test",),
                                 missing_images="skip", log=_quiet)
    ds = SafeDataset(tmp_path / "out")
    t = ds.split("test")
    assert len(t) >= 3 and rep.dropped_rows["test"] == 2207 - len(t)
    assert t.oids[:3].tolist() == list(grd["oids"][:3])
    assert set(t.outfits.ravel().tolist()) <= set(have)
    assert all(i in have for per in ds.history("test").values() for v in per.values() for i in v)
    assert len(rep.missing_images) > 0 and ds.meta["dropped_rows"] == {"test": rep.dropped_rows["test"]}
    assert ds.image_file(have[0]).is_file()
    assert (ds.root / "images").is_symlink()


# ---------------------------------------------------------------------------------- bad inputs, named
def _save(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array(obj, dtype=object), allow_pickle=True)


@pytest.fixture
def mini_src(tmp_path):
    """A hand-made 8-item source folder (pickled dicts, as upstream)."""
    src = tmp_path / "src"
    _save(src / "id_cate_dict.npy", {0: "skirt", 1: "shoe", 2: "bag", 3: "hat"})
    _save(src / "map" / "cate_iid_dict.npy", {0: [1, 2], 1: [3, 4], 2: [5, 6], 3: [7, 8]})
    grd = {"uids": [5, 6], "oids": [10, 11], "outfits": [[1, 3, 5, 7], [2, 4, 6, 8]],
           "category": [[0, 1, 2, 3], [0, 1, 2, 3]]}
    _save(src / "test_grd_dict.npy", grd)
    _save(src / "fitb_test.npy", {**grd, "outfits": [[1, 0, 5, 7], [0, 4, 6, 8]]})
    _save(src / "fitb_test_retrieval_candidates.npy", {5: {10: [3, 1, 2, 5, 6]}, 6: {11: [2, 1, 3, 4, 5]}})
    _save(src / "test_history.npy", {5: {0: [1, 2], 1: [3]}, 6: {2: [5, 6]}})
    el = {"Color": "red", "Material": "wool", "Design features": "zip", "Clothing Fashion Style": "casual"}
    _save(src / "processed_info" / "stage2_ifashion" / "item_info.npy", {i: {"elements": el} for i in range(1, 9)})
    _save(src / "processed_info" / "stage2_ifashion_test" / "test_preference.npy",
          {5: {1: {"frequency": el}}})
    _save(src / "processed_info" / "stage3_data_augmentation" / "data_augmentation.npy",
          {1: [json.dumps(el), el], 2: [json.dumps(el)]})
    return src, grd


def test_mini_source_converts_with_text(mini_src, tmp_path):
    src, _ = mini_src
    rep = difashion.convert_real(src, tmp_path / "out", dataset="polyvore", trust_pickle=True, log=_quiet)
    ds = SafeDataset(tmp_path / "out")
    assert {"item_info", "preference_test", "augmented"} <= set(rep.found)
    assert ds.preference("test")[5][1]["Frequency"]["Color"] == "red"  # 'frequency' normalised
    assert len(ds.augmented[1]) == 2 and ds.item_info[3]["elements"]["Material"] == "wool"
    assert rep.rows == {"test": 2} and "train (train.npy/train_grd_dict.npy)" in rep.absent


def test_reconversion_clears_stale_files_and_foreign_folders_are_refused(mini_src, tmp_path):
    src, _ = mini_src
    out = tmp_path / "out"
    difashion.convert_real(src, out, dataset="polyvore", trust_pickle=True, log=_quiet)
    (out / "splits" / "train.npz").write_bytes(b"stale")
    difashion.convert_real(src, out, dataset="polyvore", trust_pickle=True, log=_quiet)
    assert not (out / "splits" / "train.npz").exists() and SafeDataset(out).available_splits() == ["test"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an earlier real-data conversion"):
        difashion.convert_real(src, tmp_path / "mine", dataset="polyvore", trust_pickle=True, log=_quiet)


def test_stage1_records_resolve_ids_and_image_paths(tmp_path):
    from dualfashion_jax.data import difashion_text as T

    cap = '{"Category": "skirt", "Color": "red", "Material": "wool"}'
    p = tmp_path / "text_to_image_30k.json"
    p.write_text(json.dumps([{"org_caption": cap, "re_caption": "A red wool skirt.", "image": "0/b.jpg"},
                             {"caption": cap, "item_id": 3}]))
    recs = T.convert_stage1(p, 4, ["", "0/a.jpg", "x/b.jpg", "1/c.jpg", ""])
    assert recs == [{"iid": 2, "caption": cap, "re_caption": "A red wool skirt."},  # matched by file name
                    {"iid": 3, "caption": cap, "re_caption": cap}]
    p.write_text(json.dumps([{"caption": cap, "image": "nowhere.jpg"}]))
    with pytest.raises(ConversionInputError, match=r"record 0: no item id field .* 'nowhere.jpg' is not in"):
        T.convert_stage1(p, 4, ["", "0/a.jpg"])
    p.write_text(json.dumps([{"caption": "{Color: red", "iid": 1}]))
    with pytest.raises(ConversionInputError, match=r"text_to_image_30k.json: record 0: caption '\{Color: red' is not"):
        T.convert_stage1(p, 4, None)
    p.write_text(json.dumps([{"caption": cap, "iid": 1}])[:-9])
    with pytest.raises(ConversionInputError, match=r"not valid JSON \(truncated\?\)"):
        T.convert_stage1(p, 4, None)


def test_untrusted_pickle_refused(mini_src, tmp_path, capsys):
    src, _ = mini_src
    with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
        difashion.convert_real(src, tmp_path / "out", dataset="polyvore", log=_quiet)
    assert "Unpickling can run arbitrary code" in capsys.readouterr().err
    assert data_main(["convert-real", "--src", str(src), "--out", str(tmp_path / "o"), "--dataset", "polyvore"]) == 2
    assert not (tmp_path / "out").exists()


def test_wrong_category_in_source_is_named(mini_src, tmp_path):
    src, grd = mini_src
    _save(src / "test_grd_dict.npy", {**grd, "category": [[0, 1, 2, 3], [0, 2, 1, 3]]})
    with pytest.raises(ValidationError, match=r"test_grd_dict.npy: row 1 \(uid 6, oid 11\) slot 1: item 4 has "
                                              r"category 1 in the category map, but the table says 2"):
        difashion.convert_real(src, tmp_path / "out", dataset="polyvore", trust_pickle=True, log=_quiet)


def test_user_without_history_is_named(mini_src, tmp_path):
    src, _ = mini_src
    _save(src / "test_history.npy", {5: {0: [1, 2], 1: [3]}})
    with pytest.raises(ValidationError, match=r"test_history.npy: row 1 \(uid 6, oid 11\): user 6 has no history"):
        difashion.convert_real(src, tmp_path / "out", dataset="polyvore", trust_pickle=True, log=_quiet)


def test_truncated_npy_is_named(mini_src, tmp_path):
    src, _ = mini_src
    p = src / "fitb_test.npy"
    p.write_bytes(p.read_bytes()[:70])
    with pytest.raises(ConversionInputError, match=r"fitb_test.npy: cannot read .npy \(truncated"):
        difashion.convert_real(src, tmp_path / "out", dataset="polyvore", trust_pickle=True, log=_quiet)


def test_malformed_augmented_caption_is_named(mini_src, tmp_path):
    src, _ = mini_src
    _save(src / "processed_info" / "stage3_data_augmentation" / "data_augmentation.npy",
          {2: ['{"Color": "red", "Material": wool}']})
    with pytest.raises(ConversionInputError, match=r"data_augmentation.npy: item 2: caption '\{\"Color\": \"red\", "
                                                   r"\"Material\": wool\}' is not valid JSON"):
        difashion.convert_real(src, tmp_path / "out", dataset="polyvore", trust_pickle=True, log=_quiet)


def test_candidates_must_start_with_ground_truth(mini_src, tmp_path):
    src, _ = mini_src
    _save(src / "fitb_test_retrieval_candidates.npy", {5: {10: [1, 3, 2, 5, 6]}, 6: {11: [2, 1, 3, 4, 5]}})
    with pytest.raises(ValidationError, match=r"retrieval_candidates.npy: row 0 \(uid 5, oid 10\) candidates\[0\] = 1 "
                                              r"but the ground-truth blank item is 3"):
        difashion.convert_real(src, tmp_path / "out", dataset="polyvore", trust_pickle=True, log=_quiet)
