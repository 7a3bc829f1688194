"""JAX vs PyTorch parity of DVBPR (issue #17): scores, the BPR loss and its gradients, fp32 tolerances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.models.dvbpr import DVBPR, DVBPRConfig
from dualfashion_jax.training import dvbpr as stage

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from dualfashion_jax.reference import torch_dvbpr  # noqa: E402  (needs torch)

CFG = DVBPRConfig(num_users=6, input_kind="latent", in_channels=16, input_size=8, channels=(16, 32, 32), hidden=32,
                  embed_dim=8)  # 8 -> 4 -> 2 -> 2: the last conv runs on a 2x2 map (models.dvbpr.small_map_conv)


@pytest.fixture(scope="module")
def pair():
    model = DVBPR(CFG, rngs=nnx.Rngs(0))
    model.theta[...] = jax.random.normal(jax.random.key(1), model.theta[...].shape)  # O(1) scores
    r = np.random.default_rng(0)
    u = r.integers(0, 6, 10).astype(np.int32)
    pos, neg = (r.standard_normal((10, 8, 8, 16)).astype(np.float32) for _ in range(2))
    return model, torch_dvbpr.from_jax(model), u, pos, neg


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def test_scores_match(pair):
    model, tm, u, pos, neg = pair
    jp, jn = model(jnp.asarray(u), jnp.asarray(pos), jnp.asarray(neg))
    with torch.no_grad():
        tp, tn = tm(torch.from_numpy(u).long(), _t(pos), _t(neg))
    scale = float(np.abs(np.asarray(jp)).max())
    np.testing.assert_allclose(np.asarray(jp), tp.numpy(), rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(np.asarray(jn), tn.numpy(), rtol=0, atol=2e-5 * scale)


def test_loss_and_gradients_match(pair):
    model, tm, u, pos, neg = pair
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        m = nnx.merge(graphdef, p)
        sp, sn = m(jnp.asarray(u), jnp.asarray(pos), jnp.asarray(neg))
        return stage.bpr_loss(sp, sn) + 1e-2 * jnp.mean(jnp.sum(jnp.square(m.users(jnp.asarray(u))), -1))

    jl, jg = jax.value_and_grad(loss)(params)
    tm.zero_grad()
    sp, sn = tm(torch.from_numpy(u).long(), _t(pos), _t(neg))
    tl = torch.nn.functional.softplus(sn - sp).mean() + 1e-2 * tm.theta[torch.from_numpy(u).long()].pow(2).sum(-1).mean()
    tl.backward()
    np.testing.assert_allclose(float(jl), float(tl.detach()), rtol=1e-5)
    pairs = [(jg["theta"], tm.theta.grad), (jg["encoder"]["fc2"]["kernel"], tm.fc2.weight.grad.T),
             (jg["encoder"]["convs"][0]["kernel"], tm.convs[0].weight.grad.permute(2, 3, 1, 0)),
             (jg["encoder"]["convs"][2]["kernel"], tm.convs[2].weight.grad.permute(2, 3, 1, 0))]  # 2x2 map: matmul
    for g_jax, g_torch in pairs:
        g_jax, g_torch = np.asarray(g_jax[...]), g_torch.numpy()
        np.testing.assert_allclose(g_jax, g_torch, rtol=0, atol=1e-4 * np.abs(g_torch).max())
