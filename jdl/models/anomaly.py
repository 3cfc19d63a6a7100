"""Anomaly detection with an auto-encoder: the notes' score and the AUROC that grades it.

An auto-encoder trained on normal data reconstructs normal inputs well and
anomalies badly, so the squared reconstruction error is an anomaly score
(the notes' ``anomaly_score``). :func:`auroc` measures how well a score
separates anomalies from normal examples: the probability that a random
anomaly scores higher than a random normal example, ties counting half
(Hanley & McNeil, Radiology 1982), computed from ranks (the Mann-Whitney U
statistic) in ``O(n log n)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jdl import losses

__all__ = ["anomaly_score", "auroc"]


def anomaly_score(x: ArrayLike, x_rec: ArrayLike) -> jax.Array:
    """The notes' anomaly score: ``((x_rec - x) ** 2)`` summed over every axis but the batch.

    Args:
      x: inputs ``(batch, ...)``, e.g. images ``(batch, height, width[, channels])``.
      x_rec: their reconstructions, same shape.

    Returns:
      ``(batch,)`` scores; higher is more anomalous.

    Raises:
      ValueError: if the shapes differ.
    """
    return losses.reconstruction(x, x_rec, reduction="none")


def auroc(scores: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 = anomaly), ties counting half.

    ``AUROC = (sum of the positives' ranks - P (P + 1) / 2) / (P N)`` with
    average ranks for tied scores, ``P`` positives and ``N`` negatives; equal
    to the fraction of (positive, negative) pairs with the positive scored
    higher, plus half the tied pairs. 0.5 is chance, 1 a perfect separation.
    Jittable; under ``jit`` the labels cannot be checked, and a batch with
    only one class gives NaN.

    Args:
      scores: ``(n,)`` real scores, higher meaning "more likely positive".
      labels: ``(n,)`` booleans or 0/1, ``1`` for the positive (anomalous) class.

    Returns:
      A scalar in ``[0, 1]`` (in the default float dtype).

    Raises:
      ValueError: for mismatched or non-1-D shapes; for concrete labels that
        are not 0/1 or that hold only one class.
    """
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"auroc: expected scores and labels of the same shape (n,), got {scores.shape} "
            f"and {labels.shape}")
    try:
        concrete = np.asarray(labels)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        concrete = None
    if concrete is not None:
        if not np.all((concrete == 0) | (concrete == 1)):
            raise ValueError(f"auroc: expected labels 0/1, got values {np.unique(concrete)}")
        if concrete.all() or not concrete.any():
            raise ValueError(
                f"auroc: expected both classes among the labels, got only {int(concrete.flat[0])}")
    dtype = jnp.result_type(float)
    ordered = jnp.sort(scores)
    below = jnp.searchsorted(ordered, scores, side="left")
    at_most = jnp.searchsorted(ordered, scores, side="right")
    ranks = (below + at_most + 1).astype(dtype) / 2   # 1-based, ties averaged
    positive = labels.astype(dtype)
    num_pos = positive.sum()
    num_neg = scores.shape[0] - num_pos
    u = jnp.sum(ranks * positive) - num_pos * (num_pos + 1) / 2
    return u / (num_pos * num_neg)
