"""Partitioning regressions of the synthetic train step: compiled on 1 and 4 fake devices (tests/partitioning_support.py),
it splits the batch, not the model width. Stage steps, sampler and generation program: test_partitioning_stages.py.

Checked per device at a fixed per-device batch of 2: matmul FLOPs = the 1-device step's (total / N) within 2 %;
temp memory does not grow with N; no collective moves a full-batch activation; in fsdp every weight is
all-gathered 1.5-2.0x its fp32 bytes per fp32 train step (ZeRO-3: forward gather + backward re-gather), 0.5-1.0x
in bf16 compute (cast before the gather). Plus hlo_stats on hand-made HLO.
"""
import jax
import jax.numpy as jnp
import pytest
from partitioning_support import compiled_rows

from dualfashion_jax.sharding import activations, axes, hlo_stats as hs, mesh as mesh_lib


@pytest.fixture(scope="module")
def bench_rows():
    """The synthetic train step, fsdp, scanned and unrolled trunk, on 1 and 4 devices (+ fsdp_tp on 4)."""
    rows = compiled_rows(1, "bench", "fsdp", "scan,unroll")
    rows.update(compiled_rows(4, "bench", "fsdp,fsdp_tp", "scan,unroll"))
    rows.update(compiled_rows(4, "bench", "fsdp", "scan", dtype="bfloat16"))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("layers", ["scan", "unroll"])
def test_fsdp_step_splits_the_batch(bench_rows, layers):
    one, four = bench_rows[("bench", "fsdp", layers, 1)], bench_rows[("bench", "fsdp", layers, 4)]
    assert four["gflops"] == pytest.approx(one["gflops"], rel=0.02)  # total / N at a fixed per-device batch
    assert four["temp_mib"] <= 1.05 * one["temp_mib"], (four["temp_mib"], one["temp_mib"])
    assert four["args_mib"] < 0.5 * one["args_mib"]  # params + AdamW + EMA sharded 4 ways
    assert four["full_batch_mib"] == 0.0, four["collectives"]
    assert 1.5 <= four["gathered_weight_ratio"] <= 2.0, four["gathered_weight_ratio"]  # fp32: fwd + bwd gathers
    assert not any(k.startswith("all-reduce:activations") for k in four["collectives"]), four["collectives"]


@pytest.mark.slow
def test_fsdp_gathers_weights_in_the_compute_dtype(bench_rows):
    """bf16 compute (fp32 master weights): each weight is cast while sharded and gathered in bf16, forward and
    backward, so the wire carries 0.5-1.0x the fp32 parameter bytes per step (fp32 compute: 1.5-2.0x)."""
    bf16, fp32 = bench_rows[("bench", "fsdp", "scan", 4, "bf16")], bench_rows[("bench", "fsdp", "scan", 4)]
    assert 0.5 <= bf16["gathered_weight_ratio"] <= 1.0, bf16["gathered_weight_ratio"]
    assert bf16["gathered_weight_ratio"] <= 0.55 * fp32["gathered_weight_ratio"]
    assert bf16["full_batch_mib"] == 0.0, bf16["collectives"]


@pytest.mark.slow
@pytest.mark.parametrize("layers", ["scan", "unroll"])
def test_fsdp_tp_step_splits_batch_and_heads(bench_rows, layers):
    one, four = bench_rows[("bench", "fsdp", layers, 1)], bench_rows[("bench", "fsdp_tp", layers, 4)]
    assert four["gflops"] == pytest.approx(one["gflops"], rel=0.02)
    assert four["full_batch_mib"] == 0.0, four["collectives"]
    assert four["temp_mib"] <= 1.05 * one["temp_mib"]


# ------------------------------------------------------------------------------------------------------------
# hlo_stats and the constraint helper in this process (no compile of the model).
# ------------------------------------------------------------------------------------------------------------
HLO = """HloModule m, entry_computation_layout={()->f32[]}

%body (p: (s32[], f32[8,32])) -> (s32[], f32[8,32]) {
  %p = (s32[], f32[8,32]{1,0}) parameter(0)
  %h = f32[8,32]{1,0} get-tuple-element(%p), index=1
  %w = f32[32,64]{1,0} all-gather(f32[32,16]{1,0} %h), replica_groups={{0,1,2,3}}, dimensions={1}
  %d = f32[8,64]{1,0} dot(%h, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ar = f32[32,8]{1,0} all-reduce(%h), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %t = (s32[], f32[8,32]{1,0}) tuple(%i, %h)
}

ENTRY %main () -> f32[] {
  %init = (s32[], f32[8,32]{1,0}) tuple(%a, %b)
  %loop = (s32[], f32[8,32]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"6"}}
  %ids = s32[8,12]{1,0} all-gather(%x), dimensions={0}
  ROOT %r = f32[] constant(0)
}
"""


def test_hlo_stats_applies_trip_counts_and_classifies():
    st = hs.analyze_text(HLO)
    assert st.matmul_flops == 6 * 2 * 8 * 64 * 32 and st.unknown_trip_loops == 0
    summ = hs.summarize(st, hs.param_keys([(6, 32, 64)], stacked_layers=[6]), hs.full_batch_dims(8, 2, [12]))
    assert summ[("all-gather", "weights")] == {"count": 6.0, "bytes": 6 * 32 * 64 * 4}
    assert summ[("all-reduce", "activations (full batch)")]["count"] == 6.0  # [B=8, 32] is the global batch
    assert summ[("all-gather", "indices")]["bytes"] == 8 * 12 * 4
    assert hs.param_keys([(64, 384)], shard_factors=[2]) >= {(64, 384), (64, 192), (32, 384)}
    # a flattened [b*L, D] that is as long as a per-device one (8 x 12 = 4 x 24, fsdp 2 x tensor 2) is not flagged
    assert hs.full_batch_dims(8, 4, [12, 24]) == {8, 8 * 24} and hs.full_batch_dims(8, 8, [12]) == set()


def test_trip_counted_flops_of_a_scanned_grad():
    """cost_analysis counts the scan body once; hlo_stats counts all 5 layers' forward + 2 backward matmuls."""
    def f(w, x):
        return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0].sum()

    c = jax.jit(jax.grad(f)).lower(jax.ShapeDtypeStruct((5, 32, 32), jnp.float32),
                                   jax.ShapeDtypeStruct((8, 32), jnp.float32)).compile()
    assert hs.analyze_text(c.as_text()).matmul_flops == 3 * 5 * 2 * 8 * 32 * 32


def test_constrain_is_a_noop_without_mesh_and_shards_under_one():
    x = jnp.ones((8, 4, 16))
    assert activations.constrain(x, activations.RESIDUAL) is x
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})  # the project's meshes: Auto axes

    def f(a):
        return activations.constrain(a * 2, (axes.ACT_BATCH, None, axes.ACT_MLP))

    with jax.set_mesh(mesh):
        out = jax.jit(f)(x)
        assert out.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor")
        with activations.disabled():
            assert jax.jit(lambda a: f(a)).lower(x).compile().output_shardings.spec != out.sharding.spec  # retraced


HLO_BRANCHES = """HloModule m, entry_computation_layout={()->f32[]}

%widen (p0: bf16[16,64]) -> f32[16,64] {
  %p0 = bf16[16,64]{1,0} parameter(0)
  ROOT %c = f32[16,64]{1,0} convert(%p0)
}

%cheap (a: f32[8,32]) -> f32[8,32] {
  %a = f32[8,32]{1,0} parameter(0)
  ROOT %n = f32[8,32]{1,0} negate(%a)
}

%costly (b: f32[8,32]) -> f32[8,32] {
  %b = f32[8,32]{1,0} parameter(0)
  %w = f32[32,32]{1,0} all-gather(f32[8,32]{1,0} %b), replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %d = f32[8,32]{1,0} dot(%b, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main () -> f32[] {
  %h = bf16[16,64]{1,0} parameter(0)
  %f = f32[16,64]{1,0} fusion(%h), kind=kLoop, calls=%widen
  %g = f32[64,64]{1,0} all-gather(%f), replica_groups={{0,1,2,3}}, dimensions={0}
  %r = f32[64,64]{1,0} all-reduce(%f), replica_groups={{0,1,2,3}}, to_apply=%add
  %x = f32[8,32]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %c = f32[8,32]{1,0} conditional(%i, %x, %x), branch_computations={%cheap, %costly}
  ROOT %z = f32[] constant(0)
}
"""


def test_hlo_stats_counts_one_branch_and_the_wire_dtype():
    """A conditional runs one branch: the costlier is counted (not the sum of both). XLA:CPU widens a bf16
    all-gather to f32 (no bf16 collectives on CPU): it counts at bf16, as on GPU/TPU; an all-reduce stays f32."""
    st = hs.analyze_text(HLO_BRANCHES)
    assert st.matmul_flops == 2 * 8 * 32 * 32
    by_op = {c.opcode: c for c in st.collectives if c.opcode != "all-gather" or c.buffers[0][1] == (64, 64)}
    assert by_op["all-gather"].buffers == [("bf16", (64, 64))]
    assert by_op["all-reduce"].buffers == [("f32", (64, 64))]
    assert sum(c.count for c in st.collectives if c.opcode == "all-gather") == 2  # entry + the costly branch


def test_cast_weight_keeps_values_and_gradients_in_the_param_dtype():
    """activations.cast_weight under a mesh: the same bf16 values as astype, and an fp32 gradient equal to the
    unsharded one (the cast back happens before the gradient is reduced)."""
    w = jax.random.normal(jax.random.key(0), (16, 8), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (8, 16), jnp.float32)
    rules = {**activations.current_rules(), axes.EMBED: "fsdp", axes.MLP: None}

    def loss(w, x):
        wc = activations.cast_weight(w, (axes.EMBED, axes.MLP), jnp.bfloat16)
        return jnp.sum((x.astype(jnp.bfloat16) @ wc).astype(jnp.float32) ** 2)

    want_v, want_g = jax.value_and_grad(loss)(w, x)
    mesh = mesh_lib.make_mesh({"fsdp": 8})
    with jax.set_mesh(mesh), activations.use_rules(rules):
        got_v, got_g = jax.jit(jax.value_and_grad(loss))(w, x)
        assert activations.cast_weight(w, (axes.EMBED, axes.MLP), jnp.float32) is w
        jaxpr = jax.make_jaxpr(jax.grad(loss))(w, x).jaxpr
    constrained = [str(e.invars[0].aval) for e in jaxpr.eqns if e.primitive.name == "sharding_constraint"]
    assert "float32[16,8]" in constrained, constrained  # the gradient is pinned to the weight's sharding in fp32    assert got_g.dtype == jnp.float32
    assert float(got_v) == pytest.approx(float(want_v), rel=1e-6)
    assert jnp.allclose(got_g, want_g, rtol=1e-5, atol=1e-5)
