"""Sharding: rule presets, mesh sizes, PartitionSpecs of key params, and dp/fsdp/tp == 1-device training
(2 steps of the real tiny DualMMDiT, AdamW + EMA).

Equivalence tolerance: fp32 with highest matmul precision; losses rtol 1e-5 / atol 1e-6; updated params atol 1e-5
(collectives only reorder sums).
"""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jax.numpy as jnp
import ml_collections as mlc

from dualfashion_jax.models import mmdit, mmdit_config
from dualfashion_jax.sharding import axes, mesh as mesh_lib, partition, rules
from dualfashion_jax.training import optim, step as step_lib, toy

RTOL, ATOL = 1e-5, 1e-6
PARAM_ATOL = 1e-5  # 1% of one Adam step at lr 1e-3: m/sqrt(v) amplifies last-bit gradient differences
OCFG = mlc.ConfigDict(dict(lr=1e-3, warmup_steps=2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, clip_norm=2.0,
                           ema_decay=0.9, ema_start_step=1))


def _factory():
    return toy.ToyModel(8, 32, 2, 16, rngs=nnx.Rngs(0))


def _mmdit():
    return mmdit.DualMMDiT(mmdit_config.get("tiny", num_heads=4, stage2=False), rngs=nnx.Rngs(0))


def _mmdit_loss(model, frozen, batch, key):
    """Rectified-flow x0 loss on the image head + CE on the text head of the real tiny DualMMDiT."""
    x0 = batch["latents"]  # [B, 8, 8, 16]
    sigma = jax.random.uniform(key, (x0.shape[0],))
    noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    s = sigma[:, None, None, None]
    x_in = (1 - s) * x0 + s * noise
    v, logits = model(x_in, batch["txt"], sigma * 1000.0)
    l_img = jnp.mean(jnp.square(x_in - s * v - x0))
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["ids"][..., None], -1))
    return l_img + 0.2 * ce, {"loss_img": l_img, "loss_txt": ce}


def _mmdit_batches(n):
    r = np.random.default_rng(0)
    return [{"latents": r.standard_normal((8, 8, 8, 16), np.float32), "txt": r.standard_normal((8, 6, 32), np.float32),
             "ids": r.integers(0, 64, (8, 6)).astype(np.int32)} for _ in range(n)]


def _train(mesh_sizes, preset, devices=None, steps=2, factory=_mmdit, loss=_mmdit_loss):
    """Two sharded train steps (real tiny MMDiT by default); returns (losses, host params, final state)."""
    mesh = mesh_lib.make_mesh(mesh_sizes, devices)
    r = rules.get(preset)
    g, ap, ar = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    tx, sched = optim.make_optimizer(OCFG)
    psh = partition.state_shardings(ap, mesh, r)
    rep = jax.sharding.NamedSharding(mesh, P())
    ssh = {"params": psh, "rest": partition.state_shardings(ar, mesh, r),
           "opt": partition.opt_state_shardings(tx, ap, psh, mesh), "ema": psh, "step": rep, "rng": rep}

    def init():
        _, p, rest = nnx.split(factory(), nnx.Param, ...)
        return step_lib.init_state(p, rest, tx, 0, True)

    state = partition.sharded_init(init, ssh)
    fn = step_lib.jit_step(step_lib.make_step_fn(g, {}, loss, tx, sched, OCFG, 1, mesh), ssh,
                           partition.batch_sharding(mesh), {}, mesh)
    losses = []
    for b in _mmdit_batches(steps):
        state, m = fn(state, partition.put_batch(b, mesh), {})
        losses.append(float(m["loss"]))
    return losses, jax.tree.map(np.asarray, state["params"]), state


@pytest.fixture(scope="module")
def single_device():
    return _train({"data": 1}, "dp", jax.devices()[:1])


def test_presets_map_logical_axes():
    fsdp_tp = rules.get("fsdp_tp")
    assert fsdp_tp[axes.EMBED] == "fsdp" and fsdp_tp[axes.MLP] == "tensor" and fsdp_tp[axes.HEADS] == "tensor"
    assert fsdp_tp[axes.VOCAB] == "tensor" and fsdp_tp[axes.LAYERS] is None
    assert fsdp_tp[axes.ACT_BATCH] == ("data", "fsdp")
    assert all(v is None for k, v in rules.get("dp").items() if k not in (axes.ACT_BATCH, axes.ACT_BATCH_ALL))
    assert fsdp_tp[axes.ACT_BATCH_ALL] == ("data", "fsdp", "tensor")  # the VAE: tensor as more data parallelism
    assert rules.get("fsdp", {axes.MLP: "tensor"})[axes.MLP] == "tensor"
    with pytest.raises(ValueError, match="unknown preset 'zero3'"):
        rules.get("zero3")
    with pytest.raises(ValueError, match="mesh axes"):
        rules.get("dp", {axes.MLP: "model"})


def test_mesh_sizes_autofill_and_errors():
    assert mesh_lib.resolve_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert mesh_lib.resolve_shape({"fsdp": -1}, 8) == (1, 8, 1)
    assert dict(mesh_lib.make_mesh({"data": 2, "fsdp": -1}).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        mesh_lib.resolve_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        mesh_lib.resolve_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        mesh_lib.resolve_shape({"model": 8}, 8)


def test_non_divisible_dim_stays_unsharded():
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    r = rules.get("fsdp_tp")
    assert partition.mesh_spec((axes.EMBED, axes.MLP), (6, 8), mesh, r, "w") == P(None, "tensor")
    assert partition.mesh_spec((axes.LAYERS, axes.EMBED, axes.HEADS), (2, 8, 6), mesh, r) == P(None, "fsdp", "tensor")
    assert partition.mesh_spec((axes.EMBED, axes.EMBED), (8, 8), mesh, r) == P("fsdp")  # an axis is used once
    with pytest.raises(ValueError, match="3 logical axis names"):
        partition.mesh_spec((axes.EMBED, axes.MLP, axes.MLP), (8, 8), mesh, r, "w")


def test_mmdit_block_param_specs():
    """Real DualMMDiT: a block's q kernel [L, D, D] is P(None, 'fsdp', 'tensor') under fsdp_tp (layers first)."""
    _, ap, _ = nnx.split(nnx.eval_shape(_mmdit), nnx.Param, ...)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sh = partition.state_shardings(ap, mesh, rules.get("fsdp_tp"))
    blocks = sh["blocks"]
    assert blocks["attn"]["to_q"]["kernel"].get_value().spec == P(None, "fsdp", "tensor")
    assert blocks["attn"]["to_out"]["kernel"].get_value().spec == P(None, "tensor", "fsdp")
    assert blocks["ff"]["proj_in"]["kernel"].get_value().spec == P(None, "fsdp", "tensor")
    assert sh["text_proj_out"]["kernel"].get_value().spec == P("fsdp", "tensor")
    fsdp = partition.state_shardings(ap, mesh_lib.make_mesh({"fsdp": 8}), rules.get("fsdp"))
    assert fsdp["blocks"]["attn"]["to_q"]["kernel"].get_value().spec == P(None, "fsdp")


def test_key_param_partition_specs():
    """Toy stacked-layer qkv kernel [L, D, 3D] is P(None, 'fsdp', 'tensor') under fsdp_tp; moments follow."""
    _, ap, _ = nnx.split(nnx.eval_shape(_factory), nnx.Param, ...)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sh = partition.state_shardings(ap, mesh, rules.get("fsdp_tp"))
    assert sh["qkv"].get_value().spec == P(None, "fsdp", "tensor")
    assert sh["mlp_out"].get_value().spec == P(None, "tensor", "fsdp")
    assert sh["txt_head"].get_value().spec == P("fsdp", "tensor")
    assert sh["norm"].get_value().spec == P()
    assert partition.state_shardings(ap, mesh, rules.get("dp"))["qkv"].get_value().spec == P()
    tx, _ = optim.make_optimizer(OCFG)
    opt_sh = partition.opt_state_shardings(tx, ap, sh, mesh)
    mu = [s for s in jax.tree.leaves(opt_sh) if s.spec == P(None, "fsdp", "tensor")]
    assert len(mu) == 4  # adam mu and nu of qkv [L, D, 3D] and mlp_in [L, D, 4D]
    assert partition.batch_sharding(mesh).spec == P(("data", "fsdp"))
    with pytest.raises(ValueError, match="divisible by data\\*fsdp=4"):
        partition.check_batch_divisible(6, mesh)


@pytest.mark.parametrize("mesh_sizes,preset", [({"data": 8}, "dp"), ({"fsdp": 8}, "fsdp"),
                                              ({"data": 2, "fsdp": 2, "tensor": 2}, "fsdp_tp")])
def test_sharded_step_matches_single_device(single_device, mesh_sizes, preset):
    losses1, params1, _ = single_device
    losses, params, state = _train(mesh_sizes, preset)
    np.testing.assert_allclose(losses, losses1, rtol=RTOL, atol=ATOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=PARAM_ATOL), params, params1)
    q = state["params"]["blocks"]["attn"]["to_q"]["kernel"][...]  # [L=2, D=64, D=64]
    if preset == "fsdp":  # really sharded: each device holds 1/8 of the embed dim
        assert q.sharding.spec == P(None, "fsdp")
        assert q.addressable_shards[0].data.shape == (2, 8, 64)


def test_hybrid_mesh_puts_data_across_slices():
    """dcn_data=2: the data axis spans 2 "slices" (CPU fallback: blocks of 4 consecutive devices), fsdp inside."""
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": -1, "tensor": 1, "dcn_data": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    assert ids[0].ravel().tolist() == [0, 1, 2, 3] and ids[1].ravel().tolist() == [4, 5, 6, 7]
    assert dict(mesh_lib.make_mesh({"fsdp": -1, "dcn_data": 1}).shape)["fsdp"] == 8
    with pytest.raises(ValueError, match="dcn_data=3 must divide the data axis size 2"):
        mesh_lib.make_mesh({"data": 2, "fsdp": -1, "dcn_data": 3})
