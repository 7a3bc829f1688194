"""Partitioning regressions of the stage-1 / stage-2 train steps (frozen T5 and VAE inside), the sampler and the
generation program (generation/runner.py's), compiled on 1 and 4 fake devices (tests/partitioning_support.py).

Checked per device at a fixed per-device batch of 2: matmul FLOPs = total / N within 2 %; temp memory does not
grow with N (forward-only programs: by at most one gathered copy of the weights); no collective moves a
full-batch activation; every weight is all-gathered >= 1.0x per sampler forward. Split from test_partitioning.py
so the two files' compiles run on both CI workers.
"""
import pytest
from partitioning_support import compiled_rows


@pytest.fixture(scope="module")
def stage_rows():
    """Stage-1 / stage-2 train steps and the sampler, fsdp, scanned, on 1 and 4 devices (+ fsdp_tp on 4)."""
    rows = compiled_rows(1, "stage1,stage2,sampling", "fsdp", "scan")
    rows.update(compiled_rows(4, "stage1,stage2,sampling", "fsdp,fsdp_tp", "scan"))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("program", ["stage1", "stage2", "sampling"])
def test_stage_steps_and_sampler_split_the_work(stage_rows, program):
    one, four = stage_rows[(program, "fsdp", "scan", 1)], stage_rows[(program, "fsdp", "scan", 4)]
    assert four["gflops"] == pytest.approx(one["gflops"], rel=0.02)
    assert four["gathered_weight_ratio"] >= 1.0
    if program != "sampling":
        assert four["full_batch_mib"] == 0.0, four["collectives"]
        assert four["temp_mib"] <= 1.05 * one["temp_mib"], (four["temp_mib"], one["temp_mib"])


@pytest.mark.slow
@pytest.mark.parametrize("program", ["stage1", "stage2", "sampling"])
def test_fsdp_tp_stage_steps_and_sampler_split_the_work(stage_rows, program):
    """fsdp_tp (fsdp 2 x tensor 2): the MMDiT and T5 split heads / MLP over tensor, the VAE (no tensor-parallel
    layer) splits its batch over every axis, so per-device FLOPs stay total / N and no full batch is moved."""
    one, four = stage_rows[(program, "fsdp", "scan", 1)], stage_rows[(program, "fsdp_tp", "scan", 4)]
    assert four["gflops"] == pytest.approx(one["gflops"], rel=0.02)
    assert four["full_batch_mib"] == 0.0, four["collectives"]


@pytest.mark.slow
def test_sampler_moves_no_full_batch_activation(stage_rows):
    """The 4 guidance branches run vmapped on [4, B] (flow_euler.py), so each device keeps its rows. Temp grows
    only by the all-gathered weights XLA keeps across the Euler loop (batch-independent: +1.9 MiB at 2 and 4
    rows per device), so it is bounded by one full copy of the weights."""
    one, four = stage_rows[("sampling", "fsdp", "scan", 1)], stage_rows[("sampling", "fsdp", "scan", 4)]
    assert four["full_batch_mib"] == 0.0, four["collectives"]
    assert four["temp_mib"] <= 1.05 * one["temp_mib"] + four["weight_mib"], (four["temp_mib"], one["temp_mib"])
    assert four["peak_mib"] < one["peak_mib"]


@pytest.mark.slow
def test_generation_program_splits_the_chains():
    """generation/sampling.py `Programs.sample` (images + captions, traced under the mesh and the rules) with
    --param-sharding fsdp on 1 and 4 devices at 2 chains per device: FLOPs / N, no full-batch collective."""
    rows = compiled_rows(1, "generation", "fsdp", "scan")
    rows.update(compiled_rows(4, "generation", "fsdp", "scan"))
    one, four = rows[("generation", "fsdp", "scan", 1)], rows[("generation", "fsdp", "scan", 4)]
    assert four["gflops"] == pytest.approx(one["gflops"], rel=0.02)
    assert four["full_batch_mib"] == 0.0, four["collectives"]
    assert four["args_mib"] < 0.5 * one["args_mib"]  # model / T5 / VAE states sharded 4 ways
    assert four["temp_mib"] <= 1.05 * one["temp_mib"] + four["weight_mib"], (four["temp_mib"], one["temp_mib"])
    assert not any(k.startswith("all-reduce:activations") for k in four["collectives"]), four["collectives"]
