"""Stochastic trace estimation: Hutchinson and Hutch++.

Hutchinson (1989): ``tr(C) = E[z^T C z]`` for Rademacher ``z``; the mean of
``m`` samples has standard error ``std / sqrt(m)``. Hutch++ (Meyer, Musco,
Musco and Woodruff, "Hutch++: Optimal Stochastic Trace Estimation", SOSA
2021) spends a third of the products on a sketch ``Q = orth(C S)`` whose
part ``tr(Q^T C Q)`` is exact, and the rest on Hutchinson for the deflated
``(I - QQ^T) C (I - QQ^T)``: a matrix with a few large eigenvalues (a
network's Hessian) then needs far fewer products for the same error. Its
standard error is that of the Hutchinson part.

With ``rtol``, samples are drawn in blocks until the standard error is at
most ``rtol * |estimate|`` (the Hutch++ sketch stays fixed: the adaptive part
is the deflated Hutchinson).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdl.hessian import operators
from jdl.hessian.lanczos import check_key, inner
from jdl.hessian.operators import Operator

METHODS = ("hutchinson", "hutch++")
_MIN_SAMPLES = 10


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate.

    Attributes:
      estimate: the estimate of ``tr(C)`` (float).
      stderr: its standard error (float): ``std(samples) / sqrt(len(samples))``.
      samples: the Hutchinson samples ``z^T C z`` (of the deflated matrix for
        Hutch++), shape ``(num_samples,)``.
      exact_part: ``tr(Q^T C Q)`` of the Hutch++ sketch (0.0 for Hutchinson).
      num_matvecs: curvature-vector products used.
    """

    estimate: float
    stderr: float
    samples: np.ndarray
    exact_part: float
    num_matvecs: int


@functools.partial(jax.jit, static_argnames=("operator", "vmap_size"))
def _quadratic_forms(operator: Operator, params, data, keys, sketch, vmap_size: int):
    """``z^T C z`` for Rademacher ``z`` deflated by the orthonormal columns of ``sketch``."""
    matvec, x0, _ = operators.matvec_fn(operator, params, data)

    def sample(key):
        z = jax.random.rademacher(key, x0.shape, x0.dtype)
        z = z - inner(sketch, inner(z, sketch))
        return inner(z, matvec(z))

    return lax.map(sample, keys, batch_size=vmap_size)


@functools.partial(jax.jit, static_argnames=("operator", "size", "vmap_size"))
def _sketch(operator: Operator, params, data, key, size: int, vmap_size: int):
    """Hutch++'s ``Q = orth(C S)``, shape ``(n, size)``, and the exact ``tr(Q^T C Q)``."""
    matvec, x0, _ = operators.matvec_fn(operator, params, data)
    signs = jax.random.rademacher(key, (size, x0.shape[0]), x0.dtype)
    q, _ = jnp.linalg.qr(lax.map(matvec, signs, batch_size=vmap_size).T)
    products = lax.map(matvec, q.T, batch_size=vmap_size)
    return q, jnp.sum(q.T * products)


def trace(loss_fn: Callable, params: Any, data: Any, *, key: jax.Array, num_samples: int = 100,
          method: str = "hutchinson", rtol: float | None = None, curvature: str = "hessian",
          block: Any = None, vmap_size: int = 1, check_determinism: bool = False
          ) -> TraceEstimate:
    """Estimate the trace of the Hessian (or GGN) of the mean loss over ``data``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a :class:`SplitLoss` for the GGN).
      params: any pytree of float arrays.
      data: one batch or a list of batches (exact example-weighted mean).
      key: PRNG key; the same key gives the same estimate.
      num_samples: most curvature-vector products to spend. Hutch++ uses a
        third for the sketch ``S``, a third for ``C Q`` and the rest for
        Hutchinson.
      method: ``"hutchinson"`` or ``"hutch++"``.
      rtol: stop early once ``stderr <= rtol * |estimate|`` (checked every 10
        samples, at least 10 samples); None spends the whole budget.
      curvature: ``"hessian"`` or ``"ggn"``.
      block: optional key path of a sub-tree: the trace of that diagonal block.
      vmap_size: products computed at once with ``vmap`` (more is faster on
        accelerators; 1 suits CPUs).
      check_determinism: first apply the operator twice to one vector and
        raise if the results differ.

    Returns:
      A :class:`TraceEstimate`.

    Raises:
      ValueError: for bad input, a budget too small for the method, or a
        non-finite product.
    """
    fn_name = "trace"
    operator = Operator(loss_fn, curvature, operators.as_block(fn_name, block))
    prepared = operators.check_problem(fn_name, operator, params, data)
    key = check_key(fn_name, key)
    if method not in METHODS:
        raise ValueError(f"{fn_name}: expected method to be one of {METHODS}, got {method!r}")
    minimum = 3 if method == "hutch++" else 2
    if not isinstance(num_samples, (int, np.integer)) or num_samples < minimum:
        raise ValueError(
            f"{fn_name}: expected num_samples to be an int >= {minimum} for {method!r}, "
            f"got {num_samples!r}")
    if rtol is not None and not rtol > 0:
        raise ValueError(f"{fn_name}: expected rtol to be None or positive, got {rtol!r}")
    if not isinstance(vmap_size, int) or vmap_size < 1:
        raise ValueError(f"{fn_name}: expected a positive int vmap_size, got {vmap_size!r}")
    if check_determinism:
        operators.check_deterministic(fn_name, operator, params, prepared, key)
    n = operators.param_count(params, operator.block)
    dtype = operators.flat_dtype(params, operator.block)
    k_sketch, k_samples = jax.random.split(key)
    budget, matvecs, exact = int(num_samples), 0, 0.0
    sketch = jnp.zeros((n, 0), dtype)
    if method == "hutch++":
        size = min(budget // 3, n)
        sketch, exact_part = _sketch(operator, params, prepared, k_sketch, size, vmap_size)
        operators.check_finite(fn_name, "Hessian-vector product (Hutch++ sketch)", exact_part)
        exact, matvecs, budget = float(exact_part), 2 * size, budget - 2 * size
    keys = jax.random.split(k_samples, budget)
    samples = np.zeros(0)
    block_size = budget if rtol is None else _MIN_SAMPLES
    while samples.size < budget:
        chunk = keys[samples.size:samples.size + block_size]
        values = _quadratic_forms(operator, params, prepared, chunk, sketch, vmap_size)
        operators.check_finite(fn_name, "Hessian-vector product (quadratic form)", values)
        samples = np.concatenate([samples, np.asarray(values, np.float64)])
        if rtol is not None and samples.size >= 2:
            estimate = exact + samples.mean()
            if samples.std(ddof=1) / np.sqrt(samples.size) <= rtol * abs(estimate):
                break
    matvecs += samples.size
    stderr = (float(samples.std(ddof=1) / np.sqrt(samples.size)) if samples.size > 1
              else float("inf"))
    return TraceEstimate(float(exact + samples.mean()), stderr, samples, exact, matvecs)

