"""Loss functions of the notes, as pure functions on arrays.

Every loss takes arrays with a leading example axis ``batch``, computes one
value per example and reduces them with ``reduction``: ``"mean"`` (the
default: the mean over examples), ``"sum"``, or ``"none"`` (the per-example
values, shape ``(batch,)``). Where a loss is element-wise, the per-example
value is the mean over the remaining axes (so ``mse(..., reduction="mean")``
is the mean over all elements, like ``torch.nn.MSELoss``); the autoencoder
losses sum over them instead, as the notes' code does.

Labels and hyperparameters (``beta``, ``lam``, ``noise``) are checked when they
are concrete (labels ``±1`` or in ``[0, 1]``, class indices in range,
``beta > 0``, ``lam >= 0``). Under ``jax.jit`` / ``vmap`` their values are
tracers and cannot be checked; there an out-of-range class index gives a NaN
loss for that example (never a silent wrong number), and the other value checks
are skipped. Shapes are always checked.

Example:
    >>> import jax.numpy as jnp
    >>> from jdl import losses
    >>> float(losses.mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0])))
    2.5
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "bayes_decision", "binary_cross_entropy", "denoising_loss", "expected_cost", "hinge",
    "log_cosh", "logloss", "mae", "mse", "reconstruction", "softmax_cross_entropy",
    "sparse_reconstruction", "weight_restriction", "weighted",
]

_REDUCTIONS = ("mean", "sum", "none")


def _concrete(x):
    """``x`` as a NumPy array, or None when it is a tracer (inside ``jit``)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_hyperparameter(fn_name: str, name: str, value, positive: bool = False) -> None:
    """Raise unless a concrete ``value`` is ``>= 0`` (``> 0`` if ``positive``); tracers pass."""
    concrete = _concrete(value)
    if concrete is not None and not np.all(concrete > 0 if positive else concrete >= 0):
        raise ValueError(f"{fn_name}: expected {name} {'>' if positive else '>='} 0, got {value}")


def _check_reduction(fn_name: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{fn_name}: expected reduction to be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(fn_name: str, values: jax.Array, reduction: str) -> jax.Array:
    """Reduce per-example ``values`` of shape ``(batch,)``."""
    _check_reduction(fn_name, reduction)
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    return values


def _pair(fn_name: str, y: ArrayLike, t: ArrayLike, y_name: str = "y",
          t_name: str = "t") -> tuple[jax.Array, jax.Array]:
    """Predictions and targets as arrays of one shape with a leading batch axis."""
    y, t = jnp.asarray(y), jnp.asarray(t)
    if y.shape != t.shape:
        raise ValueError(
            f"{fn_name}: expected {y_name} and {t_name} of the same shape, "
            f"got {y_name} {y.shape} and {t_name} {t.shape}")
    if y.ndim < 1:
        raise ValueError(
            f"{fn_name}: expected arrays with a leading batch axis, got shape {y.shape}")
    return y, t


def _per_example_mean(values: jax.Array) -> jax.Array:
    """Mean over every axis but the first: ``(batch, ...) -> (batch,)``."""
    return jnp.mean(values.reshape(values.shape[0], -1), axis=1)


def _per_example_sum(values: jax.Array) -> jax.Array:
    """Sum over every axis but the first: ``(batch, ...) -> (batch,)``."""
    return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


def _check_class_labels(fn_name: str, labels: jax.Array, num_classes: int) -> None:
    """Raise for concrete class indices outside ``[0, num_classes)``."""
    values = _concrete(labels)
    if values is not None and values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"{fn_name}: expected class labels in [0, {num_classes}), "
            f"got values in [{values.min()}, {values.max()}]")


def _lookup(fn_name: str, table: jax.Array, indices: jax.Array) -> jax.Array:
    """``table[indices]`` for a 1-D table; NaN where a traced index is out of range."""
    _check_class_labels(fn_name, indices, len(table))
    valid = (indices >= 0) & (indices < len(table))
    return jnp.where(valid, table[jnp.clip(indices, 0, len(table) - 1)], jnp.nan)


def _pick(fn_name: str, table: jax.Array, labels: jax.Array) -> jax.Array:
    """``table[..., labels]`` along the last axis; NaN where a (traced) label is out of range."""
    num_classes = table.shape[-1]
    _check_class_labels(fn_name, labels, num_classes)
    valid = (labels >= 0) & (labels < num_classes)
    index = jnp.clip(labels, 0, num_classes - 1)[..., None]
    picked = jnp.take_along_axis(table, index, axis=-1)[..., 0]
    return jnp.where(valid, picked, jnp.nan)


# --- regression --------------------------------------------------------------


def mse(y: ArrayLike, t: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    """Mean squared error ``(y - t)^2``.

    Args:
      y: predictions of shape ``(batch, ...)``.
      t: targets of the same shape.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples; each
        example's value is the mean over its trailing axes.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: if the shapes differ or there is no batch axis.
    """
    y, t = _pair("mse", y, t)
    return _reduce("mse", _per_example_mean(jnp.square(y - t)), reduction)


def mae(y: ArrayLike, t: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    """Mean absolute error ``|y - t|`` (robust to outliers, gradient ``sign(y - t)``).

    Args:
      y: predictions of shape ``(batch, ...)``.
      t: targets of the same shape.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples; each
        example's value is the mean over its trailing axes.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: if the shapes differ or there is no batch axis.
    """
    y, t = _pair("mae", y, t)
    return _reduce("mae", _per_example_mean(jnp.abs(y - t)), reduction)


# Taylor coefficients of log cosh z = sum_n c_n z^(2n), c_n = 2^(2n) (2^(2n) - 1) B_2n / (2n (2n)!).
_LOG_COSH_TAYLOR = (1 / 2, -1 / 12, 1 / 45, -17 / 2520, 31 / 14175, -691 / 935550,
                    10922 / 42567525, -929569 / 10216206000, 3202291 / 97692469875,
                    -221930581 / 18561569276250)


@jax.custom_jvp
def _log_cosh(z: jax.Array) -> jax.Array:
    """``log cosh(z)`` without overflow and without cancellation near 0.

    Far from 0: ``|z| + log1p(exp(-2|z|)) - log 2``, which never overflows but
    cancels when the result is small. Near 0 the Taylor series (10 terms, its
    radius of convergence is pi/2) keeps full relative precision where
    ``log cosh z ~ z^2 / 2``. The switch is at ``|z| = 0.75`` for float32 and
    narrower types, ``0.25`` for float64; the relative error against exact
    values is below 3e-7 (float32) and 1e-14 (float64) everywhere.
    """
    a = jnp.abs(z)
    small = a < (0.25 if jnp.finfo(z.dtype).bits > 32 else 0.75)
    w = jnp.square(jnp.where(small, z, 0))  # keep the unused branch finite
    series = jnp.zeros_like(w) + _LOG_COSH_TAYLOR[-1]
    for c in reversed(_LOG_COSH_TAYLOR[:-1]):
        series = series * w + c
    far = a + jnp.log1p(jnp.exp(-2 * a)) - np.log(2).astype(z.dtype)
    return jnp.where(small, series * w, far)


@_log_cosh.defjvp
def _log_cosh_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    return _log_cosh(z), jnp.tanh(z) * dz


def log_cosh(y: ArrayLike, t: ArrayLike, beta: float = 1.0, *,
             reduction: str = "mean") -> jax.Array:
    """The notes' regression loss ``(1/beta) log cosh(beta (y - t))``.

    Quadratic ``beta (y - t)^2 / 2`` near zero, linear ``|y - t| - log(2)/beta``
    far away (robust to outliers); its gradient in ``y`` is
    ``tanh(beta (y - t))``. Computed without overflow or loss of relative
    precision for ``|y - t|`` from ``1e-4`` to ``1e4`` in float32.

    Args:
      y: predictions of shape ``(batch, ...)``.
      t: targets of the same shape.
      beta: sharpness ``beta > 0``; larger is closer to the absolute error.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples; each
        example's value is the mean over its trailing axes.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: if the shapes differ or ``beta`` is not positive.
    """
    y, t = _pair("log_cosh", y, t)
    _check_hyperparameter("log_cosh", "beta", beta, positive=True)
    values = _log_cosh(beta * (y - t)) / beta
    return _reduce("log_cosh", _per_example_mean(values), reduction)


# --- classification ----------------------------------------------------------


def logloss(y: ArrayLike, t: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    """The notes' classification loss ``log(1 + exp(-t y))`` for ``t`` in ``{-1, +1}``.

    Evaluated as ``softplus(-t y)``, exact and finite for margins ``t y`` of
    any size. It equals the binary cross-entropy of the logit ``y`` with the
    0/1 label ``(t + 1) / 2`` (see :func:`binary_cross_entropy`).

    Args:
      y: real-valued scores (logits) of shape ``(batch, ...)``.
      t: labels ``-1`` or ``+1`` of the same shape (checked when concrete;
        under ``jit`` the values are not checked).
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples; each
        example's value is the mean over its trailing axes.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: if the shapes differ or a concrete label is not ``±1``.
    """
    y, t = _pair("logloss", y, t)
    labels = _concrete(t)
    if labels is not None and not np.all(np.abs(labels) == 1):
        raise ValueError(
            f"logloss: expected labels t in {{-1, +1}}, got values {np.unique(labels)[:10]}")
    return _reduce("logloss", _per_example_mean(jax.nn.softplus(-t * y)), reduction)


def hinge(y: ArrayLike, t: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    """The hinge loss ``max(0, 1 - t y)`` for labels ``t`` in ``{-1, +1}`` (support vector machines).

    Args:
      y: real-valued scores of shape ``(batch, ...)`` (one per class for a
        one-vs-rest multi-class hinge).
      t: labels ``-1`` or ``+1`` of the same shape (checked when concrete).
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples; each
        example's value is the mean over its trailing axes.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: if the shapes differ or a concrete label is not ``±1``.
    """
    y, t = _pair("hinge", y, t)
    labels = _concrete(t)
    if labels is not None and not np.all(np.abs(labels) == 1):
        raise ValueError(
            f"hinge: expected labels t in {{-1, +1}}, got values {np.unique(labels)[:10]}")
    return _reduce("hinge", _per_example_mean(jax.nn.relu(1.0 - t * y)), reduction)


def binary_cross_entropy(p_or_logit: ArrayLike, t: ArrayLike, *, from_logits: bool = False,
                         reduction: str = "mean") -> jax.Array:
    """Binary cross-entropy ``-[t log p + (1 - t) log(1 - p)]``.

    Args:
      p_or_logit: probabilities ``p`` in ``[0, 1]``, or logits ``y`` with
        ``p = sigmoid(y)`` when ``from_logits``; shape ``(batch, ...)``.
      t: targets in ``[0, 1]`` (0/1 labels or soft labels) of the same shape.
      from_logits: read the first argument as logits; the loss is then
        ``max(y, 0) - t y + log1p(exp(-|y|))``, exact for logits of any size.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples; each
        example's value is the mean over its trailing axes.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``. With
      probabilities, ``p = 0`` with ``t > 0`` (or ``p = 1`` with ``t < 1``)
      gives ``inf``: pass logits to avoid that.

    Raises:
      ValueError: if the shapes differ, or concrete targets (or concrete
      probabilities) lie outside ``[0, 1]``.
    """
    y, t = _pair("binary_cross_entropy", p_or_logit, t, "p_or_logit", "t")
    targets = _concrete(t)
    if targets is not None and targets.size and (targets.min() < 0 or targets.max() > 1):
        raise ValueError(
            f"binary_cross_entropy: expected targets t in [0, 1], "
            f"got values in [{targets.min()}, {targets.max()}]")
    if from_logits:
        # softplus form: exact for any logit and differentiable at 0, where the
        # max/abs form gives JAX a one-sided derivative (-t instead of 1/2 - t).
        values = t * jax.nn.softplus(-y) + (1 - t) * jax.nn.softplus(y)
    else:
        probs = _concrete(y)
        if probs is not None and probs.size and (probs.min() < 0 or probs.max() > 1):
            raise ValueError(
                f"binary_cross_entropy: expected probabilities in [0, 1] (or pass "
                f"from_logits=True), got values in [{probs.min()}, {probs.max()}]")
        xlogy = jax.scipy.special.xlogy
        values = -(xlogy(t, y) + xlogy(1 - t, 1 - y))
    return _reduce("binary_cross_entropy", _per_example_mean(values), reduction)


def _class_targets(fn_name: str, logits: jax.Array, labels: jax.Array) -> bool:
    """Check label shapes; True for class indices, False for distributions."""
    if labels.shape == logits.shape:
        return False
    if labels.shape == logits.shape[:-1]:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"{fn_name}: expected integer class labels of shape {logits.shape[:-1]}, "
                f"got dtype {labels.dtype}")
        return True
    raise ValueError(
        f"{fn_name}: expected labels of shape {logits.shape[:-1]} (class indices) or "
        f"{logits.shape} (one-hot / soft), got logits {logits.shape} and labels {labels.shape}")


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *,
                          reduction: str = "mean") -> jax.Array:
    """Cross-entropy of ``softmax(logits)`` against class labels, via logsumexp.

    ``-log softmax(logits)[label] = logsumexp(logits) - logits[label]`` for
    class indices, ``-sum_k labels_k log softmax(logits)_k`` for one-hot or
    soft labels (the notes' "softmax ... and proceed with cross entropy").

    Args:
      logits: shape ``(batch, ..., classes)``.
      labels: integer class indices of shape ``(batch, ...)``, or one-hot /
        soft labels of shape ``(batch, ..., classes)``. Concrete indices are
        checked to lie in ``[0, classes)``; a traced out-of-range index makes
        that example's loss NaN.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples; each
        example's value is the mean over any axes between batch and classes.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: for label shapes that match neither form, no class axis,
        or concrete class indices out of range.
      TypeError: for non-integer labels of the class-index shape.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim < 2:
        raise ValueError(
            f"softmax_cross_entropy: expected logits of shape (batch, ..., classes), "
            f"got shape {logits.shape}")
    if _class_targets("softmax_cross_entropy", logits, labels):
        values = jax.nn.logsumexp(logits, axis=-1) - _pick(
            "softmax_cross_entropy", logits, labels)
    else:
        values = -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return _reduce("softmax_cross_entropy", _per_example_mean(values), reduction)


# --- label quality and costs -------------------------------------------------


def weighted(loss_values: ArrayLike, weights: ArrayLike | None = None, *,
             source_ids: ArrayLike | None = None,
             source_weights: ArrayLike | None = None) -> jax.Array:
    """Label-quality weighted loss ``sum_i w_i l_i / sum_i w_i``.

    The notes: "for taking into account quality of labels we define a loss
    function for each and multiply by scalar". Give either one weight per
    example, or the label source of each example and one weight per source
    (e.g. expert labels 1.0, crowd labels 0.3). The result is normalised by
    the sum of the weights, so it is a weighted mean: scaling all weights
    leaves it unchanged, and equal weights give the plain mean.

    Args:
      loss_values: per-example losses of shape ``(batch,)`` (a loss called
        with ``reduction="none"``).
      weights: non-negative weights of shape ``(batch,)``.
      source_ids: integer source index of each example, shape ``(batch,)``.
      source_weights: non-negative weight of each source, shape ``(sources,)``.

    Returns:
      A scalar.

    Raises:
      ValueError: unless exactly one of ``weights`` or
        (``source_ids``, ``source_weights``) is given with matching shapes, or
        for concrete weights that are negative or sum to zero, or concrete
        source ids out of range.
    """
    loss_values = jnp.asarray(loss_values)
    if loss_values.ndim != 1:
        raise ValueError(
            f"weighted: expected per-example loss_values of shape (batch,), "
            f"got shape {loss_values.shape}")
    by_source = source_ids is not None or source_weights is not None
    if (weights is not None) == by_source or (source_ids is None) != (source_weights is None):
        raise ValueError(
            "weighted: expected either weights, or both source_ids and source_weights")
    if by_source:
        source_ids, source_weights = jnp.asarray(source_ids), jnp.asarray(source_weights)
        if source_ids.shape != loss_values.shape or source_weights.ndim != 1:
            raise ValueError(
                f"weighted: expected source_ids of shape {loss_values.shape} and source_weights "
                f"of shape (sources,), got {source_ids.shape} and {source_weights.shape}")
        if not jnp.issubdtype(source_ids.dtype, jnp.integer):
            raise TypeError(f"weighted: expected integer source_ids, got dtype {source_ids.dtype}")
        weights = _lookup("weighted", source_weights, source_ids)
    weights = jnp.asarray(weights)
    if weights.shape != loss_values.shape:
        raise ValueError(
            f"weighted: expected weights of shape {loss_values.shape}, got {weights.shape}")
    concrete = _concrete(weights)
    if concrete is not None and (np.any(concrete < 0) or not concrete.sum() > 0):
        raise ValueError(
            f"weighted: expected non-negative weights with a positive sum, got values in "
            f"[{concrete.min()}, {concrete.max()}] summing to {concrete.sum()}")
    return jnp.sum(weights * loss_values) / jnp.sum(weights)


def _check_cost_matrix(fn_name: str, probs: jax.Array, cost_matrix: jax.Array) -> None:
    k = probs.shape[-1] if probs.ndim else 0
    if probs.ndim < 2 or cost_matrix.shape != (k, k):
        raise ValueError(
            f"{fn_name}: expected probabilities of shape (batch, classes) and a cost matrix "
            f"of shape (classes, classes), got {probs.shape} and {cost_matrix.shape}")


def expected_cost(probs_or_logits: ArrayLike, labels: ArrayLike, cost_matrix: ArrayLike, *,
                  from_logits: bool = False, reduction: str = "mean") -> jax.Array:
    """Expected cost ``sum_j p_j C[label, j]`` of acting on the predicted distribution.

    The notes: "for calculating the loss of different costs we use the
    expected value of such action". ``C[i, j]`` is the cost of deciding
    class ``j`` when the truth is ``i``; with ``C = 1 - I`` this is the
    expected 0/1 error ``1 - p[label]``. Differentiable, so it trains.

    Args:
      probs_or_logits: class probabilities of shape ``(batch, classes)``, or
        logits when ``from_logits`` (then ``p = softmax(logits)``).
      labels: integer true classes of shape ``(batch,)`` (checked when
        concrete; a traced out-of-range index gives NaN for that example).
      cost_matrix: ``C`` of shape ``(classes, classes)``.
      from_logits: apply softmax to the first argument.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: for mismatched shapes or concrete labels out of range.
      TypeError: for non-integer labels.
    """
    probs, labels = jnp.asarray(probs_or_logits), jnp.asarray(labels)
    cost_matrix = jnp.asarray(cost_matrix)
    _check_cost_matrix("expected_cost", probs, cost_matrix)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"expected_cost: expected labels of shape {probs.shape[:1]}, "
            f"got probs {probs.shape} and labels {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"expected_cost: expected integer labels, got dtype {labels.dtype}")
    if from_logits:
        probs = jax.nn.softmax(probs, axis=-1)
    num_classes = len(cost_matrix)
    _check_class_labels("expected_cost", labels, num_classes)
    costs_of_truth = cost_matrix[jnp.clip(labels, 0, num_classes - 1)]  # (batch, classes)
    valid = (labels >= 0) & (labels < num_classes)
    values = jnp.where(valid, jnp.sum(probs * costs_of_truth, axis=-1), jnp.nan)
    return _reduce("expected_cost", values, reduction)


def bayes_decision(probs: ArrayLike, cost_matrix: ArrayLike) -> jax.Array:
    """The decision of least expected cost, ``argmin_j sum_i p_i C[i, j]``.

    Args:
      probs: class probabilities of shape ``(batch, classes)``.
      cost_matrix: ``C[i, j]``, the cost of deciding ``j`` when the truth is
        ``i``, of shape ``(classes, classes)``.

    Returns:
      Integer decisions of shape ``(batch,)``. With ``C = 1 - I`` this is
      ``argmax p``.

    Raises:
      ValueError: for mismatched shapes.
    """
    probs, cost_matrix = jnp.asarray(probs), jnp.asarray(cost_matrix)
    _check_cost_matrix("bayes_decision", probs, cost_matrix)
    return jnp.argmin(probs @ cost_matrix, axis=-1)


# --- auto-encoders -----------------------------------------------------------


def reconstruction(x: ArrayLike, x_rec: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    """Reconstruction cost: the squared error summed over each example.

    With ``reduction="mean"`` this is the notes' ``sum((x - x_rec)**2) / N``
    (also their ``anomaly_score`` per example, with ``reduction="none"``).

    Args:
      x: inputs of shape ``(batch, ...)``.
      x_rec: reconstructions of the same shape.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: if the shapes differ.
    """
    x, x_rec = _pair("reconstruction", x, x_rec, "x", "x_rec")
    return _reduce("reconstruction", _per_example_sum(jnp.square(x - x_rec)), reduction)


def sparse_reconstruction(x: ArrayLike, x_rec: ArrayLike, code: ArrayLike, lam: float = 0.5, *,
                          reduction: str = "mean") -> jax.Array:
    """Reconstruction cost plus ``lam`` times the L1 norm of the code.

    The notes' ``get_squared_loss_with_sparisty``:
    ``(sum((x - x_rec)**2) + lam * sum(|z|)) / N`` for ``reduction="mean"``.
    Add :func:`weight_restriction` for the notes' full auto-encoder loss
    (reconstruction + sparsity + weight restriction).

    Args:
      x: inputs of shape ``(batch, ...)``.
      x_rec: reconstructions of the same shape.
      code: the codes ``z`` of shape ``(batch, ...)``.
      lam: sparsity weight ``lambda >= 0``.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: for mismatched shapes or a negative ``lam``.
    """
    x, x_rec = _pair("sparse_reconstruction", x, x_rec, "x", "x_rec")
    code = jnp.asarray(code)
    if code.ndim < 1 or code.shape[0] != x.shape[0]:
        raise ValueError(
            f"sparse_reconstruction: expected code with batch axis {x.shape[0]}, "
            f"got shape {code.shape}")
    _check_hyperparameter("sparse_reconstruction", "lam", lam)
    values = _per_example_sum(jnp.square(x - x_rec)) + lam * _per_example_sum(jnp.abs(code))
    return _reduce("sparse_reconstruction", values, reduction)


def weight_restriction(weights, lam_w: float) -> jax.Array:
    """The weight restriction term ``lam_w * sum ||W||^2`` (L2 on the weights).

    Args:
      weights: a pytree of weight arrays; every leaf is penalised, so pass
        only the matrices (e.g. ``{"V": V, "W": W}``) to leave biases free.
      lam_w: the weight ``lambda_w >= 0``.

    Returns:
      A scalar.

    Raises:
      ValueError: for a negative ``lam_w`` or a tree with no arrays.
    """
    leaves = jax.tree_util.tree_leaves(weights)
    _check_hyperparameter("weight_restriction", "lam_w", lam_w)
    if not leaves:
        raise ValueError("weight_restriction: expected at least one weight array, got none")
    return lam_w * sum(jnp.sum(jnp.square(w)) for w in leaves)


def denoising_loss(apply_fn: Callable, params, x: ArrayLike, key: jax.Array,
                   noise: float = 0.1, *, reduction: str = "mean") -> jax.Array:
    """Denoising auto-encoder loss: reconstruct the clean ``x`` from a noisy copy.

    The notes' ``get_squared_loss_denoising``: ``x_noisy = x + noise * eps``
    with ``eps ~ N(0, I)``, then ``sum((x - apply_fn(params, x_noisy))**2) / N``.

    Args:
      apply_fn: ``apply_fn(params, x) -> x_rec`` with ``x_rec`` of the shape
        of ``x``; for a jdl layer pass ``lambda p, x: model.apply(p, x)[0]``.
      params: the parameters passed to ``apply_fn``.
      x: clean inputs of shape ``(batch, ...)``.
      key: PRNG key for the noise.
      noise: standard deviation of the Gaussian input noise, ``>= 0``.
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over examples.

    Returns:
      A scalar, or shape ``(batch,)`` for ``reduction="none"``.

    Raises:
      ValueError: for a negative ``noise`` or a reconstruction whose shape
        differs from ``x``.
    """
    _check_hyperparameter("denoising_loss", "noise", noise)
    x = jnp.asarray(x)
    x_noisy = x + noise * jax.random.normal(key, x.shape, x.dtype)
    x_rec = apply_fn(params, x_noisy)
    x, x_rec = _pair("denoising_loss", x, x_rec, "x", "x_rec")
    return _reduce("denoising_loss", _per_example_sum(jnp.square(x - x_rec)), reduction)
