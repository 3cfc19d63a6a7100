"""Meshes and shardings for data parallelism: JAX's own SPMD, nothing home-made.

A batch is sharded over its leading example axis on a one-axis mesh named
``"data"``; parameters are replicated. Any jitted function applied to such
inputs runs on all devices, XLA inserting the reductions. On one host with
no accelerator, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` gives
four CPU devices to test with. For several hosts, call
``jax.distributed.initialize()`` first; ``jax.devices()`` then lists every
host's devices and the same code runs unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over the first ``num_devices`` devices (all if None)."""
    devices = jax.devices()
    num = len(devices) if num_devices is None else num_devices
    if not 1 <= num <= len(devices):
        raise ValueError(
            f"data_mesh: expected 1 <= num_devices <= {len(devices)} (available), got {num}")
    return Mesh(np.asarray(devices[:num]), (DATA_AXIS,))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a pytree of arrays with leading example axis ``n`` split over ``mesh``.

    Raises:
      ValueError: if ``n`` is not divisible by the number of devices.
    """
    size = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    for leaf in jax.tree.leaves(batch):
        if leaf.shape[0] % size:
            raise ValueError(
                f"shard_batch: expected a leading axis divisible by {size} devices, "
                f"got shape {leaf.shape}")
    return jax.device_put(batch, sharding)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a full copy of every leaf of ``tree`` on each device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
