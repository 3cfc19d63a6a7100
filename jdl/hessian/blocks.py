"""Per-layer (block) curvature: eigenvalues of diagonal blocks, and where eigenvectors live.

The diagonal block ``H_BB`` of the Hessian for a sub-tree ``B`` of the params
(a layer) is the Hessian of the loss in ``B`` with the other parameters fixed;
:func:`layer_eigenvalues` computes its extreme eigenvalues for every sub-tree
at a given depth, which shows whether the layers' curvatures are on the same
scale (the notes: "use equal number of neurons per layer to keep the layer
hessians on the same scale"). :func:`eigenvector_mass` splits an eigenvector's
squared norm across the sub-trees: the layers a direction of high curvature
lives in.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdl.hessian.eigen import Eigen, eigenvalues


def _key_name(entry) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def layer_paths(params: Any, depth: int = 1) -> list[tuple]:
    """The key paths of the sub-trees of ``params`` at ``depth`` (1: top-level keys).

    Leaves shallower than ``depth`` are their own block.

    Raises:
      ValueError: for ``depth < 1``.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"layer_paths: expected a positive int depth, got {depth!r}")
    paths = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        prefix = tuple(_key_name(entry) for entry in path[:depth])
        if prefix not in paths:
            paths.append(prefix)
    return paths


def _path_name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def layer_eigenvalues(loss_fn: Callable, params: Any, data: Any, *, key: jax.Array,
                      k: int = 1, which: str = "largest", depth: int = 1,
                      **options) -> dict[str, Eigen]:
    """Extreme eigenvalues of each diagonal block (layer) of the Hessian (or GGN).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: any pytree of float arrays.
      data: one batch or a list of batches.
      key: PRNG key (folded with the block index).
      k: eigenvalues per block and end (at most the block's size).
      which: ``"largest"``, ``"smallest"`` or ``"both"``.
      depth: which sub-trees are blocks (see :func:`layer_paths`); for a
        Flax variable dict ``{"params": {...}}`` use ``depth=2``.
      **options: passed to :func:`eigenvalues` (``tol``, ``curvature``, ...).

    Returns:
      ``{"0_dense": Eigen, ...}``, keyed by the ``/``-joined key path.
    """
    return {_path_name(path): eigenvalues(loss_fn, params, data, k=k, which=which,
                                          key=jax.random.fold_in(key, i), block=path, **options)
            for i, path in enumerate(layer_paths(params, depth))}


def eigenvector_mass(vectors: Any, depth: int = 1) -> dict[str, np.ndarray]:
    """The share of each eigenvector's squared norm in each sub-tree at ``depth``.

    Args:
      vectors: eigenvectors as a pytree like params with a leading axis
        ``(k, ...)`` on every leaf (:attr:`Eigen.vectors`).
      depth: which sub-trees to split by (see :func:`layer_paths`).

    Returns:
      ``{"0_dense": shares of shape (k,), ...}``; the shares of each vector sum to 1.
    """
    mass: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(vectors):
        name = _path_name(tuple(_key_name(entry) for entry in path[:depth]))
        leaf = jnp.asarray(leaf)
        squares = np.asarray(jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1)), axis=1),
                             np.float64)
        mass[name] = mass.get(name, 0.0) + squares
    total = sum(mass.values())
    return {name: value / total for name, value in mass.items()}
