"""Fidelity beside personalization (`evaluators/fidelity.py`): the random-real FID baseline and the oracle's
clean re-render error, on hand-made inputs and end to end through `dualfashion-jax evaluate`."""
import json

import numpy as np
import pytest

from dualfashion_jax.data.synthetic import attributes as A
from dualfashion_jax.data.synthetic.render import Jitter, render_item
from dualfashion_jax.evaluators import cli, fidelity

from test_eval_cli import _fake_results  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from dualfashion_jax.data.synthetic.make import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth"), seed=0, image_size=32, num_users=8, verbose=False)


def test_random_real_iids_are_seeded_catalogue_items():
    cats = np.asarray([-1, 0, 1, 1, 2, 3, 0, 2])            # id 0 is the blank
    a, b = fidelity.random_real_iids(cats, 5), fidelity.random_real_iids(cats, 5)
    np.testing.assert_array_equal(a, b)
    assert 0 not in a and len(set(a.tolist())) == 5          # without replacement while the catalogue allows
    assert len(fidelity.random_real_iids(cats, 20)) == 20 and 0 not in fidelity.random_real_iids(cats, 20)
    with pytest.raises(ValueError, match="no items"):
        fidelity.random_real_iids(np.asarray([-1]), 3)


def test_render_error_is_zero_on_a_clean_render_and_large_on_noise():
    clean = np.stack([render_item(c, col, m, f, size=32) for c, col, m, f in [(0, 1, 0, 0), (3, 5, 2, 1)]])
    jittered = np.stack([render_item(0, 1, 0, 0, Jitter(1.05, 0.02, -0.02, (8.0, -8.0, 4.0)), size=32)])
    noise = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    err_clean, err_jit, err_noise = (fidelity.render_error(x) for x in (clean, jittered, noise))
    assert err_clean.max() < 1e-6                             # the oracle reads them right, the re-render is exact
    assert 0 < err_jit[0] < 20 and err_noise.min() > 60
    with pytest.raises(ValueError, match="procedural garments only"):
        fidelity.render_error(clean, shapes="fashion_mnist")
    assert fidelity.clean_renders({"category": np.asarray([-1]), "colour": np.asarray([-1]),
                                   "material": np.asarray([-1])}, 32).shape == (1, len(A.FEATURES), 32, 32, 3)


def test_fid_ratio_and_oracle_fidelity_end_to_end(data_dir, tmp_path):
    res = _fake_results(data_dir, tmp_path / "pfitb", "pfitb", rows=3, samples=2)
    rc = cli.main(["--results", str(res), "--data", str(data_dir), "--task", "pfitb", "--metrics",
                   "fid,fid_ratio,oracle_fidelity", "--batch-size", "8", "--no-progress"])
    rep = json.loads((res / "report.json").read_text())
    assert rc == 0, rep["errors"]
    m = rep["metrics"]
    assert m["fid_ratio"]["fid"] == m["fid"]["fid"]           # one set of generated / GT features per run
    assert m["fid_ratio"]["n"] == 6 and m["fid_ratio"]["fid_random_real"] > 0
    assert m["fid_ratio"]["fid_ratio"] == pytest.approx(m["fid"]["fid"] / m["fid_ratio"]["fid_random_real"])
    of = m["oracle_fidelity"]
    # generated = GT + uniform noise of +-25: further from the clean render than the GT renders themselves
    assert 0 <= of["oracle_render_err_real"] < of["oracle_render_err"] and of["oracle_render_err_ratio"] > 1
    assert "FID/rand-real" in (res / "report.md").read_text()


def test_index_html_shows_the_headline_table_once(data_dir, tmp_path):
    from dualfashion_jax.evaluators import report as rep

    res = _fake_results(data_dir, tmp_path / "pfitb", "pfitb", rows=2, samples=1)
    (res / "index.html").write_text("<html><body><h1>PFITB: 2 rows</h1><table></table></body></html>")
    for _ in range(2):  # a re-evaluation replaces the block, it does not add a second one
        assert cli.main(["--results", str(res), "--data", str(data_dir), "--task", "pfitb", "--metrics",
                         "oracle_fidelity,oracle", "--no-progress"]) == 0
    html = (res / "index.html").read_text()
    assert html.count(rep.INDEX_BEGIN) == 1 and html.index("</h1>") < html.index(rep.INDEX_BEGIN)
    assert "Render err" in html and "Pref lift" in html and "<table></table>" in html
    assert rep.embed_in_index(json.loads((res / "report.json").read_text()), tmp_path / "nowhere") is None
