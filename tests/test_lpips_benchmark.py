"""`benchmarks/lpips_pairs.py` runs and its sides agree: the shipped LPIPS forward (GEMM path on small maps, Eigen
convolutions) gives the previous forward's LPIPS on real weights, and the conv table covers the 2 x 2 stage."""
import importlib.util
import os
import re

import pytest

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "lpips_pairs.py")


@pytest.fixture(scope="module")
def bench():
    from dualfashion_jax.evaluators.nets import weights as ev

    try:
        ev.load_real_lpips_vgg()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    spec = importlib.util.spec_from_file_location("lpips_pairs_bench", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_before_and_after_sides_agree(bench, capsys):
    assert bench.main(["--pairs", "6", "--size", "32", "--rounds", "1", "--sides", "before,after",
                       "--batch-size", "4"]) == 0
    rows = {m.group(1): float(m.group(2)) for m in
            re.finditer(r"^\| 32 \| (before|after) \|[^|]+\|[^|]+\|[^|]+\| ([0-9.]+) \|", capsys.readouterr().out, re.M)}
    assert set(rows) == {"before", "after"} and rows["before"] > 0.05
    assert rows["after"] == pytest.approx(rows["before"], abs=1e-5)


def test_conv_table_and_bad_sides(bench, capsys):
    assert bench.main(["--convs", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "| [32, 2, 2, 512] -> 512 |" in out and "| [32, 32, 32, 64] -> 64 |" in out
    with pytest.raises(SystemExit):
        bench.main(["--sides", "jax"])
