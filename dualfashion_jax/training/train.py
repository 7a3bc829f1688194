"""The training loop, big_vision style: read it top to bottom.

Sections: config + workdir | mesh | data | model + optimizer shapes | shardings + sharded init |
resume (own workdir > config.init_from > scratch) | step fn (jit, AOT) | loop (tqdm, metrics, NaN guard,
checkpoints, SIGTERM/SIGINT) | final checkpoint + loss-curve PNG. Stage specifics live in `tasks.py` + `stage*.py`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from dualfashion_jax.data import keys as K
from dualfashion_jax.modeling import frozen as frozen_lib, params as params_lib
from dualfashion_jax.modeling.transformer import MODEL_CONFIG
from dualfashion_jax.core import keys, params as core_params
from dualfashion_jax.sharding import activations, mesh as mesh_lib, partition, rules as rules_lib
from dualfashion_jax.training import checkpoint as ckpt_lib, metrics as metrics_lib, optim, step as step_lib, tasks
from dualfashion_jax.training import workdir as workdir_lib

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient norm; names the step and the batch's example ids."""


def _init_from_params(abstract: nnx.State, shardings: nnx.State, loaded: dict,
                      source: str) -> tuple[dict[str, jax.Array], list[str]]:
    """The loaded params whose path and shape match the model, on their shards ({key: array}); and the paths kept
    fresh. Shape mismatches and a checkpoint matching nothing are refused, naming `source`."""
    flat_loaded, flat_sh = keys.flatten(loaded), core_params.flat_view(shardings)
    placed, kept, mismatched = {}, [], []
    for key, x in core_params.flat_view(abstract).items():
        v = flat_loaded.get(key)
        if v is None:
            kept.append(key)
        elif tuple(v.shape) != tuple(x.shape):
            mismatched.append(f"{key}: checkpoint {tuple(v.shape)} vs model {tuple(x.shape)}")
        else:
            placed[key] = partition.put_global(np.asarray(v, dtype=x.dtype), flat_sh[key])  # multi-host too
    if mismatched:
        raise ValueError(f"config.init_from={source}: {len(mismatched)} parameter(s) have different shapes than "
                         f"the model (different preset/latent size?): {mismatched[:10]}")
    if not placed:
        raise ValueError(f"config.init_from={source}: no parameter matched the model (wrong stage/size?)")
    return placed, kept


@dataclasses.dataclass
class StateSpec:
    """Everything about the train state that is known before allocating it."""
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    use_ema: bool
    abstract: dict          # ShapeDtypeStructs of the train state (step.init_state layout)
    shardings: dict         # NamedShardings, same structure
    init: Callable[..., dict]  # (overrides={key: param}) -> a fresh state; run under jit with out_shardings


def build_state_spec(config, task: tasks.Task, mesh, rules) -> StateSpec:
    """Model/optimizer shapes via eval_shape and their shardings (params, opt moments, EMA, rest)."""
    abs_model = nnx.eval_shape(lambda: task.model_factory(nnx.Rngs(config.seed)))
    graphdef, abs_params, abs_rest = nnx.split(abs_model, nnx.Param, ...)
    tx, schedule = optim.make_optimizer(config.optim, int(config.total_steps))
    use_ema = config.optim.ema_decay is not None
    replicated = NamedSharding(mesh, P())
    p_sh = partition.state_shardings(abs_params, mesh, rules)
    shardings = {
        "params": p_sh, "rest": partition.state_shardings(abs_rest, mesh, rules),
        "opt": partition.opt_state_shardings(tx, abs_params, p_sh, mesh),
        "ema": p_sh if use_ema else {}, "step": replicated, "rng": replicated,
    }

    def init(overrides=None):
        """Under jit, XLA drops the random init of every overridden param (init_from: no second copy, no compile)."""
        _, params, rest = nnx.split(task.model_factory(nnx.Rngs(config.seed)), nnx.Param, ...)
        if overrides:
            params = jax.tree_util.tree_map_with_path(lambda p, x: overrides.get(keys.key_str(p), x), params)
        return step_lib.init_state(params, rest, tx, config.seed, use_ema)

    return StateSpec(graphdef, tx, schedule, use_ema, jax.eval_shape(init), shardings, init)


def run(config, workdir: str, *, allow_config_change: bool = False) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints of the same config); returns a summary dict."""
    # ------------------------------------------------------------------------------------------------
    # Config and workdir (a workdir holding checkpoints of another config is refused: workdir.py).
    # ------------------------------------------------------------------------------------------------
    primary = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    config_json = json.loads(config.to_json_best_effort())
    workdir_lib.claim(workdir, config_json, has_checkpoints=ckpt_lib.has_checkpoints(workdir),
                      allow_change=allow_config_change, write=primary)
    stop: dict[str, str | None] = {"signal": None}  # SIGTERM / SIGINT: save at the end of this step and return
    prev_handlers = {sig: signal.signal(sig, lambda num, _: stop.update(signal=signal.Signals(num).name))
                     for sig in (signal.SIGTERM, signal.SIGINT)} if _in_main_thread() else {}

    # ------------------------------------------------------------------------------------------------
    # Mesh and sharding rules.
    # ------------------------------------------------------------------------------------------------
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    rules = rules_lib.get(config.sharding.rules, dict(config.sharding.get("overrides", {}) or {}))
    log.info("mesh %s over %d devices (%d processes), rules %r", dict(mesh.shape), mesh.size,
             jax.process_count(), config.sharding.rules)

    # ------------------------------------------------------------------------------------------------
    # Data (host-local rows; assembled into global arrays sharded over (data, fsdp)).
    # ------------------------------------------------------------------------------------------------
    task = tasks.build(config)
    if primary and task.model_config is not None:
        with open(os.path.join(workdir, MODEL_CONFIG), "w", encoding="utf-8") as f:
            json.dump(task.model_config.to_dict(), f, indent=2)
    partition.check_batch_divisible(task.global_batch, mesh)
    if task.global_batch % config.grad_accum:
        raise ValueError(f"config.batch_size={task.global_batch} not divisible by grad_accum={config.grad_accum}")
    data = task.make_data(jax.process_index(), jax.process_count())

    # ------------------------------------------------------------------------------------------------
    # Model and optimizer shapes (no memory allocated), shardings, and the sharded init function.
    # ------------------------------------------------------------------------------------------------
    spec = build_state_spec(config, task, mesh, rules)
    tx, use_ema, abs_state, state_sh = spec.tx, spec.use_ema, spec.abstract, spec.shardings
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abs_state["params"]))
    log.info("model: %.2fM trainable params", n_params / 1e6)
    frozen_gd, frozen_sh, frozen = {}, {}, {}
    for name, fz in task.frozen.items():
        gd, abs_fz = nnx.split(nnx.eval_shape(fz.factory))
        frozen_gd[name], frozen_sh[name] = gd, partition.state_shardings(abs_fz, mesh, rules)
        if fz.params is None:
            frozen[name] = partition.sharded_init(lambda f=fz.factory: nnx.split(f())[1], frozen_sh[name])
            frozen_lib.save_random(workdir, name, fz, frozen[name])
        else:
            frozen[name] = partition.place_flat(abs_fz, frozen_sh[name], fz.params, fz.source or name)
    if task.make_consts is not None:
        replicated = NamedSharding(mesh, P())
        consts = task.make_consts({n: nnx.merge(frozen_gd[n], frozen[n]) for n in frozen_gd})
        for k, v in consts.items():
            frozen[k], frozen_sh[k] = partition.put_global(v, replicated), replicated

    # ------------------------------------------------------------------------------------------------
    # Resume: own workdir > config.init_from (params only) > scratch.
    # ------------------------------------------------------------------------------------------------
    ckpt = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    restored = ckpt.restore(abs_state, state_sh)
    if restored is not None:
        (start, state, data_state, _), fresh = restored, None
        data.set_state(data_state)
        log.info("resumed from %s/%d", ckpt.directory, start)
    else:
        start, fresh = 0, None
        if config.get("init_from"):  # the loaded params go into the init program (the EMA starts from them)
            src_step, loaded = params_lib.load_params(config.init_from, use_ema=config.get("init_from_ema", False))
            placed, fresh = _init_from_params(abs_state["params"], state_sh["params"], loaded, config.init_from)
            state = jax.jit(spec.init, out_shardings=state_sh, donate_argnums=0)(placed)
            log.info("init_from %s step %d; %d params kept fresh: %s", config.init_from, src_step, len(fresh),
                     fresh[:20])
        else:
            state = partition.sharded_init(spec.init, state_sh)

    # ------------------------------------------------------------------------------------------------
    # The step function: jit with explicit shardings, state donated, compiled ahead of time.
    # ------------------------------------------------------------------------------------------------
    step_fn = step_lib.make_step_fn(spec.graphdef, frozen_gd, task.loss_fn, tx, spec.schedule, config.optim,
                                    config.grad_accum, mesh)
    jitted = step_lib.jit_step(step_fn, state_sh, partition.batch_sharding(mesh), frozen_sh, mesh)
    compiled = None

    # ------------------------------------------------------------------------------------------------
    # The loop.
    # ------------------------------------------------------------------------------------------------
    writer = metrics_lib.MetricWriter(workdir, enabled=primary, tensorboard=config.get("tensorboard", True))
    total = int(config.total_steps)
    bar = tqdm.tqdm(total=total, initial=start, disable=not primary or not config.get("progress_bar", True),
                    unit="step", dynamic_ncols=True)
    last: dict[str, float] = {}
    step_no, exit_reason = start, "done"
    t_last = time.perf_counter()
    # Metrics stay on device until a log / checkpoint / last / stop step (no host sync per step: the next batch
    # is built while the device runs). `pending` keeps (step, batch ids, device metrics) of the unfetched steps,
    # so the NaN guard still names the first non-finite step and its batch ids, before any checkpoint is saved.
    pending: list[tuple[int, Any, dict]] = []
    try:
        for step_no in range(start + 1, total + 1):
            host_batch = next(data)
            ids = np.asarray(host_batch.pop(K.IDS)) if K.IDS in host_batch else None
            batch = partition.put_batch(host_batch, mesh)
            if compiled is None:
                t0 = time.perf_counter()
                # context mesh + rules: activation layouts (sharding/activations.py, with config.sharding.overrides)
                # and the splash backend's per-shard run (attention_splash.py) are traced under them
                with jax.set_mesh(mesh), activations.use_rules(rules):
                    compiled = jitted.lower(state, batch, frozen).compile()
                _log_compiled(compiled, time.perf_counter() - t0)
            state, m = compiled(state, batch, frozen)
            pending.append((step_no, ids, m))
            if config.get("debug_step_delay_s", 0):
                time.sleep(float(config.debug_step_delay_s))  # tests: leaves time to kill between steps
            save = step_no % config.checkpoint.every_steps == 0 or step_no == total or stop["signal"]
            if not (save or step_no % config.log_every == 0):
                continue
            fetched = jax.device_get([pm for _, _, pm in pending])
            now = time.perf_counter()
            rate = len(pending) / max(now - t_last, 1e-9)  # mean steps/s over the unfetched window
            t_last = now
            for (s_no, s_ids, _), fm in zip(pending, fetched):
                fm = {k: float(v) for k, v in fm.items()}
                if not (np.isfinite(fm["loss"]) and np.isfinite(fm["grad_norm"])):
                    raise NonFiniteLossError(
                        f"step {s_no}: non-finite loss={fm['loss']} grad_norm={fm['grad_norm']}; "
                        f"batch ids on process {jax.process_index()}: {None if s_ids is None else s_ids.tolist()}")
                fm["steps_per_s"] = rate
                last = fm
                if s_no % config.log_every == 0 or s_no == total:
                    writer.write(s_no, fm)
            bar.update(len(pending))
            pending.clear()
            bar.set_postfix(loss=f"{last['loss']:.4f}", steps_per_s=f"{last['steps_per_s']:.2f}")
            if save:
                ckpt.save(step_no, state, data.get_state(), config_json, wait=bool(stop["signal"]))
            if stop["signal"]:
                exit_reason = stop["signal"].lower()  # "sigterm" | "sigint"
                log.warning("%s: saved checkpoint %d, exiting cleanly", stop["signal"], step_no)
                break
    finally:
        bar.close()
        ckpt.close()
        writer.close()
        for sig, handler in prev_handlers.items():
            signal.signal(sig, handler)

    # ------------------------------------------------------------------------------------------------
    # Final: loss curve.
    # ------------------------------------------------------------------------------------------------
    png = None
    if primary:
        png = metrics_lib.plot_loss_curve(writer.path, os.path.join(workdir, "loss_curve.png"))
    return {"step": step_no, "start_step": start, "metrics": last, "exit": exit_reason, "state": state,
            "loss_curve": png, "init_from_fresh": fresh}


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _log_compiled(compiled, seconds: float) -> None:
    """Logs compile time and XLA's per-device memory estimate (AOT `memory_analysis`)."""
    try:
        mem = compiled.memory_analysis()
        gib = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes) / 2**30
        log.info("train step compiled in %.1fs; per-device memory ~%.3f GiB", seconds, gib)
    except Exception:  # noqa: BLE001  (memory_analysis is unavailable on some backends)
        log.info("train step compiled in %.1fs", seconds)
