"""Extreme eigenvalues and eigenvectors of the Hessian (or GGN) by Lanczos with locking.

:func:`eigenvalues` runs fully reorthogonalised Lanczos until the wanted Ritz
pairs have residual ``||C y - theta y|| <= tol * ||C||``. A single Krylov
space sees one copy of a repeated eigenvalue, so (with ``multiplicity_check``)
the converged pairs are then locked and Lanczos restarts from a random vector
orthogonal to them: a Ritz value beyond the wanted ones there is a missed copy,
which is locked in turn, until none is found. Smallest means algebraically
smallest, so negative eigenvalues are found (power iteration's
largest-magnitude answer is not enough at a saddle).

Reference: B. Parlett, "The Symmetric Eigenvalue Problem", 1998, ch. 13;
Y. Saad, "Numerical Methods for Large Eigenvalue Problems", 2011, ch. 6
(locking and deflation).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdl.hessian import operators
from jdl.hessian.lanczos import (
    LanczosState, basis_rows, check_key, check_steps, extend, init_state, inner, norm)
from jdl.hessian.operators import Operator

WHICH = ("largest", "smallest", "both")


class Eigen(NamedTuple):
    """Extreme eigenpairs of a curvature matrix.

    Attributes:
      values: eigenvalues (the Rayleigh quotients ``v^T C v`` of the vectors),
        shape ``(k,)`` (``(2k,)`` for ``which="both"``): largest first in
        descending order, then (for "smallest"/"both") the smallest in
        ascending order.
      vectors: unit eigenvectors as a pytree like params (or the block), each
        leaf with a leading axis of size ``len(values)``.
      residuals: ``||C v - lambda v||`` of each pair, computed with one
        explicit product, shape ``(len(values),)``.
      converged: ``residuals <= tol * ||C||`` (``||C||`` estimated by the
        largest Ritz value in magnitude), shape ``(len(values),)``.
      num_matvecs: curvature-vector products used (Lanczos steps of every run
        plus the residual checks).
      which: ``"largest"``, ``"smallest"`` or ``"both"``, as asked.
    """

    values: jax.Array
    vectors: Any
    residuals: jax.Array
    converged: jax.Array
    num_matvecs: int
    which: str


def _start(key: jax.Array, locked: np.ndarray, num_locked: int):
    """A random unit start vector orthogonal to ``locked[:num_locked]``, and a restart vector.

    Drawn on the host from the key's bits (the driver loop runs there): the
    same key gives the same vectors, and no program is compiled for them.
    """
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if typed else key).ravel())
    v, restart = rng.standard_normal((2, locked.shape[1]))
    rows = locked[:num_locked]
    for _ in range(2 if num_locked else 0):
        v = v - rows.T @ (rows @ v)
    return v / np.linalg.norm(v), restart


@functools.partial(jax.jit, static_argnames=("operator",))
def _rayleigh(operator: Operator, params, data, vectors):
    """``v^T C v`` and ``||C v - (v^T C v) v||`` for unit vectors ``v``, rows of ``(r, n)``."""
    matvec, _, _ = operators.matvec_fn(operator, params, data)

    def one(v):
        product = matvec(v)
        value = inner(v, product)
        return value, norm(product - value * v)

    return lax.map(one, vectors)


@functools.partial(jax.jit, static_argnames=("rows",))
def _fresh_state(v0: jax.Array, restart: jax.Array, rows: int) -> LanczosState:
    """:func:`init_state` as one compiled program: the basis is made on the device, not copied."""
    return init_state(v0, rows, restart)


def _tridiagonal_eigh(state: LanczosState, m: int):
    """Ritz values (ascending), ``T``'s eigenvectors and residual estimates (float64, on the host)."""
    alphas = np.asarray(state.alphas, np.float64)[:m]
    betas = np.asarray(state.betas, np.float64)[:m]
    t = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    values, vectors = np.linalg.eigh(t)
    return values, vectors, np.abs(betas[-1] * vectors[-1, :])


def _wanted(values: np.ndarray, want: dict[str, int]) -> dict[str, np.ndarray]:
    """Indices of the wanted Ritz values: descending for "largest", ascending for "smallest"."""
    order = np.argsort(values)
    picked = {}
    if want.get("largest"):
        picked["largest"] = order[::-1][:want["largest"]]
    if want.get("smallest"):
        picked["smallest"] = order[:want["smallest"]]
    return picked


def _krylov_run(fn_name: str, operator: Operator, params, data, key, locked, num_locked: int,
                want: dict, limit: int, rows: int, tol: float, scale: float,
                budget: int | None = None, boundary: dict | None = None):
    """Lanczos from a random start orthogonal to ``locked`` until the wanted pairs converge.

    With ``boundary`` (a check run), the run also stops after ``budget`` steps
    if no wanted Ritz value lies beyond ``boundary[side]``: a missed copy of a
    repeated eigenvalue would have shown by then, as fast as in the first run.

    Returns:
      ``(pairs, converged, steps, scale)`` where ``pairs[side]`` is a list of
      ``(value, vector)`` with float64 vectors of shape ``(n,)``, and ``scale``
      the updated ``||C||`` estimate.
    """
    v0, restart = _start(key, locked, num_locked)
    dtype = operators.flat_dtype(params, operator.block)
    # Nothing locked yet: no projection at all (a zero block would cost a pass per step).
    locked_device = jnp.asarray(locked, dtype) if num_locked else None
    state = _fresh_state(jnp.asarray(v0, dtype), jnp.asarray(restart, dtype), rows)
    need = sum(want.values())
    stop = min(limit, max(20, 3 * need))
    while True:
        state = extend(operator, params, data, state, locked_device, stop)
        operators.check_finite(fn_name, "Hessian-vector product (Lanczos coefficient)",
                               (state.alphas, state.betas))
        values, vectors_t, estimates = _tridiagonal_eigh(state, stop)
        scale = max(scale, float(np.max(np.abs(values))))
        picked = _wanted(values, want)
        indices = np.concatenate(list(picked.values()))
        done = bool(np.all(estimates[indices] <= tol * scale))
        if done or stop >= limit:
            break
        if boundary is not None and stop >= budget and not any(
                _beyond(side, values[idx[0]], boundary[side]) for side, idx in picked.items()):
            break
        stop = min(limit, stop + 10)
    ritz_vectors = vectors_t[:, indices].T @ np.asarray(state.basis)[:stop]
    pairs, position = {}, 0
    for side, idx in picked.items():
        pairs[side] = [(float(values[j]), ritz_vectors[position + r]) for r, j in enumerate(idx)]
        position += len(idx)
    return pairs, done, stop, scale


def _beyond(side: str, value: float, boundary: float) -> bool:
    """Whether ``value`` belongs before ``boundary`` on ``side``."""
    return value > boundary if side == "largest" else value < boundary


def _check_args(fn_name: str, k: Any, which: str, tol: Any, n: int, max_steps: Any) -> tuple:
    if which not in WHICH:
        raise ValueError(f"{fn_name}: expected which to be one of {WHICH}, got {which!r}")
    total_per_k = 2 if which == "both" else 1
    if not isinstance(k, (int, np.integer)) or k < 1 or total_per_k * k > n:
        raise ValueError(
            f"{fn_name}: expected k to be an int with 1 <= {'2*' if total_per_k == 2 else ''}k "
            f"<= {n} (the parameter count), got k={k!r}")
    if not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"{fn_name}: expected a positive tol, got {tol!r}")
    if max_steps is None:
        max_steps = min(n, max(200, 20 * total_per_k * k))
    check_steps(fn_name, "max_steps", max_steps, n)
    if max_steps < total_per_k * k:
        raise ValueError(
            f"{fn_name}: expected max_steps >= the number of eigenvalues wanted "
            f"({total_per_k * k}), got {max_steps}")
    return int(k), float(tol), int(max_steps)


def eigenvalues(loss_fn: Callable, params: Any, data: Any, *, k: int = 5,
                which: str = "largest", key: jax.Array, tol: float = 1e-4,
                max_steps: int | None = None, curvature: str = "hessian", block: Any = None,
                multiplicity_check: bool = True, check_determinism: bool = False) -> Eigen:
    """The ``k`` largest and/or smallest eigenvalues of the Hessian (or GGN), with eigenvectors.

    Example:
      >>> eig = hessian.eigenvalues(loss_fn, params, (x, y), k=5, key=jax.random.key(0))
      >>> eig.values          # (5,), descending
      >>> eig.vectors["0_dense"]["w"].shape   # (5, in, out)

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a :class:`SplitLoss` for the GGN).
      params: any pytree of float arrays.
      data: one batch or a list of batches (exact example-weighted mean).
      k: number of eigenvalues per end.
      which: ``"largest"``, ``"smallest"`` (algebraic: negative ones first)
        or ``"both"``.
      key: PRNG key; the same key gives the same answer.
      tol: stop when every wanted pair has ``||C v - lambda v|| <= tol * ||C||``.
      max_steps: most Lanczos steps per run (the basis holds ``max_steps``
        vectors of ``n``); default ``min(n, max(200, 20 k))``.
      curvature: ``"hessian"`` or ``"ggn"``.
      block: optional key path of a sub-tree: eigenvalues of that diagonal
        block of the matrix, the other parameters fixed.
      multiplicity_check: after convergence, restart orthogonally to the
        converged vectors to find missed copies of repeated eigenvalues (about
        doubles the cost; False trusts one Krylov space).
      check_determinism: first apply the operator twice to one vector and
        raise if the results differ.

    Returns:
      An :class:`Eigen`. A ``RuntimeWarning`` is issued when some pair did
      not reach ``tol`` within ``max_steps``.

    Raises:
      ValueError: for bad input (non-scalar loss, non-float params, ``k``
        larger than the dimension, ...) or a non-finite Hessian-vector product.
    """
    fn_name = "eigenvalues"
    operator = Operator(loss_fn, curvature, operators.as_block(fn_name, block))
    prepared = operators.check_problem(fn_name, operator, params, data)
    key = check_key(fn_name, key)
    n = operators.param_count(params, operator.block)
    k, tol, max_steps = _check_args(fn_name, k, which, tol, n, max_steps)
    if check_determinism:
        operators.check_deterministic(fn_name, operator, params, prepared, key)
    sides = ("largest", "smallest") if which == "both" else (which,)
    rows = basis_rows(max_steps)
    dtype = operators.flat_dtype(params, operator.block)
    # Room for the wanted pairs and the missed copies; at least 32 rows, so that calls
    # with different k share one compiled program.
    capacity = max(32, 2 * k * len(sides) + 1)
    locked = np.zeros((capacity, n))
    found: dict[str, list] = {side: [] for side in sides}
    num_locked, matvecs, scale, run = 0, 0, 0.0, 0

    pairs, done, steps, scale = _krylov_run(
        fn_name, operator, params, prepared, jax.random.fold_in(key, run), locked, num_locked,
        {side: k for side in sides}, max_steps, rows, tol, scale)
    matvecs += steps
    for side in sides:
        for value, vector in pairs[side]:
            found[side].append((value, vector))
            locked[num_locked] = vector
            num_locked += 1

    budget = steps
    while multiplicity_check and done and num_locked < min(capacity, n):
        run += 1
        boundary = {side: sorted((v for v, _ in found[side]), reverse=side == "largest")[k - 1]
                    for side in sides}
        pairs, done, steps, scale = _krylov_run(
            fn_name, operator, params, prepared, jax.random.fold_in(key, run), locked,
            num_locked, {side: 1 for side in sides}, min(max_steps, n - num_locked), rows, tol,
            scale, budget, boundary)
        matvecs += steps
        missed = False
        for side in sides:
            value, vector = pairs[side][0]
            if _beyond(side, value, boundary[side]) and num_locked < capacity:
                found[side].append((value, vector))
                locked[num_locked] = vector
                num_locked += 1
                missed = True
        if not missed:
            break

    vectors = []
    for side in sides:
        ranked = sorted(found[side], key=lambda pair: pair[0], reverse=side == "largest")[:k]
        vectors += [vec / np.linalg.norm(vec) for _, vec in ranked]
    values, residuals = _rayleigh(operator, params, prepared,
                                  jnp.asarray(np.stack(vectors), dtype))
    matvecs += len(vectors)
    operators.check_finite(fn_name, "eigenvalue or residual", (values, residuals))
    converged = np.asarray(residuals) <= tol * scale
    if not np.all(converged):
        warnings.warn(
            f"{fn_name}: {int(np.sum(~converged))} of {len(vectors)} eigenpairs did not reach "
            f"tol={tol} within max_steps={max_steps} (largest residual "
            f"{float(np.max(residuals)):.3g}, ||C|| ~ {scale:.3g})", RuntimeWarning, stacklevel=2)
    tree = operators.unravel_rows(operators.select(params, operator.block), np.stack(vectors))
    return Eigen(values, tree, residuals, jnp.asarray(converged), matvecs, which)
