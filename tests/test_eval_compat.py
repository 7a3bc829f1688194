"""Compatibility network (vs a torch reference with DiFashion's names), converter, metric indexing, trainer."""
import numpy as np
import pytest
import jax.numpy as jnp

from dualfashion_jax.core import params as core_params
from dualfashion_jax.evaluators.nets import compat_weights as cc
from dualfashion_jax.evaluators import compatibility as comp
from dualfashion_jax.evaluators.nets import compat_net


@pytest.fixture(scope="module")
def torch_pair():
    torch = pytest.importorskip("torch")
    from dualfashion_jax.reference.torch_compat_net import FashionEvaluator as TorchEval

    torch.manual_seed(0)
    ref = TorchEval(1024).eval()
    with torch.no_grad():  # LN params and biases away from their 1/0 init so the map is really checked
        for name, p in ref.named_parameters():
            if not name.endswith("weight") or p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape))
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    return torch, ref, sd


@pytest.mark.torch
def test_parity_with_torch_reference(torch_pair, tmp_path):
    torch, ref, sd = torch_pair
    torch.save(ref.state_dict(), tmp_path / "ifashion_evaluator.pth")
    model, config, _ = cc.load_compat(tmp_path / "ifashion_evaluator.pth")
    assert config == compat_net.PRESETS["difashion"]
    n = sum(v.size for v in core_params.flat_params(model).values())
    assert n == sum(p.numel() for p in ref.parameters()) and 2_500_000 < n < 2_800_000
    x = np.random.default_rng(0).normal(size=(5, 4, 1024)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = np.asarray(model(jnp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # fp32, eval mode: tolerance 1e-5
    saved = cc.convert(tmp_path / "ifashion_evaluator.pth", tmp_path / "conv")
    again, _, source = cc.load_compat(saved)
    assert source == str(tmp_path / "ifashion_evaluator.pth")
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(x))), got)


@pytest.mark.torch
def test_converter_names_bad_keys(torch_pair):
    _, _, sd = torch_pair
    bad = dict(sd)
    bad["emb_layer.2.weight"] = np.zeros(3, np.float32)
    with pytest.raises(core_params.ConversionError, match="emb_layer.2.weight"):
        cc.convert_state_dict(bad, cc.infer_config(sd))
    with pytest.raises(core_params.ConversionError, match="feat_layer.weight"):
        cc.infer_config({"x": np.zeros(1)})


def test_outfit_feature_indexing():
    cat = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    gen = -np.ones((2, 3), np.float32)
    f = comp.pfitb_outfit_features(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), np.array([2, 0]), gen, cat)
    np.testing.assert_array_equal(f[0, 2], gen[0])
    np.testing.assert_array_equal(f[0, [0, 1, 3]], cat[[1, 2, 4]])
    np.testing.assert_array_equal(f[1, 0], gen[1])
    g = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 outfits x 4 generated images
    fixed = comp.gor_outfit_features(g)
    np.testing.assert_array_equal(fixed[1], g[4:8])
    orig = comp.gor_outfit_features(g, original_gor_indexing=True)  # outfit k = 4 copies of image k
    np.testing.assert_array_equal(orig[1], np.repeat(g[1:2], 4, axis=0))
    with pytest.raises(ValueError, match=r"item ids must lie in \[0, 10\)"):
        comp.pfitb_outfit_features(np.array([[1, 2, 3, 99]]), np.array([0]), gen[:1], cat)
    with pytest.raises(ValueError, match=r"\[4N, F\]"):
        comp.gor_outfit_features(g[:6])


def test_trainer_learns_synthetic_compatibility():
    """Items in 4 style clusters; real outfits are single-style. The trained net must score held-out real outfits
    above item-swapped ones (AUC-like check), and `compatibility` must report means in (0, 1)."""
    rng = np.random.default_rng(0)
    n_items, dim, styles = 200, 16, 4
    style = rng.integers(styles, size=n_items)
    centres = rng.normal(size=(styles, dim)) * 2
    feats = (centres[style] + 0.5 * rng.normal(size=(n_items, dim))).astype(np.float32)
    outfits = np.stack([rng.choice(np.flatnonzero(style == s), 4, replace=False)
                        for s in rng.integers(styles, size=300)])
    model, info = comp.train_compat_evaluator(feats, outfits[:250], config=compat_net.PRESETS["tiny"],
                                              steps=100, batch_size=32, learning_rate=3e-3, seed=0)
    assert np.mean(info["loss"][-20:]) < np.mean(info["loss"][:20])
    pos = comp.compatibility_scores(model, feats[outfits[250:]], batch_size=32)
    neg = comp.compatibility_scores(model, feats[comp.swap_negatives(outfits[250:], np.arange(n_items), rng)],
                                    batch_size=32)
    assert (pos[:, None] > neg[None, :]).mean() > 0.8
    r = comp.compatibility(model, feats[outfits[250:]])
    assert 0 < r["compatibility"] < 1 and r["n"] == 50
    with pytest.raises(ValueError, match=r"expected item features \[B, 4, 16\]"):
        model(jnp.zeros((2, 3, 16)))


@pytest.mark.torch
def test_convert_cli(torch_pair, tmp_path, capsys):
    """`dualfashion-jax convert compat SRC OUT` writes a checkpoint that reloads; a bad file exits 1 with its name."""
    from dualfashion_jax.conversion import cli

    torch, ref, _ = torch_pair
    torch.save(ref.state_dict(), tmp_path / "ev.pth")
    assert cli.main(["compat", str(tmp_path / "ev.pth"), str(tmp_path / "out")]) == 0
    model, _, _ = cc.load_compat(tmp_path / "out")
    x = np.random.default_rng(1).normal(size=(2, 4, 1024)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), ref(torch.from_numpy(x)).numpy(), atol=1e-5)
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    assert cli.main(["compat", str(tmp_path / "bad.pth"), str(tmp_path / "out2")]) == 1
    assert "feat_layer.weight" in capsys.readouterr().err
