"""Loss curves: the smoothed trend (bias-corrected EMA) and the PNG with raw + smoothed series."""
import json

import numpy as np
import pytest

from dualfashion_jax.training import metrics


def test_smooth_is_an_unbiased_trend():
    np.testing.assert_allclose(metrics.smooth(np.full(50, 3.0)), 3.0)       # no warm-up bias towards 0
    rng = np.random.default_rng(0)
    noisy = 1.0 + 0.3 * rng.standard_normal(400)
    assert np.std(metrics.smooth(noisy)[100:]) < 0.3 * np.std(noisy[100:])
    step = metrics.smooth(np.r_[np.zeros(100), np.ones(100)])
    assert step[99] == 0 and 0.5 < step[-1] < 1.0 and np.all(np.diff(step[100:]) > 0)
    with pytest.raises(ValueError, match="1-D"):
        metrics.smooth(np.zeros((2, 2)))


def test_loss_curve_png_has_raw_and_smoothed_series(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": i, "loss": 1.0 / (i + 1), "loss_img": 0.5 / (i + 1)})
                              for i in range(30)))
    drawn = []
    import matplotlib.axes
    orig = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: drawn.append(k) or orig(self, *a, **k))
    out = metrics.plot_loss_curve(str(path), str(tmp_path / "curve.png"))
    assert out and (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [k.get("label") for k in drawn] == ["loss (smoothed)", None, "loss_img (smoothed)", None]
    assert [k.get("alpha") for k in drawn] == [None, 0.25, None, 0.25]
