"""The benchmark's training-FLOP formula against the hand count of jax_anchors.md §5.2 (SD3-medium, 512 px)."""
import importlib.util
import os

import pytest

from dualfashion_jax.models import mmdit_config

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "train_step.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sd3_medium_flops_match_hand_count(bench):
    cfg = mmdit_config.get("sd3_medium")
    f = bench.train_flops_per_sample(cfg, n_img=1024, n_txt=128)
    assert f["trunk"] == pytest.approx(4.70e12, rel=5e-3)  # 72 L d^2 N, anchors: "4.70e12 matmul"
    assert f["attention"] == pytest.approx(0.587e12, rel=5e-3)  # 12 L N^2 d, anchors: "0.59e12 attention"
    assert f["text_head"] == 6 * 1536 * 32100 * 128
    assert f["total"] == pytest.approx(sum(v for k, v in f.items() if k != "total"))
    # 40% MFU on one H100 -> ~75 samples/s without the text head (anchors' table), ~70 with it
    assert 60 < 0.4 * bench.PEAK_BF16["h100"] / f["total"] < 80
