"""Device mesh `(data, fsdp, tensor)` built from config sizes, one of which may be -1 (fill the rest).

Multi-slice / multi-node: `dcn_data` (config.mesh.dcn_data, default 1) splits the `data` axis over that many
slices (TPU) or nodes (GPU, one process per node); fsdp and tensor stay inside a slice/node, so only the
gradient reduction of `data` crosses the slow network (`mesh_utils.create_hybrid_device_mesh`). Fake CPU
devices have no slices: they are grouped by process, then in id order, into `dcn_data` consecutive blocks.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from dualfashion_jax.sharding.rules import MESH_AXES


def resolve_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Mesh shape in `MESH_AXES` order; at most one size may be -1 and is filled so the product = devices."""
    unknown = [k for k in sizes if k not in MESH_AXES]
    if unknown:
        raise ValueError(f"config.mesh: unknown axes {unknown}; expected a subset of {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    fill = [i for i, s in enumerate(shape) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices are not "
                             f"divisible by the fixed axes' product {known}")
        shape[fill[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"but {num_devices} are available")
    return tuple(shape)


DCN_KEY = "dcn_data"


def hybrid_devices(shape: tuple[int, ...], dcn_data: int, devices: Sequence[jax.Device]) -> np.ndarray:
    """Device array of `shape` whose `data` axis is `dcn_data` slices/nodes x the rest inside each one."""
    if shape[0] % dcn_data:
        raise ValueError(f"config.mesh.{DCN_KEY}={dcn_data} must divide the data axis size {shape[0]} "
                         f"(mesh {dict(zip(MESH_AXES, shape))})")
    ici, dcn = (shape[0] // dcn_data,) + tuple(shape[1:]), (dcn_data,) + (1,) * (len(shape) - 1)
    if devices[0].platform != "cpu":
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True,
                                                    process_is_granule=not hasattr(devices[0], "slice_index"))
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))  # CPU fallback: blocks of consecutive ids
    return np.asarray(ordered).reshape(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Creates the mesh over all (global) devices, or over `devices` when given (tests: a 1-device mesh)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(sizes)
    dcn_data = int(sizes.pop(DCN_KEY, 1) or 1)
    shape = resolve_shape(sizes, len(devices))
    types = (AxisType.Auto,) * len(MESH_AXES)
    if dcn_data > 1:
        return Mesh(hybrid_devices(shape, dcn_data, devices), MESH_AXES, axis_types=types)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=types)
