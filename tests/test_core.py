"""`dualfashion_jax.core`: the global Flax option a library user gets from any import, path -> key strings, and
flat params <-> NNX modules (Params, BatchStats, non-weight state, sharded placement, one error naming every key)."""
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualfashion_jax.core import converted, keys, params as core_params

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_user_importing_only_one_model_module_gets_the_flax_option():
    """A fresh interpreter that imports only `dualfashion_jax.models.mmdit` builds and runs a model; with Flax's
    default (eager sharding on) the same build needs a mesh and fails, so the option is what makes it work."""
    code = textwrap.dedent("""
        import jax.numpy as jnp
        from flax import nnx
        from dualfashion_jax.models import mmdit, mmdit_config

        assert not nnx.using_eager_sharding()
        cfg = mmdit_config.get("tiny")
        model = mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))
        img, logits = model(jnp.zeros((1, cfg.sample_size, cfg.sample_size, cfg.in_channels)),
                            jnp.zeros((1, 4, cfg.joint_attention_dim)), jnp.ones((1,)))
        assert img.shape == (1, cfg.sample_size, cfg.sample_size, cfg.out_channels), img.shape
        with nnx.use_eager_sharding(True):
            try:
                mmdit.DualMMDiT(cfg, rngs=nnx.Rngs(0))
            except ValueError as e:
                assert "mesh" in str(e), e
            else:
                raise AssertionError("eager sharding built the model without a mesh: the check proves nothing")
        print("OK")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)


def test_key_str_is_one_spelling_for_nnx_paths_jax_key_paths_and_dict_trees():
    model = Net(nnx.Rngs(0))
    from_nnx = sorted(keys.key_str(p) for p, _ in nnx.state(model, nnx.Param).flat_state())
    from_jax = sorted(keys.key_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)))
    assert from_nnx == from_jax
    assert "blocks/1/kernel" in from_nnx and not any(k.endswith("value") for k in from_jax)
    flat = {"a/0/kernel": np.ones(2), "a/1/bias": np.zeros(1)}
    tree = keys.unflatten(flat)
    assert set(tree["a"]) == {0, 1}  # integer parts become int keys, as NNX lists use
    assert set(keys.flatten(tree)) == set(flat)
    assert set(keys.flatten({"x": {"kernel": {"value": np.ones(1)}}})) == {"x/kernel"}  # NNX state dicts


def test_module_from_flat_fills_params_and_batch_stats_and_builds_the_rest():
    src = Net(nnx.Rngs(1))
    types = (nnx.Param, nnx.BatchStat)
    flat = core_params.flat_params(src, types)
    assert "bn/mean" in flat and "lin/kernel" in flat and not any("rngs" in k for k in flat)
    flat["bn/mean"] = flat["bn/mean"] + 1.0
    built = core_params.module_from_flat(lambda: Net(nnx.Rngs(0)), flat, source="test", types=types)
    out = core_params.flat_params(built, types)
    assert set(out) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(out[k], flat[k])
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(built)))  # RNG state real, not abstract


def test_validate_names_every_missing_unexpected_and_misshaped_key():
    flat = core_params.flat_params(Net(nnx.Rngs(0)))
    del flat["lin/bias"]
    flat["extra"] = np.zeros(1)
    flat["blocks/0/kernel"] = np.zeros((5, 4))
    with pytest.raises(core_params.ConversionError) as e:
        core_params.module_from_flat(lambda: Net(nnx.Rngs(0)), flat, source="ckpt X")
    msg = str(e.value)
    assert "ckpt X" in msg and "lin/bias" in msg and "extra" in msg and "blocks/0/kernel: checkpoint (5, 4)" in msg


def test_load_flat_into_and_state_from_flat_cast_and_place():
    flat = core_params.flat_params(Net(nnx.Rngs(2)))
    target = Net(nnx.Rngs(0))
    core_params.load_flat_into(target, {k: v.astype(np.float64) for k, v in flat.items()}, source="test")
    np.testing.assert_array_equal(np.asarray(target.lin.kernel[...]), flat["lin/kernel"])
    assert target.lin.kernel[...].dtype == jnp.float32
    seen = []
    state = core_params.state_from_flat(nnx.state(Net(nnx.Rngs(0)), nnx.Param), flat, source="test",
                                        place=lambda k, host, leaf: seen.append(k) or np.asarray(host))
    assert sorted(seen) == sorted(flat) and isinstance(state["lin"]["kernel"][...], np.ndarray)


def test_converted_round_trip(tmp_path):
    flat = core_params.flat_params(Net(nnx.Rngs(3)))
    converted.save_converted(tmp_path / "c", kind="net", config={"a": 1}, params=flat)
    meta, back = converted.load_converted(tmp_path / "c", kind="net")
    assert meta["config"] == {"a": 1} and set(back) == set(flat)
    with pytest.raises(core_params.ConversionError, match="expected 'vae'"):
        converted.load_converted(tmp_path / "c", kind="vae")
