"""Results-record format: round trip, validation errors naming file/record/field, DiFashion gen/grd layout."""
import json

import numpy as np
import pytest
from PIL import Image

from dualfashion_jax.data import records as R


def _records():
    pf = R.Record(7, 70, "pfitb", (11, 12, 13, 14), (1, 2, 3, 4), (2,),
                  (R.GenEntry(2, 1, 124, "g/7_70_1.png", '{"Color": "red"}'), R.GenEntry(2, 0, 123, "g/7_70_0.png")),
                  (R.GrdEntry(2, 13, "g/7_70_gt.png"),), {2: '{"Color": "red"}'}, {2: "Recommend a fashion x item."})
    pf2 = R.Record(8, 80, "pfitb", (21, 22, 23, 24), (1, 2, 3, 4), (0,), (R.GenEntry(0, 0, 5, "g/8_80_0.png"),),
                   (R.GrdEntry(0, 21),))
    return [pf, pf2]


def test_round_trip_and_original_layout(tmp_path):
    recs = _records()
    R.write_records(tmp_path, recs, {"model": "m", "task": "pfitb", "sampler": {"steps": 28}, "seeds": [123]})
    back, settings = R.read_records(tmp_path)
    assert back == recs and settings["sampler"] == {"steps": 28}
    assert [g.sample for g in back[0].gen_for(2)] == [0, 1]
    gen, grd = R.to_original_layout(back)
    assert gen[7][70]["image_paths"] == ["g/7_70_0.png", "g/7_70_1.png"]  # sorted by sample
    assert gen[7][70]["cates"].dtype == np.int64 and gen[7][70]["cates"].tolist() == [3, 3]
    assert gen[7][70]["outfits"].tolist() == [11, 12, 13, 14] and gen[7][70]["full_cates"].tolist() == [1, 2, 3, 4]
    assert grd[7][70]["image_paths"] == ["g/7_70_gt.png", "g/7_70_gt.png"] and grd[8][80]["image_paths"] == [""]
    g_path, _ = R.save_original_layout(back, tmp_path)
    loaded = np.load(g_path, allow_pickle=True).item()  # pickled by design (original evaluator's format)
    assert loaded[7][70]["image_paths"][0] == str((tmp_path / "g/7_70_0.png").absolute())


def test_images_as_arrays(tmp_path):
    (tmp_path / "g").mkdir()
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "g/a.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "g/b.png")
    assert R.load_image(tmp_path, "g/a.png").shape == (20, 20, 3)
    assert R.load_images(tmp_path, ["g/a.png", "g/b.png"], size=16).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="different sizes"):
        R.load_images(tmp_path, ["g/a.png", "g/b.png"])
    with pytest.raises(FileNotFoundError, match="g/missing.png"):
        R.load_image(tmp_path, "g/missing.png")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["records"][0].pop("outfit"), r"record 0: missing field\(s\) \['outfit'\]"),
    (lambda d: d["records"][0].update(task="xx"), r"record 0: field 'task' = 'xx'"),
    (lambda d: d["records"][0].update(blank_slots=[0, 1]), "exactly one blank slot"),
    (lambda d: d["records"][1]["gen"][0].update(image="../etc/passwd"), r"record 1 gen\[0\]: field 'image'"),
    (lambda d: d["records"][1]["gen"][0].update(slot=3), r"gen\[0\]: slot 3 is not one of"),
    (lambda d: d["records"][1]["grd"][0].update(iid=99), r"grd\[0\]: iid 99 differs from outfit\[0\] = 21"),
    (lambda d: d["records"][0].update(uid="7"), "field 'uid' must be an integer"),
    (lambda d: d["records"].append(d["records"][0]), "pairs repeat"),
    (lambda d: d.update(format_version=9), "format_version 9"),
])
def test_validation_names_the_problem(tmp_path, mutate, message):
    R.write_records(tmp_path, _records(), {"model": "m", "task": "pfitb"})
    d = json.loads((tmp_path / R.RECORDS_FILE).read_text())
    mutate(d)
    (tmp_path / R.RECORDS_FILE).write_text(json.dumps(d))
    with pytest.raises(R.RecordError, match=message):
        R.read_records(tmp_path)


def test_write_and_settings_errors(tmp_path):
    with pytest.raises(R.RecordError, match=r"settings.json: missing field\(s\) \['task'\]"):
        R.write_records(tmp_path, _records(), {"model": "m"})
    gor = R.Record(1, 2, "gor", (1, 2, 3, 4), (1, 2, 3, 4), (0, 1, 2, 3), (R.GenEntry(0, 0, 0, "a.png"),), ())
    with pytest.raises(R.RecordError, match="mix tasks"):
        R.write_records(tmp_path, _records() + [gor], {"model": "m", "task": "pfitb"})
    with pytest.raises(FileNotFoundError, match="records.json: missing"):
        R.read_records(tmp_path / "nowhere")
