"""Evaluation metrics: accuracy and calibration.

References:
  Guo, Pleiss, Sun & Weinberger, "On calibration of modern neural networks", ICML (2017).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["accuracy", "expected_calibration_error"]


def _check(fn_name: str, scores, labels) -> tuple[jax.Array, jax.Array]:
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    if scores.ndim < 2 or scores.shape[:-1] != labels.shape:
        raise ValueError(
            f"{fn_name}: expected scores (batch, ..., classes) and labels (batch, ...), got "
            f"{scores.shape} and {labels.shape}")
    return scores, labels


def accuracy(scores: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Fraction of examples whose highest score is the label (jit-friendly).

    Args:
      scores: logits or probabilities ``(batch, ..., classes)``.
      labels: integer classes ``(batch, ...)``.

    Returns:
      A scalar in ``[0, 1]``.
    """
    scores, labels = _check("accuracy", scores, labels)
    return jnp.mean(jnp.argmax(scores, -1) == labels)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, bins: int = 15
                               ) -> tuple[jax.Array, jax.Array]:
    """Expected calibration error of the top-class confidence, with the reliability curve.

    Examples are binned by confidence ``max_c p_c`` into ``bins`` equal-width
    bins; ECE is the example-weighted mean of ``|accuracy - confidence|`` over
    the bins (Guo et al. 2017).

    Args:
      probs: class probabilities ``(batch, classes)``.
      labels: integer classes ``(batch,)``.
      bins: number of bins.

    Returns:
      ``(ece, curve)``: a scalar and ``(bins, 3)`` rows of mean confidence,
      accuracy and example count per bin (confidence and accuracy NaN in an
      empty bin).
    """
    probs, labels = _check("expected_calibration_error", probs, labels)
    if probs.ndim != 2 or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"expected_calibration_error: expected probs (batch, classes) and "
                         f"bins >= 1, got {probs.shape} and bins={bins!r}")
    confidence = probs.max(-1)
    correct = (probs.argmax(-1) == labels).astype(probs.dtype)
    which = jnp.clip(jnp.floor(confidence * bins).astype(jnp.int32), 0, bins - 1)
    count = jnp.zeros(bins, probs.dtype).at[which].add(1.0)
    conf_sum = jnp.zeros(bins, probs.dtype).at[which].add(confidence)
    correct_sum = jnp.zeros(bins, probs.dtype).at[which].add(correct)
    ece = jnp.sum(jnp.abs(correct_sum - conf_sum)) / probs.shape[0]
    safe = jnp.where(count > 0, count, jnp.nan)
    return ece, jnp.stack([conf_sum / safe, correct_sum / safe, count], axis=1)
