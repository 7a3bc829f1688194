"""Multi-process (multi-host) JAX start-up from flags or the environment, before any other JAX call.

Sources, first match wins: explicit arguments (CLI flags) > JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID > SLURM (SLURM_NTASKS, SLURM_PROCID, first node of SLURM_JOB_NODELIST + JAX_COORDINATOR_PORT)
> `DUALFASHION_DISTRIBUTED=1` (TPU pods: `jax.distributed.initialize()` auto-detects everything).
A single process with none of these set skips initialisation.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Mapping

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistConfig:
    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    auto: bool = False  # let jax.distributed.initialize() auto-detect (TPU pods)


def _first_slurm_node(nodelist: str) -> str:
    """'node[01-04,07],gpu9' -> 'node01' (the coordinator runs on the job's first node)."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot parse the first node")
    prefix, ranges = m.group(1), m.group(2)
    return prefix if not ranges else prefix + ranges.split(",")[0].split("-")[0]


def resolve(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
            env: Mapping[str, str] | None = None) -> DistConfig | None:
    """Works out the distributed settings; None = single process, nothing to initialise."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if coordinator is None and "SLURM_JOB_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        port = env.get("JAX_COORDINATOR_PORT", "12345")
        coordinator = f"{_first_slurm_node(env['SLURM_JOB_NODELIST'])}:{port}"
        num_processes = num_processes if num_processes is not None else int(env["SLURM_NTASKS"])
        process_id = process_id if process_id is not None else int(env["SLURM_PROCID"])
    if coordinator is None:
        if env.get("DUALFASHION_DISTRIBUTED") == "1":
            return DistConfig(None, None, None, auto=True)
        if num_processes not in (None, 1):
            raise ValueError(f"num_processes={num_processes} but no coordinator address "
                             "(--coordinator or JAX_COORDINATOR_ADDRESS)")
        return None
    if ":" not in coordinator:
        raise ValueError(f"coordinator address {coordinator!r} must be host:port")
    if num_processes is None or process_id is None:
        raise ValueError(f"coordinator {coordinator!r} given but num_processes={num_processes}, "
                         f"process_id={process_id}; set JAX_NUM_PROCESSES and JAX_PROCESS_ID (or the flags)")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} outside [0, {num_processes})")
    return DistConfig(coordinator, num_processes, process_id)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> DistConfig | None:
    """Calls `jax.distributed.initialize` when the settings say so; on CPU also enables gloo collectives."""
    cfg = resolve(coordinator, num_processes, process_id)
    if cfg is None:
        return None
    import jax

    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cfg.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
    log.info("jax.distributed: process %d/%d, coordinator %s", jax.process_index(), jax.process_count(),
             cfg.coordinator or "auto")
    return cfg
