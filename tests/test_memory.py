"""Train-step memory (perf/memory.py): memory_analysis of the real step per remat policy on CPU (ordering, fixed
bytes), the analytic activation model cross-checked against it, T5 parameter count, largest-batch arithmetic."""
import dataclasses
import math

import jax
import pytest
from flax import nnx

from dualfashion_jax.perf import memory, step as bench_step
from dualfashion_jax.models import mmdit, mmdit_config, remat, t5

# Compiles (4) are the cost of this file; the full policy sweep is benchmarks/memory_table.py.
RUNS = {("none", 2), ("none", 4), ("dots_with_no_batch_dims", 4), ("full", 4)}
CFG = mmdit_config.get("tiny", stage2=False, num_layers=3, num_heads=4, latent_size=16, sample_size=16)  # 64+16 tok
TXT = 16


@pytest.fixture(scope="module")
def stats():
    """memory_analysis of the tiny train step (1 CPU device, dp): {policy: {batch: MemoryStats}}."""
    mesh = bench_step.make_mesh("dp", jax.devices()[:1])
    out: dict = {}
    for pol, b in sorted(RUNS):
        cfg = dataclasses.replace(CFG, remat_policy=pol)
        out.setdefault(pol, {})[b] = memory.MemoryStats.from_compiled(bench_step.lower_step(
            cfg, bench_step.StepShape(b, TXT), rules_name="dp", mesh=mesh)[0])
    return out


def test_temp_bytes_ordered_by_policy(stats):
    t = {p: s[4].temp for p, s in stats.items()}
    assert t["full"] <= t["dots_with_no_batch_dims"] <= t["none"], t
    assert t["full"] < t["none"], t  # remat really changes the compiled program


def test_fixed_bytes_are_the_train_state(stats):
    """Arguments = params + AdamW moments + EMA (16 B/param) + non-param state + batch; donated, so aliased."""
    n = memory.param_count(CFG)
    abstract = nnx.eval_shape(lambda: mmdit.DualMMDiT(CFG, rngs=nnx.Rngs(0)))
    rest = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(abstract, nnx.Not(nnx.Param))))
    h, w = CFG.latent_hw
    batch = 4 * (h * w * CFG.in_channels * 4 + TXT * CFG.joint_attention_dim * 4 + TXT * 4)
    s = stats["none"][4]
    assert 0 <= s.argument - (16 * n + rest + batch) <= 1024, (s.argument, 16 * n + rest + batch)  # + counters
    assert s.alias >= 16 * n  # the donated train state is updated in place
    assert memory.TRAIN_STATE_BYTES_PER_PARAM == 20  # + fp32 grads, which XLA reports under temp


def test_analytic_activations_cross_check(stats):
    """Per-sample slope of XLA's peak (B=2 -> 4) vs the analytic model (XLA attention, fp32): within 0.5-2x
    (CPU XLA keeps more fp32 temporaries than the model's tensor list; ~1.7x here, 0.7-1.5x on `small`)."""
    n_img = (CFG.latent_hw[0] // CFG.patch_size) ** 2
    _, measured = memory.measured_per_sample(stats["none"][2], stats["none"][4], 2, 4)
    ours = memory.activation_bytes_per_sample(CFG, n_img, TXT, TXT, "none", flash=False)
    assert 0.5 <= measured / ours <= 2.0, (measured, ours)
    assert memory.activation_bytes_per_sample(CFG, n_img, TXT, TXT, "none", flash=True) < ours  # no [H, N, N]


def test_offload_policy_on_cpu():
    """CPU exposes pinned_host, so offload_named builds a real offload policy (else it logs and saves)."""
    assert remat.host_offload_supported()
    assert remat.checkpoint_policy("offload_named") is not None
    with pytest.raises(ValueError, match="unknown remat policy 'everything'"):
        remat.checkpoint_policy("everything")
    assert set(mmdit_config.REMAT_POLICIES) == {p.value for p in remat.RematPolicy}


def test_t5_and_largest_batch_arithmetic():
    xxl = t5.get_config("t5_v1_1_xxl")
    assert memory.t5_param_count(xxl) == 4_762_310_656  # transformers T5EncoderModel (t5-v1_1-xxl) size
    tiny = t5.get_config("tiny")
    enc = nnx.eval_shape(lambda: t5.T5Encoder(tiny, rngs=nnx.Rngs(0)))
    assert memory.t5_param_count(tiny) == sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(enc, nnx.Param)))
    assert memory.fixed_bytes(10, t5_params=3, shards=2) == 20 * 10 / 2 + 6
    assert memory.largest_batch(80e9, 54e9, 1e9) == 26
    assert memory.largest_batch(80e9, 81e9, 1e9) == 0
    with pytest.raises(ValueError, match="per_sample must be > 0"):
        memory.largest_batch(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="unknown remat policy 'x'"):
        memory.activation_bytes_per_sample(CFG, 16, 4, 4, "x", flash=True)
