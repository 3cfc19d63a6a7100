"""Spectral density of the Hessian (or GGN) by stochastic Lanczos quadrature (SLQ).

For a unit Rademacher vector ``v`` and ``m`` Lanczos steps from it, the Ritz
values ``theta_j`` (nodes) and squared first components of ``T``'s
eigenvectors ``tau_j`` (weights) form a Gauss quadrature with
``sum_j tau_j f(theta_j) ~ v^T f(C) v``, exact for polynomials of degree up to
``2m - 1``; its mean over random ``v`` is ``tr f(C) / n``. Taking ``f`` as a
Gaussian of width ``sigma`` gives the smoothed eigenvalue density
``rho(t) = (1/n) sum_i N(t; lambda_i, sigma^2)``, which integrates to one.

References: G. Golub and G. Meurant, "Matrices, Moments and Quadrature with
Applications", 2010; S. Ubaru, J. Chen and Y. Saad, "Fast estimation of
tr(f(A)) via stochastic Lanczos quadrature", SIMAX 2017; B. Ghorbani,
S. Krishnan and Y. Xiao, "An investigation into neural net optimization via
Hessian eigenvalue density", ICML 2019.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from jax import lax

from jdl.hessian import operators
from jdl.hessian.lanczos import (
    check_key, check_steps, init_state, ritz, run_steps, start_vectors)
from jdl.hessian.operators import Operator


class SpectralDensity(NamedTuple):
    """A smoothed eigenvalue density and the quadrature it comes from.

    Attributes:
      grid: eigenvalue axis, shape ``(num_points,)``.
      density: ``rho(grid)``, shape ``(num_points,)``; integrates to about 1
        (multiply by ``n`` for an eigenvalue count per unit).
      nodes: Ritz values of each run, shape ``(num_runs, num_steps)``.
      weights: their quadrature weights, shape ``(num_runs, num_steps)``,
        each row summing to 1.
      sigma: the Gaussian broadening (standard deviation).
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float


@functools.partial(jax.jit,
                   static_argnames=("operator", "num_steps", "reorthogonalize", "vmap_size"))
def _slq(operator: Operator, params, data, keys, num_steps: int, reorthogonalize: bool,
         vmap_size: int):
    matvec, x0, _ = operators.matvec_fn(operator, params, data)

    def one_run(key):
        v0, restart = start_vectors(key, x0.shape[0], x0.dtype, "rademacher")
        state = init_state(v0, num_steps, restart, reorthogonalize)
        state = run_steps(matvec, state, num_steps)
        values, vectors, _ = ritz(state.alphas, state.betas)
        return values, vectors[0, :] ** 2

    return lax.map(one_run, keys, batch_size=vmap_size)


def broaden(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``rho(grid)``: the mean over runs of ``sum_j weights_j N(grid; nodes_j, sigma^2)``.

    Args:
      nodes: shape ``(num_runs, num_steps)``.
      weights: shape ``(num_runs, num_steps)``.
      grid: shape ``(num_points,)``.
      sigma: the Gaussian's standard deviation.

    Returns:
      The density, shape ``(num_points,)``.
    """
    z = (grid[:, None, None] - nodes[None]) / sigma
    gauss = np.exp(-0.5 * z ** 2) / (sigma * np.sqrt(2 * np.pi))
    return np.sum(gauss * weights[None], axis=(1, 2)) / nodes.shape[0]


def spectral_density(loss_fn: Callable, params: Any, data: Any, *, key: jax.Array,
                     num_steps: int = 80, num_runs: int = 10, sigma: float | None = None,
                     num_points: int = 1000, grid: Any = None, reorthogonalize: bool = True,
                     curvature: str = "hessian", block: Any = None, vmap_size: int = 1,
                     check_determinism: bool = False) -> SpectralDensity:
    """The smoothed eigenvalue density of the Hessian (or GGN) by stochastic Lanczos quadrature.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a :class:`SplitLoss` for the GGN).
      params: any pytree of float arrays.
      data: one batch or a list of batches (exact example-weighted mean).
      key: PRNG key; the same key gives the same density.
      num_steps: Lanczos steps per run, at most the parameter count ``n``.
      num_runs: independent Rademacher start vectors (the variance falls as
        ``1 / num_runs``).
      sigma: Gaussian broadening; default 1% of the range of the nodes.
      num_points: grid size when ``grid`` is None; the grid then spans the
        nodes with ``5 sigma`` to spare on each side.
      grid: optional eigenvalue axis of shape ``(num_points,)``.
      reorthogonalize: full reorthogonalisation (memory ``num_steps * n`` per
        run); False uses the three-term recurrence (memory O(n)).
      curvature: ``"hessian"`` or ``"ggn"``.
      block: optional key path of a sub-tree: that diagonal block.
      vmap_size: runs computed at once with ``vmap`` (more is faster on
        accelerators; 1 suits CPUs).
      check_determinism: first apply the operator twice to one vector and
        raise if the results differ.

    Returns:
      A :class:`SpectralDensity`.

    Raises:
      ValueError: for bad input or non-finite Lanczos coefficients.
    """
    fn_name = "spectral_density"
    operator = Operator(loss_fn, curvature, operators.as_block(fn_name, block))
    prepared = operators.check_problem(fn_name, operator, params, data)
    key = check_key(fn_name, key)
    n = operators.param_count(params, operator.block)
    num_steps = check_steps(fn_name, "num_steps", num_steps, n)
    if not isinstance(num_runs, (int, np.integer)) or num_runs < 1:
        raise ValueError(f"{fn_name}: expected a positive int num_runs, got {num_runs!r}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"{fn_name}: expected sigma to be None or positive, got {sigma!r}")
    if not isinstance(vmap_size, int) or vmap_size < 1:
        raise ValueError(f"{fn_name}: expected a positive int vmap_size, got {vmap_size!r}")
    if check_determinism:
        operators.check_deterministic(fn_name, operator, params, prepared, key)
    nodes, weights = _slq(operator, params, prepared, jax.random.split(key, num_runs),
                          num_steps, bool(reorthogonalize), vmap_size)
    operators.check_finite(fn_name, "Ritz value (Lanczos coefficient)", (nodes, weights))
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 0.01 * max(abs(hi), 1.0)
    if grid is None:
        if not isinstance(num_points, (int, np.integer)) or num_points < 2:
            raise ValueError(f"{fn_name}: expected an int num_points >= 2, got {num_points!r}")
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(num_points))
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError(f"{fn_name}: expected a 1-D grid of at least 2 points, got {grid.shape}")
    return SpectralDensity(grid, broaden(nodes, weights, grid, float(sigma)), nodes, weights,
                           float(sigma))


def plot_spectral_density(result: SpectralDensity, path: str, *, log_scale: bool = True,
                          title: str | None = None) -> str:
    """Plot a :class:`SpectralDensity` to a PNG file (matplotlib's Agg canvas, no display).

    Args:
      result: the density to plot.
      path: the PNG file to write.
      log_scale: logarithmic density axis (shows the small bulk beside the
        outliers), floored at ``1e-8`` of the peak.
      title: optional figure title.

    Returns:
      ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    density = np.asarray(result.density)
    if log_scale:
        floor = max(density.max(), np.finfo(float).tiny) * 1e-8
        ax.semilogy(result.grid, np.maximum(density, floor))
        ax.set_ylim(bottom=floor)
    else:
        ax.plot(result.grid, density)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or f"spectral density (SLQ, {result.nodes.shape[0]} runs, "
                          f"{result.nodes.shape[1]} steps, sigma={result.sigma:.3g})")
    fig.tight_layout()
    fig.savefig(path)
    return path
