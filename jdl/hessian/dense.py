"""The dense curvature matrix, built from products with basis vectors in column chunks."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jdl.hessian import operators
from jdl.hessian.operators import Operator


@functools.partial(jax.jit, static_argnames=("operator", "chunk_size"))
def _dense(operator: Operator, params, data, chunk_size: int):
    matvec, x0, _ = operators.matvec_fn(operator, params, data)
    n = x0.shape[0]
    num_chunks = -(-n // chunk_size)
    offsets = jnp.arange(chunk_size)

    def body(j, matrix):
        # The last chunk is shifted back to fit: it recomputes a few columns, identically.
        start = jnp.minimum(j * chunk_size, n - chunk_size)
        basis = (jnp.arange(n)[None, :] == (start + offsets)[:, None]).astype(x0.dtype)
        rows = jax.vmap(matvec)(basis)
        return lax.dynamic_update_slice_in_dim(matrix, rows, start, axis=0)

    return lax.fori_loop(0, num_chunks, body, jnp.zeros((n, n), x0.dtype))


def hessian_matrix(loss_fn: Callable, params: Any, data: Any, *, chunk_size: int | None = None,
                   curvature: str = "hessian", block: Any = None) -> jax.Array:
    """The dense ``(n, n)`` Hessian (or GGN) of the mean loss over ``data``.

    Row ``j`` is the product with the basis vector ``e_j`` (one Hessian-vector
    product per parameter); ``chunk_size`` of them are computed at once with
    ``vmap`` inside one compiled loop, so memory is the ``(n, n)`` result plus
    ``chunk_size`` products' intermediates. Parameters are ordered as by
    :func:`jax.flatten_util.ravel_pytree`. The matrix is symmetric up to
    roundoff (``numpy.linalg.eigvalsh`` reads one triangle).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a :class:`SplitLoss` for the GGN).
      params: any pytree of float arrays; the matrix has their common dtype.
      data: one batch or a list of batches (exact example-weighted mean).
      chunk_size: products computed at once with ``vmap``. Default: 1 on CPU
        (batched products were slower there, measured on the benchmark MLP),
        ``min(n, 64)`` on accelerators.
      curvature: ``"hessian"`` or ``"ggn"``.
      block: optional key path of a sub-tree: that diagonal block.

    Returns:
      The matrix of shape ``(n, n)``.

    Raises:
      ValueError: for bad input or a non-finite entry.
    """
    operator = Operator(loss_fn, curvature, operators.as_block("hessian_matrix", block))
    prepared = operators.check_problem("hessian_matrix", operator, params, data)
    n = operators.param_count(params, operator.block)
    if chunk_size is None:
        chunk_size = 1 if jax.default_backend() == "cpu" else min(n, 64)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"hessian_matrix: expected a positive int chunk_size, got {chunk_size!r}")
    matrix = _dense(operator, params, prepared, min(chunk_size, n))
    operators.check_finite("hessian_matrix", "Hessian entry", matrix)
    return matrix
