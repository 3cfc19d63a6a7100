"""Condition numbers and the learning rates a Hessian's extreme eigenvalues imply.

On a quadratic ``f(w) = w^T H w / 2`` with ``0 < lambda_min <= lambda_max``
and ``kappa = lambda_max / lambda_min``, gradient descent ``w <- w - a H w``
multiplies the error along eigenvector ``i`` by ``1 - a lambda_i``, so

* it diverges for ``a > 2 / lambda_max`` (the stable limit);
* the step minimising ``max_i |1 - a lambda_i|`` is ``a = 2 / (lambda_min +
  lambda_max)``, contracting the error by ``(kappa - 1) / (kappa + 1)`` per step;
* heavy-ball momentum ``w <- w - a H w + b (w - w_prev)`` converges iff
  ``0 <= b < 1`` and ``0 < a lambda_i < 2 + 2 b`` for all ``i`` (the limit
  ``(2 + 2b) / lambda_max``), and is fastest at ``a = 4 / (sqrt(lambda_max) +
  sqrt(lambda_min))^2``, ``b = ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^2``, with
  rate ``(sqrt(kappa) - 1) / (sqrt(kappa) + 1)`` (B. Polyak, "Some methods of
  speeding up the convergence of iteration methods", 1964).

Near a minimum of a network loss, the Hessian plays ``H``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from jdl.hessian.density import SpectralDensity
from jdl.hessian.eigen import Eigen


class Conditioning(NamedTuple):
    """Conditioning of a symmetric matrix from (part of) its spectrum.

    Attributes:
      lambda_max: the largest eigenvalue known.
      lambda_min: the smallest eigenvalue known.
      condition_number: ``lambda_max / lambda_min`` when positive definite,
        else ``inf``.
      positive_definite: ``lambda_min > zero_tol``.
      negative_mass: fraction of the spectrum below ``-zero_tol`` (by count;
        from SLQ weights for a density); ``nan`` when only extreme eigenvalues
        are known and some are negative.
      smallest_positive: the smallest known eigenvalue above ``zero_tol``
        (``nan`` if none).
      positive_ratio: ``lambda_max / smallest_positive``, the condition number
        of the positive part.
      zero_tol: eigenvalues with ``|lambda| <= zero_tol`` count as zero.
    """

    lambda_max: float
    lambda_min: float
    condition_number: float
    positive_definite: bool
    negative_mass: float
    smallest_positive: float
    positive_ratio: float
    zero_tol: float


def condition_number(spectrum: Any, *, zero_tol: float | None = None) -> Conditioning:
    """Condition number, negative eigenvalue mass and positive-part ratio of a spectrum.

    Args:
      spectrum: one of
        * an :class:`Eigen` from ``eigenvalues(..., which="both")`` (extremes
          only: the negative mass is 0 if no eigenvalue is negative, else
          ``nan``; the smallest positive eigenvalue is ``nan`` unless it is
          among the ``k`` smallest),
        * a :class:`SpectralDensity` (extremes from the outer Ritz values,
          negative mass from the quadrature weights),
        * an array of eigenvalues, taken as the whole spectrum (e.g. the
          ``eigvalsh`` of a dense Hessian).
      zero_tol: eigenvalues with ``|lambda| <= zero_tol`` count as zero;
        default ``1e-6 * max |lambda|``.

    Returns:
      A :class:`Conditioning`.

    Raises:
      ValueError: for an empty or non-finite spectrum, or an :class:`Eigen`
        without the smallest eigenvalues.
    """
    fn_name = "condition_number"
    if isinstance(spectrum, SpectralDensity):
        values = np.asarray(spectrum.nodes, np.float64).ravel()
        weights = np.asarray(spectrum.weights, np.float64).ravel() / spectrum.nodes.shape[0]
        whole = True
    elif isinstance(spectrum, Eigen):
        if spectrum.which != "both":
            raise ValueError(
                f"{fn_name}: expected an Eigen from which='both' (largest and smallest), got "
                f"which={spectrum.which!r}")
        values = np.asarray(spectrum.values, np.float64)
        weights, whole = None, False
    else:
        values = np.asarray(spectrum, np.float64).ravel()
        weights, whole = np.full(values.size, 1.0 / max(values.size, 1)), True
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"{fn_name}: expected a non-empty finite spectrum, got {values}")
    lam_max, lam_min = float(values.max()), float(values.min())
    if zero_tol is None:
        zero_tol = 1e-6 * float(np.abs(values).max())
    positive = values[values > zero_tol]
    if not whole:
        # Only the lower half holds the bottom of the spectrum: the smallest positive
        # eigenvalue is known only if it is among them.
        lower = values[values.size // 2:]
        positive = lower[lower > zero_tol] if np.any(lower > zero_tol) else positive[:0]
    smallest_positive = float(positive.min()) if positive.size else math.nan
    if whole:
        negative_mass = float(np.sum(weights[values < -zero_tol]))
    else:
        negative_mass = 0.0 if lam_min >= -zero_tol else math.nan
    definite = lam_min > zero_tol
    return Conditioning(
        lambda_max=lam_max, lambda_min=lam_min,
        condition_number=lam_max / lam_min if definite else math.inf,
        positive_definite=bool(definite), negative_mass=negative_mass,
        smallest_positive=smallest_positive,
        positive_ratio=lam_max / smallest_positive if positive.size else math.nan,
        zero_tol=float(zero_tol))


class LearningRates(NamedTuple):
    """Step sizes for gradient descent on a quadratic with the given curvature.

    Attributes:
      stable_limit: ``2 / lambda_max``: gradient descent diverges beyond it.
      optimal_step: ``2 / (lambda_min + lambda_max)`` (None without ``lambda_min``).
      contraction: ``(kappa - 1) / (kappa + 1)``, the error factor per step at
        ``optimal_step`` (None without ``lambda_min``).
      condition_number: ``kappa = lambda_max / lambda_min`` (None without it).
      heavy_ball_step: ``4 / (sqrt(lambda_max) + sqrt(lambda_min))^2`` (None without it).
      heavy_ball_momentum: ``((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^2`` (None without it).
      heavy_ball_rate: ``(sqrt(kappa) - 1) / (sqrt(kappa) + 1)``, the error
        factor per step at the heavy-ball optimum (None without ``lambda_min``).
      momentum: the ``momentum`` argument ``b``.
      momentum_stable_limit: ``(2 + 2 b) / lambda_max``, the stable limit of
        heavy-ball momentum ``b``.
    """

    stable_limit: float
    optimal_step: float | None
    contraction: float | None
    condition_number: float | None
    heavy_ball_step: float | None
    heavy_ball_momentum: float | None
    heavy_ball_rate: float | None
    momentum: float
    momentum_stable_limit: float


def learning_rates(lambda_max: float, lambda_min: float | None = None,
                   momentum: float = 0.0) -> LearningRates:
    """Learning rates implied by the extreme eigenvalues of a positive-definite Hessian.

    Example:
      >>> lr = learning_rates(10.0, 0.1)
      >>> lr.stable_limit, round(lr.optimal_step, 4), round(lr.contraction, 4)
      (0.2, 0.198, 0.9802)

    Args:
      lambda_max: the largest eigenvalue (positive).
      lambda_min: the smallest eigenvalue, ``0 < lambda_min <= lambda_max``;
        for an indefinite Hessian pass the smallest positive one
        (:attr:`Conditioning.smallest_positive`).
      momentum: heavy-ball coefficient ``b`` in ``[0, 1)`` for the momentum limit.

    Returns:
      A :class:`LearningRates`.

    Raises:
      ValueError: for a non-positive or non-finite ``lambda_max``, a
        ``lambda_min`` outside ``(0, lambda_max]``, or ``momentum`` outside ``[0, 1)``.
    """
    fn_name = "learning_rates"
    lambda_max = float(lambda_max)
    if not (math.isfinite(lambda_max) and lambda_max > 0):
        raise ValueError(f"{fn_name}: expected a positive finite lambda_max, got {lambda_max}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"{fn_name}: expected momentum in [0, 1), got {momentum}")
    momentum = float(momentum)
    optimal = contraction = kappa = hb_step = hb_momentum = hb_rate = None
    if lambda_min is not None:
        lambda_min = float(lambda_min)
        if not (math.isfinite(lambda_min) and 0 < lambda_min <= lambda_max):
            raise ValueError(
                f"{fn_name}: expected 0 < lambda_min <= lambda_max = {lambda_max}, got "
                f"{lambda_min} (for an indefinite Hessian pass the smallest positive eigenvalue)")
        kappa = lambda_max / lambda_min
        optimal = 2.0 / (lambda_min + lambda_max)
        contraction = (kappa - 1.0) / (kappa + 1.0)
        hb_step = 4.0 / (math.sqrt(lambda_max) + math.sqrt(lambda_min)) ** 2
        hb_rate = (math.sqrt(kappa) - 1.0) / (math.sqrt(kappa) + 1.0)
        hb_momentum = hb_rate ** 2
    return LearningRates(
        stable_limit=2.0 / lambda_max, optimal_step=optimal, contraction=contraction,
        condition_number=kappa, heavy_ball_step=hb_step, heavy_ball_momentum=hb_momentum,
        heavy_ball_rate=hb_rate, momentum=momentum,
        momentum_stable_limit=(2.0 + 2.0 * momentum) / lambda_max)
