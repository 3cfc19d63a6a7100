"""Data-parallel training with JAX's own SPMD: minibatches split, parameters replicated.

``fit(..., mesh=jdl.parallel.data_mesh())`` places the training state and the
data on every device of the mesh (replicated) and constrains each
minibatch, gathered inside the compiled epoch, to be split over its example
axis (``PartitionSpec("data")``). XLA's partitioner then runs the forward and
backward pass on each device's slice and inserts the all-reduce of the
gradients; the parameters stay replicated and equal on every device. The
result equals one-device training to float tolerance (only the order of the
gradient sum changes). The batch size must be a multiple of the number of
devices.

Several hosts (GPU/TPU pods): call ``jax.distributed.initialize()`` at the
start of every process (on managed clusters it reads the coordinator address,
process count and id from the environment; otherwise pass
``coordinator_address``, ``num_processes`` and ``process_id``). Then
``jax.devices()`` lists every host's devices, ``data_mesh()`` spans them all,
and the same ``fit`` call runs unchanged on every process, each holding the
full (replicated) dataset. Checkpoints should then be written by process 0
only (``jax.process_index() == 0``).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdl.parallel import DATA_AXIS, replicate


def check_mesh(fn_name: str, mesh: Mesh, batch_size: int) -> None:
    """Raise ``ValueError`` unless ``mesh`` has a ``"data"`` axis dividing ``batch_size``."""
    if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{fn_name}: expected a jax Mesh with a {DATA_AXIS!r} axis "
            f"(jdl.parallel.data_mesh()), got {mesh!r}")
    size = mesh.shape[DATA_AXIS]
    if batch_size % size:
        raise ValueError(
            f"{fn_name}: expected a batch_size divisible by the {size} devices of the mesh, "
            f"got {batch_size}")


def place_replicated(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` replicated on every device of ``mesh`` (unchanged when ``mesh`` is None)."""
    return tree if mesh is None else replicate(tree, mesh)


def split_batch(batch: Any, mesh: Mesh | None) -> Any:
    """Inside a jit: constrain a minibatch to be split over its example axis on ``mesh``."""
    if mesh is None:
        return batch
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(lambda leaf: jax.lax.with_sharding_constraint(leaf, sharding), batch)
