"""The fast Inception forward (issue #20) against the previous straightforward one: pools as fused strided-slice
max / sum vs XLA `reduce_window` (the previous code, itself checked against torch by the parity tests), and the
tuned XLA:CPU compile (`inception_blocks.compiler_options`, used by `fid.extract_features`) vs a default compile
with the previous pools, on the REAL TF-FID weights: pool3 features and the FID they give.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.evaluators import fid, preprocess
from dualfashion_jax.evaluators.nets import inception_blocks as ib
from dualfashion_jax.evaluators.nets import weights as ev
from eval_nets_support import fashion_mnist_rgb

FEATURE_ATOL = 1e-4  # absolute, pool3 features of magnitude ~1-5; only the fp32 summation order differs
FID_ATOL = 1e-3      # absolute, FID values of ~10^2 on the small set below


def _reduce_window_max_pool(x, window, stride, padding=0):
    """The previous `max_pool` (XLA reduce_window)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pad)


def _reduce_window_avg_pool(x, window, stride, padding=0, *, count_include_pad=True):
    """The previous `avg_pool` (XLA reduce_window; valid-cell counts from a reduce_window over ones)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    total = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, dims, strides, pad)
    if count_include_pad or padding == 0:
        return total / (window * window)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    return total / jax.lax.reduce_window(ones, jnp.zeros((), x.dtype), jax.lax.add, dims, strides, pad)


# (input shape [B, H, W, C], window, stride, padding): every pool of the trunk plus the aux head's 5/3, odd sizes
POOLS = [((2, 147, 147, 3), 3, 2, 0), ((2, 35, 35, 5), 3, 2, 0), ((2, 35, 35, 4), 3, 1, 1),
         ((3, 8, 8, 6), 3, 1, 1), ((2, 17, 17, 4), 5, 3, 0), ((1, 10, 7, 2), 3, 2, 1)]


@pytest.mark.parametrize("shape,window,stride,padding", POOLS)
def test_slice_pools_match_reduce_window(shape, window, stride, padding):
    x = jnp.asarray(np.random.RandomState(0).randn(*shape).astype(np.float32))
    got = ib.max_pool(x, window, stride, padding)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(_reduce_window_max_pool(x, window, stride, padding)))
    for include in (True, False):
        got = ib.avg_pool(x, window, stride, padding, count_include_pad=include)
        want = _reduce_window_avg_pool(x, window, stride, padding, count_include_pad=include)
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)  # fp32 sum order


def test_compiler_options_turn_ynnpack_off_on_cpu_only():
    opts = ib.compiler_options()
    if jax.default_backend() == "cpu":
        assert opts == {"xla_cpu_experimental_ynn_fusion_type": ""}
        # the installed jaxlib accepts the option (a renamed flag would fail here, not inside an evaluation)
        jax.jit(lambda x: x + 1, compiler_options=opts)(jnp.zeros(2)).block_until_ready()
    else:
        assert opts == {}


@pytest.mark.slow
def test_fast_features_match_the_previous_forward_on_real_weights(monkeypatch):
    """`fid.extract_features` (tuned compile, slice pools) == a default compile with reduce_window pools; the FID of
    two 8-image sets (singular covariances, as the demo's 160-image sets are) agrees too."""
    try:
        model = ev.load_real_fid_inception()
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"{e}; run scripts/test_material.sh")
    images = fashion_mnist_rgb(0, 16)                                     # uint8 [16, 28, 28, 3]
    fast = fid.extract_features(model, images, batch_size=8, show_progress=False)

    monkeypatch.setattr(ib, "max_pool", _reduce_window_max_pool)
    monkeypatch.setattr(ib, "avg_pool", _reduce_window_avg_pool)
    graphdef, state = nnx.split(model)
    previous = jax.jit(lambda s, x: nnx.merge(graphdef, s)(preprocess.inception_input(x)))  # default options
    want = np.concatenate([np.asarray(previous(state, images[s:s + 8].astype(np.float32) / 255.0))
                           for s in range(0, len(images), 8)])
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(fast, want, atol=FEATURE_ATOL, rtol=0)

    fid_fast = fid.FIDFeatures.from_features(fast[:8]).distance(fid.FIDFeatures.from_features(fast[8:]))
    fid_prev = fid.FIDFeatures.from_features(want[:8]).distance(fid.FIDFeatures.from_features(want[8:]))
    assert fid_prev > 1.0
    print(f"max |feature diff| {np.abs(fast - want).max():.2e}, FID {fid_fast:.6f} vs {fid_prev:.6f}")
    assert abs(fid_fast - fid_prev) < FID_ATOL, (fid_fast, fid_prev)
