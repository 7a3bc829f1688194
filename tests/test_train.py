"""Optimizer, EMA, averaged gradient accumulation, NaN guard, config overrides, distributed env parsing,
metrics sinks. Tolerances: fp32, rtol 1e-5 / atol 1e-6 for accumulated-vs-full-batch params."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from dualfashion_jax.sharding import mesh as mesh_lib, partition, rules
from dualfashion_jax.core import config as config_lib
from dualfashion_jax.training import distributed, main as main_lib, metrics, optim, step as step_lib, toy, train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "toy_cpu.py")
OCFG = mlc.ConfigDict(dict(lr=1e-3, warmup_steps=4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, clip_norm=2.0,
                           ema_decay=0.5, ema_start_step=2))


def test_schedule_warmup_then_constant():
    s = optim.lr_schedule(3e-5, 2000)
    np.testing.assert_allclose([s(jnp.int32(c)) for c in (0, 999, 1999, 5000)], [1.5e-8, 1.5e-5, 3e-5, 3e-5],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="config.optim.lr"):
        optim.lr_schedule(0.0, 10)


def test_schedule_cosine_decay_hand_values_and_errors():
    """Warm-up 10 of 110 steps, then lr * (r + (1 - r) (1 + cos(pi f)) / 2), f = (count - 10) / 100."""
    s = optim.lr_schedule(1e-3, 10, "cosine", total_steps=110, final_lr_ratio=0.1)
    counts = (0, 9, 10, 35, 60, 110, 500)
    f = np.clip((np.array(counts) - 10) / 100, 0, 1)
    warm = np.minimum(1.0, (np.array(counts) + 1) / 10)
    expected = 1e-3 * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * f)))
    np.testing.assert_allclose([s(jnp.int32(c)) for c in counts], expected, rtol=1e-5)
    assert float(s(jnp.int32(60))) == pytest.approx(1e-3 * 0.55, rel=1e-5)  # half-way: the mean of lr and lr/10
    with pytest.raises(ValueError, match="config.optim.decay"):
        optim.lr_schedule(1e-3, 10, "linear", total_steps=110)
    with pytest.raises(ValueError, match="total_steps"):
        optim.lr_schedule(1e-3, 10, "cosine", total_steps=10)
    cfg = mlc.ConfigDict({**OCFG.to_dict(), "decay": "cosine", "final_lr_ratio": 0.0})
    _, sched = optim.make_optimizer(cfg, total_steps=104)
    assert float(sched(jnp.int32(104))) == 0.0 and float(sched(jnp.int32(3))) == pytest.approx(1e-3)


def test_adamw_matches_torch_formula_and_clips():
    """One step by hand: clip to norm 2, Adam bias-corrected m/(sqrt(v)+eps), decoupled wd * lr."""
    tx, _ = optim.make_optimizer(OCFG)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([30.0, 40.0])}  # norm 50 -> scaled to 2
    upd, _ = tx.update(g, tx.init(p), p)
    lr = 1e-3 * 1 / 4
    gc = np.array([30.0, 40.0]) * 2 / 50
    expected = -lr * (gc / (np.abs(gc) + 1e-8) + 1e-2 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(upd["w"], expected, rtol=1e-5)


def test_ema_is_copy_before_start_then_decays():
    e, p = {"w": jnp.array(0.0)}, {"w": jnp.array(4.0)}
    assert float(optim.ema_update(e, p, jnp.int32(2), 0.5, 2)["w"]) == 4.0  # step <= start: copy
    assert float(optim.ema_update(e, p, jnp.int32(3), 0.5, 2)["w"]) == 2.0  # then decay


def _det_loss(model, frozen, batch, key):
    vec, logits = model(batch["x"])
    return jnp.mean(jnp.square(vec - batch["y"])), {}


def _one_step(accum, loss_fn):
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    r = rules.get("fsdp_tp")
    factory = lambda: toy.ToyModel(8, 32, 2, 16, rngs=nnx.Rngs(0))  # noqa: E731
    g, ap, ar = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    tx, sched = optim.make_optimizer(OCFG)
    psh = partition.state_shardings(ap, mesh, r)
    rep = jax.sharding.NamedSharding(mesh, P())
    ssh = {"params": psh, "rest": partition.state_shardings(ar, mesh, r),
           "opt": partition.opt_state_shardings(tx, ap, psh, mesh), "ema": psh, "step": rep, "rng": rep}
    state = partition.sharded_init(
        lambda: step_lib.init_state(*nnx.split(factory(), nnx.Param, ...)[1:], tx, 0, True), ssh)
    fn = step_lib.jit_step(step_lib.make_step_fn(g, {}, loss_fn, tx, sched, OCFG, accum, mesh), ssh,
                           partition.batch_sharding(mesh), {}, mesh)
    b = next(toy.ToyData(16, 8, 16, 0))
    b.pop("ids")
    state, m = fn(state, partition.put_batch(b, mesh), {})
    return m, jax.tree.map(np.asarray, state["params"]), state


def test_accumulation_averages_micro_batch_grads():
    """4 micro-batches of 4 == one batch of 16 (sum would be 4x the gradient), for a mean-reduced loss."""
    m1, p1, s1 = _one_step(1, _det_loss)
    m4, p4, _ = _one_step(4, _det_loss)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p4, p1)
    assert int(s1["step"]) == 1 and np.isclose(float(m1["lr"]), 1e-3 / 4)
    with pytest.raises(ValueError, match="not divisible by grad_accum=3"):
        step_lib.split_micro({"x": jnp.zeros((16, 2))}, 3)


def _toy_config(**kw):
    c = config_lib.load(CONFIG + ":steps=4")
    c.progress_bar = False
    c.tensorboard = True
    for k, v in kw.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def test_nan_guard_names_step_and_batch_ids(tmp_path):
    c = _toy_config(**{"data.nan_at_step": 2, "checkpoint.every_steps": 100})
    with pytest.raises(train.NonFiniteLossError, match=r"step 3: non-finite loss.*batch ids .*\[32, 33"):
        train.run(c, str(tmp_path))  # data step index 2 = the 3rd optimizer step, ids 32..47
    assert not os.path.exists(tmp_path / "checkpoints" / "3")


def test_nan_guard_with_deferred_metric_fetch(tmp_path):
    """log_every=10 > steps: metrics are fetched only at the last step, yet the guard names step 3 and its ids."""
    c = _toy_config(**{"data.nan_at_step": 2, "checkpoint.every_steps": 100, "log_every": 10})
    with pytest.raises(train.NonFiniteLossError, match=r"step 3: non-finite loss.*batch ids .*\[32, 33"):
        train.run(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints" / "4")


def test_train_run_writes_metrics_tensorboard_png(tmp_path):
    out = train.run(_toy_config(**{"grad_accum": 2}), str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and out["exit"] == "done"
    assert rows[-1]["loss"] < rows[0]["loss"] and {"grad_norm", "lr", "loss_vec", "loss_txt"} <= set(rows[0])
    assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    assert json.loads((tmp_path / "config.json").read_text())["stage"] == "toy"


def test_init_from_params_enter_the_init_and_other_shapes_are_refused(tmp_path):
    """init_from: the loaded params go into the init program (no random copy to overwrite): a run of 0 steps returns
    that state, whose params and EMA equal the source's bit for bit; a model of another width is refused naming the
    source and the parameter."""
    src = train.run(_toy_config(), str(tmp_path / "a"))
    out = train.run(_toy_config(init_from=str(tmp_path / "a"), total_steps=0), str(tmp_path / "b"))
    assert out["init_from_fresh"] == [] and out["start_step"] == 0
    for key in ("params", "ema"):
        jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(out["state"][key]),
                     nnx.to_pure_dict(src["state"]["params"]))
    with pytest.raises(ValueError, match=r"init_from=.*/a: \d+ parameter\(s\) have different shapes.*checkpoint"):
        train.run(_toy_config(init_from=str(tmp_path / "a"), **{"model.width": 48}), str(tmp_path / "c"))


def test_config_overrides_are_type_checked():
    argv = ["--config", CONFIG, "--workdir", "/tmp/x"]
    c, _ = main_lib.parse(argv + ["--config.optim.lr=1e-4", "--config.mesh.tensor=2", "--config.init_from=/x"])
    assert c.optim.lr == 1e-4 and c.mesh.tensor == 2 and c.init_from == "/x" and c.is_locked
    for bad, msg in [("--config.optim.lrr=1", "--config.optim.lrr: no field 'lrr'"),
                     ("--config.optim.lr=abc", "--config.optim.lr: expected float"),
                     ("--config.total_steps=1.5", "--config.total_steps: expected int"),
                     ("--optim.lr=1", "unrecognized argument")]:
        with pytest.raises(ValueError, match=msg):
            main_lib.parse(argv + [bad])
    with pytest.raises(FileNotFoundError, match="no such file"):
        config_lib.load("configs/nope.py")
    assert main_lib.main(["--config", CONFIG, "--workdir", "/tmp/x", "--config.nope=1"]) == 2


def test_distributed_settings_from_env_and_slurm():
    assert distributed.resolve(env={}) is None
    d = distributed.resolve(env={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                                 "JAX_PROCESS_ID": "3"})
    assert (d.coordinator, d.num_processes, d.process_id) == ("10.0.0.1:1234", 4, 3)
    d = distributed.resolve(env={"SLURM_JOB_NODELIST": "gpu[07-10,12]", "SLURM_NTASKS": "5", "SLURM_PROCID": "2"})
    assert (d.coordinator, d.num_processes, d.process_id) == ("gpu07:12345", 5, 2)
    d = distributed.resolve("h:1", 2, 1, env={"JAX_COORDINATOR_ADDRESS": "other:9"})
    assert d.coordinator == "h:1"
    assert distributed.resolve(env={"DUALFASHION_DISTRIBUTED": "1"}).auto
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        distributed.resolve(env={"JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ValueError, match="outside"):
        distributed.resolve("h:1", 2, 2, env={})
    with pytest.raises(ValueError, match="host:port"):
        distributed.resolve("h", 2, 0, env={})
