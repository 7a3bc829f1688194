"""Issue #12 probes: a failed rerun, a bad input or a partial results folder ends in a named error and loses nothing.

convert-real reruns (atomic replace), `data validate` reading every file training/generation read (and refusing
repeated (uid, oid) rows), `evaluate` on a partial results folder, `generate --out FILE`, and pickled `.pth` files.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dualfashion_jax.data import difashion
from dualfashion_jax.data.cli import main as data_main
from dualfashion_jax.data.format import SafeDataset, write_npz
from dualfashion_jax.data.validate import ValidationError, validate_dataset


def _save(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array(obj, dtype=object), allow_pickle=True)


def _tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (symlinks: their target), so 'unchanged' is checked byte for byte."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            out[rel] = "link:" + os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def src(tmp_path):
    """A hand-made 8-item DiFashion source folder (pickled dicts, as upstream)."""
    s = tmp_path / "src"
    _save(s / "id_cate_dict.npy", {0: "skirt", 1: "shoe", 2: "bag", 3: "hat"})
    _save(s / "map" / "cate_iid_dict.npy", {0: [1, 2], 1: [3, 4], 2: [5, 6], 3: [7, 8]})
    grd = {"uids": [5, 6], "oids": [10, 11], "outfits": [[1, 3, 5, 7], [2, 4, 6, 8]],
           "category": [[0, 1, 2, 3], [0, 1, 2, 3]]}
    _save(s / "test_grd_dict.npy", grd)
    _save(s / "fitb_test.npy", {**grd, "outfits": [[1, 0, 5, 7], [0, 4, 6, 8]]})
    _save(s / "fitb_test_retrieval_candidates.npy", {5: {10: [3, 1, 2, 5, 6]}, 6: {11: [2, 1, 3, 4, 5]}})
    _save(s / "test_history.npy", {5: {0: [1, 2], 1: [3]}, 6: {2: [5, 6]}})
    el = {"Color": "red", "Material": "wool", "Design features": "zip", "Clothing Fashion Style": "casual"}
    _save(s / "item_info.npy", {i: {"elements": el} for i in range(1, 9)})
    _save(s / "test_preference.npy", {5: {1: {"Frequency": el}}, 6: {0: {"Frequency": el}}})
    return s


def _convert_cli(src, out):
    return data_main(["convert-real", "--src", str(src), "--out", str(out), "--dataset", "polyvore",
                      "--trust-pickle"])


# ------------------------------------------------------------------------------ 1. convert-real reruns
def test_failed_rerun_leaves_the_earlier_conversion_byte_identical(src, tmp_path, capsys):
    out = tmp_path / "data"
    assert _convert_cli(src, out) == 0
    (out / "latents").mkdir()
    np.save(out / "latents" / "latents.npy", np.zeros((9, 2, 2, 4), np.float32))
    (out / "notes.txt").write_text("my notes")
    before = _tree(out)
    assert "latents/latents.npy" in before and "splits/test.npz" in before
    capsys.readouterr()

    truncated = tmp_path / "truncated"
    shutil.copytree(src, truncated)
    p = truncated / "test_grd_dict.npy"
    p.write_bytes(p.read_bytes()[:60])
    assert _convert_cli(truncated, out) == 1
    err = capsys.readouterr().err
    assert "test_grd_dict.npy: cannot read .npy (truncated" in err and f"{out} was left unchanged" in err
    assert _tree(out) == before

    (tmp_path / "empty").mkdir()
    assert _convert_cli(tmp_path / "empty", out) == 1
    err = capsys.readouterr().err
    assert "neither id_cate_dict.npy nor new_id_cate_dict.npy found" in err and "left unchanged" in err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty", "src", "truncated"]  # no leftovers

    # A successful rerun replaces the conversion: the old latents (of the old items) go, user files stay.
    _save(src / "test_history.npy", {5: {0: [1], 1: [3]}, 6: {2: [5, 6]}})
    rep = difashion.convert_real(src, out, dataset="polyvore", trust_pickle=True, log=lambda s: None)
    assert not (out / "latents").exists() and (out / "notes.txt").read_text() == "my notes"
    assert any("latents" in n and "rerun encode-latents" in n for n in rep.notices)
    assert SafeDataset(out).history("test")[5][0] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty", "src", "truncated"]


def test_fresh_conversion_that_fails_creates_nothing(src, tmp_path):
    (src / "fitb_test.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(ValueError, match=r"fitb_test.npy: cannot read .npy"):
        difashion.convert_real(src, tmp_path / "new", dataset="polyvore", trust_pickle=True, log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ------------------------------------------------------------------------------ 2. data validate reads everything
@pytest.fixture
def tiny(tmp_path):
    from dualfashion_jax.data.tiny import make_tiny_dataset

    return make_tiny_dataset(tmp_path / "tiny", num_items=24, rows_per_split=6)


def _repeat_row(root: Path, name: str, src_row: int, dst_row: int) -> tuple[int, int]:
    """Give row `dst_row` of splits/<name>.npz the (uid, oid) of `src_row`; returns that key."""
    p = root / "splits" / f"{name}.npz"
    with np.load(p, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for k in ("uids", "oids"):
        d[k][dst_row] = d[k][src_row]
    write_npz(p, **d)
    return int(d["uids"][src_row]), int(d["oids"][src_row])


def test_validate_reads_every_file_training_and_generation_read(tiny, capsys):
    assert data_main(["validate", str(tiny)]) == 0
    out = capsys.readouterr().out
    for name in ("text/test_preference", "text/train_preference", "text/item_info", "text/stage1", "text/augmented",
                 "image_paths", "images"):
        assert name in out, name


def test_validate_refuses_repeated_uid_oid_rows_of_a_generated_split(tiny, capsys):
    for name in ("test", "fitb_test", "fitb_test_candidates"):
        uid, oid = _repeat_row(tiny, name, 1, 4)
    assert data_main(["validate", str(tiny)]) == 1
    err = capsys.readouterr().err
    assert f"splits/test.npz: row 4 (uid {uid}, oid {oid}) repeats the (uid, oid) of row 1" in err
    assert "Traceback" not in err


def test_validate_lists_repeated_training_rows(tiny):
    for n in ("fitb_train.npz", "fitb_train_candidates.npz"):
        (tiny / "splits" / n).unlink()
    uid, oid = _repeat_row(tiny, "train", 0, 5)
    rep = validate_dataset(SafeDataset(tiny))
    assert any(f"row 5 (uid {uid}, oid {oid}) = row 0" in n for n in rep.notices)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["100"].__setitem__("0", {"Frequency": "red"}),
     r"test_preference.json: user 100 category 0: expected \{\"Frequency\": \{attribute: text\}\}"),
    (lambda p: p["100"].__setitem__("17", p["100"]["0"]),
     r"test_preference.json: user 100: category 17 is not in categories.json"),
])
def test_validate_names_bad_preference_entries(tiny, edit, message):
    p = tiny / "text" / "test_preference.json"
    prefs = json.loads(p.read_text())
    edit(prefs)
    p.write_text(json.dumps(prefs))
    with pytest.raises(ValidationError, match=message):
        validate_dataset(SafeDataset(tiny))


def test_validate_refuses_a_json_key_repeated_in_one_object(tiny):
    from dualfashion_jax.data.format import FormatError

    p = tiny / "text" / "test_preference.json"
    text = p.read_text()
    first = json.dumps({"100": json.loads(text)["100"]})[1:-1]
    p.write_text("{" + first + ", " + text[1:])  # user "100" twice: plain json would keep the last silently
    with pytest.raises(FormatError, match=r"test_preference.json: key '100' appears twice in one JSON object"):
        validate_dataset(SafeDataset(tiny))


def test_validate_names_bad_captions_and_latents(tiny):
    aug = tiny / "text" / "augmented.json"
    good = aug.read_text()
    aug.write_text(json.dumps({**json.loads(good), "3": ['{"Color": red}']}))
    with pytest.raises(ValidationError, match=r"augmented.json: item 3 caption 0: caption .* is not valid JSON"):
        validate_dataset(SafeDataset(tiny))
    aug.write_text(good)
    (tiny / "latents").mkdir()
    np.save(tiny / "latents" / "latents.npy", np.zeros((24, 2, 2, 4), np.float32))
    with pytest.raises(ValidationError, match=r"latents.npy: expected float \[num_items\+1=25, h, w, C\], got "
                                              r"float32 \[24, 2, 2, 4\]"):
        validate_dataset(SafeDataset(tiny))
    np.save(tiny / "latents" / "latents.npy", np.zeros((25, 2, 2, 4), np.float32))
    (tiny / "latents" / "meta.json").write_text('{"mode": ')
    with pytest.raises(ValidationError, match=r"latents/meta.json: not valid JSON"):
        validate_dataset(SafeDataset(tiny))
    (tiny / "latents" / "meta.json").write_text('{"mode": "mean"}')
    assert "latents" in validate_dataset(SafeDataset(tiny)).checked


# ------------------------------------------------------------------------------ 3. evaluate on a partial results dir
def _results(tiny: Path, out: Path, rows: list[int], settings_rows: int | None) -> Path:
    """A PFITB results dir for the given rows of the tiny test split (captions only; no image is read)."""
    from dualfashion_jax.data import records as R

    ds = SafeDataset(tiny)
    gt, fitb = ds.split("test"), ds.fitb("test")
    cap = json.dumps({"Color": "red", "Material": "wool", "Design features": "zip", "Clothing Fashion Style": "chic"})
    recs = []
    for r in rows:
        outfit, cats = tuple(int(x) for x in gt.outfits[r]), tuple(int(x) for x in gt.category[r])
        s = int(np.flatnonzero(fitb.outfits[r] == 0)[0])
        recs.append(R.Record(int(gt.uids[r]), int(gt.oids[r]), "pfitb", outfit, cats, (s,),
                             (R.GenEntry(s, 0, 0, f"img/{r}.png", cap),), (R.GrdEntry(s, outfit[s]),)))
    settings = {"model": "fake", "task": "pfitb", "split": "test"}
    R.write_records(out, recs, settings if settings_rows is None else {**settings, "rows": settings_rows})
    return out


def _evaluate(res, tiny, *extra):
    from dualfashion_jax.evaluators import cli

    return cli.main(["--results", str(res), "--data", str(tiny), "--metrics", "caption_parse_rate", "--no-progress",
                     *extra])


def test_evaluate_refuses_a_results_dir_with_a_missing_record(tiny, tmp_path, capsys):
    res = _results(tiny, tmp_path / "res", [0, 2], settings_rows=3)
    t = SafeDataset(tiny).split("test")
    assert _evaluate(res, tiny) == 2
    err = capsys.readouterr().err
    assert (f"records.json: 2 records but {res}/settings.json says the run has 3 rows, first missing (uid, oid): "
            f"[({int(t.uids[1])}, {int(t.oids[1])})]") in err and "--allow-partial" in err
    assert "Traceback" not in err and not (res / "report.json").exists()

    assert _evaluate(res, tiny, "--allow-partial") == 0
    rep = json.loads((res / "report.json").read_text())
    assert rep["settings"]["partial"] == "2 of 3 rows" and rep["settings"]["rows_expected"] == 3
    assert "\npartial: 2 of 3 rows" in (res / "report.md").read_text()
    assert "partial: 2 of 3 rows" in capsys.readouterr().out


def test_evaluate_complete_and_inconsistent_results(tiny, tmp_path, capsys):
    from dualfashion_jax.data import records as R

    res = _results(tiny, tmp_path / "full", [0, 1, 2], settings_rows=3)
    assert _evaluate(res, tiny) == 0
    rep = json.loads((res / "report.json").read_text())
    assert rep["settings"]["partial"] is False and "partial:" not in (res / "report.md").read_text()
    res = _results(tiny, tmp_path / "more", [0, 1, 2], settings_rows=2)
    assert _evaluate(res, tiny, "--allow-partial") == 2
    assert "3 records but" in capsys.readouterr().err
    recs, settings = R.read_records(_results(tiny, tmp_path / "norows", [0], settings_rows=None))
    assert R.check_complete(recs, settings, tmp_path / "norows") is None  # hand-made results: nothing to compare


# ------------------------------------------------------------------------------ 4. named errors, not tracebacks
def test_generate_out_that_is_a_file_or_a_foreign_folder(tmp_path, capsys):
    from dualfashion_jax.cli import main as top_main

    f = tmp_path / "notes.txt"
    f.write_text("my notes")
    for out in (f, f / "sub"):
        assert top_main(["generate", "--task", "pfitb", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: --out {out}: {f} is an existing file; expected a results folder" in err
        assert "Traceback" not in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "index.html").write_text("my page")
    assert top_main(["generate", "--task", "gor", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "mine")]) == 2
    assert "a non-empty folder that no `generate` run started (it has no run.json)" in capsys.readouterr().err
    assert f.read_text() == "my notes" and (tmp_path / "mine" / "index.html").read_text() == "my page"


class Opaque:
    """A class torch's weights_only loader does not allow: a stand-in for any pickled Python object."""


_T5_CONFIG = {"feed_forward_proj": "gated-gelu", "vocab_size": 8, "d_model": 4, "d_kv": 2, "d_ff": 8,
              "num_layers": 1, "num_heads": 2}
_CASES = {  # kind -> (weights file name inside src/, config.json or None, the src argument relative to tmp)
    "transformer": ("model.pth", {}, "src/model.pth"),
    "vae": ("diffusion_pytorch_model.bin", {}, "src"),
    "t5": ("pytorch_model.bin", _T5_CONFIG, "src"),
    "clip": ("open_clip_pytorch_model.bin", None, "src/open_clip_pytorch_model.bin"),
    "compat": ("ifashion_evaluator.pth", None, "src/ifashion_evaluator.pth"),
}


@pytest.mark.parametrize("kind", list(_CASES))
def test_convert_refuses_a_pth_holding_pickled_objects_by_name(kind, tmp_path, capsys):
    import torch

    from dualfashion_jax.cli import main as top_main

    name, config, arg = _CASES[kind]
    (tmp_path / "src").mkdir()
    torch.save({"weight": torch.zeros(2, 2), "extra": Opaque()}, tmp_path / "src" / name)
    if config is not None:
        (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    assert top_main(["convert", kind, str(tmp_path / arg), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{name}: holds pickled Python objects, not only tensors (it references test_user_safety.Opaque); " \
           "they are not loaded, for safety" in err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_truncated_torch_file_is_named(tmp_path):
    import torch

    from dualfashion_jax.conversion.common import read_weights
    from dualfashion_jax.core.params import ConversionError

    p = tmp_path / "w.pth"
    torch.save({"weight": torch.zeros(64)}, p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ConversionError, match=r"w.pth: cannot be read as a torch weights file \(truncated"):
        read_weights(p)
    p.write_bytes(b"")
    with pytest.raises(ConversionError, match=r"w.pth: cannot be read as a torch weights file .*empty file"):
        read_weights(p)


def test_inception_loader_gets_the_same_refusal(tmp_path):
    import torch

    from dualfashion_jax.core.params import ConversionError
    from dualfashion_jax.evaluators.nets.weights import load_inception_v3

    torch.save({"extra": Opaque()}, tmp_path / "inception.pth")
    with pytest.raises(ConversionError, match="holds pickled Python objects") as e:
        load_inception_v3(tmp_path / "inception.pth")
    assert "weights_only` set to `False" not in str(e.value)


def test_garbage_torch_file_is_named_without_the_unsafe_advice(tmp_path):
    from dualfashion_jax.conversion.common import UnsafePickleError, read_weights
    from dualfashion_jax.core.params import ConversionError

    (tmp_path / "g.bin").write_bytes(b"xyz garbage" * 10)
    with pytest.raises(ConversionError, match=r"g.bin: not a plain torch weights file \(the safe loader stopped at: "
                                              r"Unsupported operand 120\)") as e:
        read_weights(tmp_path / "g.bin")
    assert not isinstance(e.value, UnsafePickleError) and "weights_only" not in str(e.value)
