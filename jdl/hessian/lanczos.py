"""The Lanczos iteration on a curvature operator, compiled as one loop.

Lanczos (1950) builds an orthonormal basis ``V`` of the Krylov space
``span(v, Cv, C^2 v, ...)`` in which the curvature matrix ``C`` is the
tridiagonal ``T = V^T C V``; the eigenvalues of ``T`` (Ritz values) converge
to the extreme eigenvalues of ``C`` first. In floating point the basis loses
orthogonality and Ritz values repeat ("ghosts", Paige 1971); full
reorthogonalisation against the stored basis (one block Gram-Schmidt pass,
repeated when the norm drops by more than ``1/sqrt(2)``: Daniel, Gragg,
Kaufman and Stewart 1976) prevents it. Without a stored basis (three vectors
of memory, for models too large to keep ``num_steps`` of them) the plain
three-term recurrence is used; its extreme Ritz values are still right, but
interior ones may repeat.

The whole iteration is a ``lax.while_loop`` inside one ``jit``: compile time
does not grow with the number of steps, and a run can be continued.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdl.hessian import operators
from jdl.hessian.operators import Operator

BLOCK_ROWS = 16  # basis rows per Gram-Schmidt block
_HIGHEST = lax.Precision.HIGHEST


class LanczosState(NamedTuple):
    """A Lanczos run in progress.

    Attributes:
      basis: the orthonormal Lanczos vectors as rows, shape
        ``(rows, n)`` with ``rows >= num_steps`` (zero beyond the current
        step), or None without reorthogonalisation.
      v: the current Lanczos vector ``v_step``, shape ``(n,)``.
      v_prev: the previous one (zeros at step 0), shape ``(n,)``.
      alphas: diagonal of ``T``, shape ``(num_steps,)``.
      betas: ``betas[j] = ||w_j||`` couples ``v_j`` and ``v_{j+1}``, shape ``(num_steps,)``.
      step: the number of steps done (int32 scalar).
      anorm: running estimate of ``||C||`` (for the breakdown test).
      restart: a random vector of shape ``(n,)``; after an exact breakdown at
        step ``i`` the run continues from ``roll(restart, i)`` made orthogonal
        to the basis (a fresh direction each time, no random numbers in the loop).
    """

    basis: jax.Array | None
    v: jax.Array
    v_prev: jax.Array
    alphas: jax.Array
    betas: jax.Array
    step: jax.Array
    anorm: jax.Array
    restart: jax.Array


class LanczosResult(NamedTuple):
    """The outcome of :func:`lanczos`.

    Attributes:
      alphas: diagonal of the tridiagonal ``T``, shape ``(num_steps,)``.
      betas: its off-diagonal, shape ``(num_steps - 1,)``.
      ritz_values: eigenvalues of ``T``, ascending, shape ``(num_steps,)``.
      ritz_weights: squared first components of ``T``'s eigenvectors (the
        Gauss quadrature weights of SLQ), shape ``(num_steps,)``, summing to 1.
      residual_estimates: ``|beta_m s_m|``, the norm of ``C y - theta y`` for
        each Ritz pair (exact with full reorthogonalisation), shape ``(num_steps,)``.
      eigenvectors_t: eigenvectors of ``T`` as columns, ``(num_steps, num_steps)``.
      basis: the Lanczos vectors as rows ``(num_steps, n)``, or None without
        reorthogonalisation. Ritz vector ``j`` is ``eigenvectors_t[:, j] @ basis``.
    """

    alphas: jax.Array
    betas: jax.Array
    ritz_values: jax.Array
    ritz_weights: jax.Array
    residual_estimates: jax.Array
    eigenvectors_t: jax.Array
    basis: jax.Array | None


def inner(a, b):
    """``a . b`` at full precision (no reduced-precision matmul on accelerators)."""
    return jnp.dot(a, b, precision=_HIGHEST)


def norm(w):
    """The Euclidean norm of ``w`` at full precision."""
    return jnp.sqrt(inner(w, w))


def _project_out(rows, basis, count, locked):
    """One block Gram-Schmidt pass on ``rows`` ``(r, n)``: remove ``basis[:count]``, ``locked``."""
    def remove(rows, block):
        return rows - inner(inner(rows, block.T), block)

    if locked is not None:
        rows = remove(rows, locked)
    if basis is None:
        return rows

    def body(j, rows):
        return remove(rows, lax.dynamic_slice_in_dim(basis, j * BLOCK_ROWS, BLOCK_ROWS, axis=0))

    return lax.fori_loop(0, (count + BLOCK_ROWS - 1) // BLOCK_ROWS, body, rows)


def _orthogonalize(rows, basis, count, locked):
    """Project ``rows`` ``(r, n)`` out of the basis, twice if a norm dropped below ``1/sqrt(2)``."""
    before = jnp.linalg.norm(rows, axis=1)
    rows = _project_out(rows, basis, count, locked)
    dropped = jnp.any(jnp.linalg.norm(rows, axis=1) < 0.7 * before)
    return lax.cond(dropped, lambda r: _project_out(r, basis, count, locked), lambda r: r, rows)


def _step(matvec: Callable, state: LanczosState, locked) -> LanczosState:
    """One Lanczos step: ``w = C v - alpha v - beta v_prev``, reorthogonalised."""
    i = state.step
    v, v_prev = state.v, state.v_prev
    dtype = v.dtype
    beta_prev = jnp.where(i > 0, state.betas[jnp.maximum(i - 1, 0)], 0).astype(dtype)
    w = matvec(v)
    alpha = inner(v, w)
    w = w - alpha * v - beta_prev * v_prev
    # A fresh direction, orthogonalised with w (one pass over the basis for both), taken
    # when the Krylov space is exhausted (breakdown).
    r = jnp.roll(state.restart, i)
    pair = jnp.stack([w, r - inner(r, v) * v - inner(r, v_prev) * v_prev])
    if state.basis is not None or locked is not None:
        pair = _orthogonalize(pair, state.basis, i + 1, locked)
    w, r = pair[0], pair[1]
    beta = norm(w)
    anorm = jnp.maximum(state.anorm, jnp.abs(alpha) + beta + beta_prev)
    breakdown = beta <= 10 * jnp.finfo(dtype).eps * anorm
    v_next = jnp.where(breakdown, r / jnp.maximum(norm(r), jnp.finfo(dtype).tiny),
                       w / jnp.where(breakdown, 1, beta))
    basis = state.basis
    if basis is not None:
        basis = basis.at[i + 1].set(v_next, mode="drop")
    return LanczosState(basis, v_next, v, state.alphas.at[i].set(alpha),
                        state.betas.at[i].set(beta), i + 1, anorm, state.restart)


def basis_rows(num_steps: int) -> int:
    """Rows of the stored basis for ``num_steps`` steps (a multiple of the Gram-Schmidt block)."""
    return -(-num_steps // BLOCK_ROWS) * BLOCK_ROWS


def init_state(v0: jax.Array, num_steps: int, restart: jax.Array, reorthogonalize: bool = True
               ) -> LanczosState:
    """A run from the unit vector ``v0`` of shape ``(n,)`` with room for ``num_steps`` steps.

    ``restart`` is a random vector of shape ``(n,)`` for breakdowns (see :class:`LanczosState`).
    """
    dtype = v0.dtype
    basis = None
    if reorthogonalize:
        rows = basis_rows(num_steps)
        basis = jnp.zeros((rows, v0.shape[0]), dtype).at[0].set(v0)
    return LanczosState(basis, v0, jnp.zeros_like(v0), jnp.zeros(num_steps, dtype),
                        jnp.zeros(num_steps, dtype), jnp.zeros((), jnp.int32),
                        jnp.zeros((), dtype), restart)


def run_steps(matvec: Callable, state: LanczosState, stop, locked=None) -> LanczosState:
    """Continue ``state`` to ``stop`` steps (traced or static), for use inside ``jit``."""
    return lax.while_loop(lambda s: s.step < stop,
                          lambda s: _step(matvec, s, locked), state)


@functools.partial(jax.jit, static_argnames=("operator",), donate_argnames=("state",))
def extend(operator: Operator, params, data, state: LanczosState, locked, stop) -> LanczosState:
    """Jitted :func:`run_steps` of the curvature operator of ``(params, data)``.

    ``locked`` (rows ``(L, n)`` orthonormal, or None) are vectors that every
    new Lanczos vector is kept orthogonal to (deflation). ``state`` is
    donated: its buffers (the basis) are updated in place, not copied.
    """
    matvec, _, _ = operators.matvec_fn(operator, params, data)
    return run_steps(matvec, state, stop, locked)


def tridiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
    """The symmetric tridiagonal ``(m, m)`` matrix: diagonal ``alphas``, off-diagonal ``betas``."""
    return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def ritz(alphas: jax.Array, betas: jax.Array):
    """Ritz values, eigenvectors of ``T`` and residual estimates from ``m`` steps (jnp).

    Args:
      alphas: shape ``(m,)``.
      betas: shape ``(m,)``; ``betas[:-1]`` is the off-diagonal and
        ``betas[-1]`` the norm of the final residual.

    Returns:
      ``(values (m,), vectors (m, m), residual_estimates (m,))``, values ascending.
    """
    values, vectors = jnp.linalg.eigh(tridiagonal(alphas, betas[:-1]))
    return values, vectors, jnp.abs(betas[-1] * vectors[-1, :])


def start_vectors(key: jax.Array, n: int, dtype, kind: str = "normal"):
    """A random unit start vector (Gaussian or Rademacher direction) and a Gaussian restart vector.

    Returns:
      ``(v0, restart)``, both of shape ``(n,)``.
    """
    k_start, k_restart = jax.random.split(key)
    if kind == "rademacher":
        v0 = jax.random.rademacher(k_start, (n,), dtype)
    else:
        v0 = jax.random.normal(k_start, (n,), dtype)
    return v0 / norm(v0), jax.random.normal(k_restart, (n,), dtype)


def check_steps(fn_name: str, name: str, num_steps: Any, n: int) -> int:
    """Raise ``ValueError`` unless ``1 <= num_steps <= n``."""
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= n:
        raise ValueError(
            f"{fn_name}: expected {name} to be an int in [1, {n}] (the parameter count), "
            f"got {num_steps!r}")
    return int(num_steps)


def check_key(fn_name: str, key: Any) -> jax.Array:
    """Raise ``ValueError`` unless ``key`` is a PRNG key."""
    if key is None or not isinstance(key, jax.Array) or not (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)):
        raise ValueError(
            f"{fn_name}: expected a PRNG key (jax.random.key(seed)), got {key!r}")
    return key


@functools.partial(jax.jit, static_argnames=("operator", "num_steps", "reorthogonalize"))
def _lanczos(operator: Operator, params, data, key, num_steps: int, reorthogonalize: bool):
    matvec, x0, _ = operators.matvec_fn(operator, params, data)
    v0, restart = start_vectors(key, x0.shape[0], x0.dtype)
    state = run_steps(matvec, init_state(v0, num_steps, restart, reorthogonalize), num_steps)
    values, vectors, residuals = ritz(state.alphas, state.betas)
    basis = None if state.basis is None else state.basis[:num_steps]
    return LanczosResult(state.alphas, state.betas[:-1], values, vectors[0, :] ** 2, residuals,
                         vectors, basis)


def lanczos(loss_fn: Callable, params: Any, data: Any, *, num_steps: int, key: jax.Array,
            reorthogonalize: bool = True, curvature: str = "hessian", block: Any = None,
            check_determinism: bool = False) -> LanczosResult:
    """Run ``num_steps`` Lanczos steps on the Hessian (or GGN) of the mean loss over ``data``.

    Starts from a Gaussian random unit vector drawn from ``key``; the same key
    gives the same result. The loop is one ``lax.while_loop`` under ``jit``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a :class:`SplitLoss` for the GGN).
      params: any pytree of float arrays; the vectors have their common dtype.
      data: one batch or a list of batches (exact example-weighted mean).
      num_steps: number of steps ``m``, ``1 <= m <= n`` (``n`` parameters).
      key: PRNG key for the start vector.
      reorthogonalize: keep the ``(m, n)`` basis and reorthogonalise fully;
        False runs the three-term recurrence with O(n) memory (no basis, and
        interior Ritz values may repeat).
      curvature: ``"hessian"`` or ``"ggn"``.
      block: optional key path of the sub-tree to restrict the operator to.
      check_determinism: first apply the operator twice to one vector and
        raise if the results differ (see :func:`check_deterministic`).

    Returns:
      A :class:`LanczosResult`.

    Raises:
      ValueError: for bad input, or a non-finite Hessian-vector product.

    Reference: C. Lanczos, "An iteration method for the solution of the
    eigenvalue problem of linear differential and integral operators", 1950;
    B. Parlett, "The Symmetric Eigenvalue Problem", 1998, ch. 13.
    """
    operator = Operator(loss_fn, curvature, operators.as_block("lanczos", block))
    prepared = operators.check_problem("lanczos", operator, params, data)
    key = check_key("lanczos", key)
    n = operators.param_count(params, operator.block)
    num_steps = check_steps("lanczos", "num_steps", num_steps, n)
    if check_determinism:
        operators.check_deterministic("lanczos", operator, params, prepared, key)
    result = _lanczos(operator, params, prepared, key, num_steps, bool(reorthogonalize))
    operators.check_finite("lanczos", "Hessian-vector product (Lanczos coefficient)",
                           (result.alphas, result.betas))
    return result
