"""Dataset bias: plant a spurious feature, measure the reliance on it, and the notes' remedies.

The notes' remedies for dataset bias: "crop the feature out before
training", "photoshop them out with noise without adding another feature",
"add them to all classes so that the model is invariant to it", and
"penalize them at the loss function". A spurious feature is described by a
boolean ``mask`` over one example's features (an image's pixels, a table's
columns); :func:`corner_patch_mask` and :func:`spurious_column` make the
usual ones: a bright corner patch and an extra column correlated with a class.

Example:
    >>> mask = corner_patch_mask((8, 8, 1), size=2)              # doctest: +SKIP
    >>> x_biased, planted = plant_feature(x, y, mask, target_class=0, key=key)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "CORNERS", "Planted", "add_to_all_classes", "corner_patch_mask", "input_gradient_penalty",
    "plant_feature", "reliance", "remove_feature", "spurious_column",
]

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def corner_patch_mask(image_shape: tuple[int, ...], size: int = 2,
                      corner: str = "top_left") -> jax.Array:
    """A ``size x size`` square in one corner of an image, all channels.

    Args:
      image_shape: one image's shape ``(height, width, channels)`` (NHWC
        without the batch axis), or ``(height, width)``.
      size: side of the square, ``1 <= size <= min(height, width)``.
      corner: one of :data:`CORNERS`.

    Returns:
      A boolean mask of shape ``image_shape``.
    """
    if len(image_shape) not in (2, 3):
        raise ValueError(f"corner_patch_mask: expected an image shape (height, width[, "
                         f"channels]), got {image_shape}")
    height, width = image_shape[:2]
    if not isinstance(size, int) or not 1 <= size <= min(height, width):
        raise ValueError(f"corner_patch_mask: expected an int size in [1, {min(height, width)}], "
                         f"got {size!r}")
    if corner not in CORNERS:
        raise ValueError(f"corner_patch_mask: expected corner in {CORNERS}, got {corner!r}")
    rows = slice(0, size) if corner.startswith("top") else slice(height - size, height)
    cols = slice(0, size) if corner.endswith("left") else slice(width - size, width)
    return jnp.zeros(image_shape, bool).at[rows, cols].set(True)


def _check_mask(fn_name: str, x: jax.Array, mask: ArrayLike) -> jax.Array:
    mask = jnp.asarray(mask, bool)
    if x.shape[1:] != mask.shape:
        raise ValueError(f"{fn_name}: expected a mask of one example's shape {x.shape[1:]}, got "
                         f"{mask.shape}")
    return mask


def _check_rate(fn_name: str, name: str, value) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{fn_name}: expected {name} in [0, 1], got {value!r}")


class Planted(NamedTuple):
    """What :func:`plant_feature` returns.

    Attributes:
      x: the inputs with the feature set where planted, shape of ``x``.
      planted: ``(n,)`` bools, which examples carry the feature.
    """

    x: jax.Array
    planted: jax.Array


def plant_feature(x: ArrayLike, y: ArrayLike, mask: ArrayLike, *, target_class: int,
                  key: jax.Array, value: float = 1.0, p_target: float = 1.0,
                  p_other: float = 0.0) -> Planted:
    """Set the masked features to ``value`` on examples drawn by class: a planted shortcut.

    Each example of ``target_class`` gets the feature with probability
    ``p_target``, every other example with probability ``p_other``; the
    feature predicts the class when ``p_target > p_other``.

    Args:
      x: inputs ``(n, ...)``.
      y: integer labels ``(n,)``.
      mask: boolean mask of one example's shape, e.g. :func:`corner_patch_mask`.
      target_class: the class the feature is correlated with.
      key: PRNG key for the draws.
      value: the value written into the masked features.
      p_target, p_other: planting probabilities in ``[0, 1]``.

    Returns:
      A :class:`Planted` ``(x, planted)``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    mask = _check_mask("plant_feature", x, mask)
    if y.shape != x.shape[:1]:
        raise ValueError(f"plant_feature: expected labels of shape {x.shape[:1]}, got {y.shape}")
    _check_rate("plant_feature", "p_target", p_target)
    _check_rate("plant_feature", "p_other", p_other)
    p = jnp.where(y == target_class, p_target, p_other)
    planted = jax.random.uniform(key, y.shape) < p
    return Planted(_write(x, mask, planted, value), planted)


def _write(x, mask, rows, value):
    where = rows.reshape((-1,) + (1,) * (x.ndim - 1)) & mask[None]
    return jnp.where(where, jnp.asarray(value, x.dtype), x)


def spurious_column(x: ArrayLike, y: ArrayLike, *, target_class: int, key: jax.Array,
                    p_target: float = 1.0, p_other: float = 0.0, noise: float = 0.0
                    ) -> tuple[jax.Array, jax.Array]:
    """Append a column that is 1 on planted examples and 0 elsewhere, plus Gaussian noise.

    Args:
      x: tabular inputs ``(n, features)``.
      y: integer labels ``(n,)``.
      target_class, p_target, p_other: as for :func:`plant_feature`.
      key: PRNG key.
      noise: standard deviation of the noise added to the column.

    Returns:
      ``(x_with_column, mask)``: inputs ``(n, features + 1)`` and the mask
      ``(features + 1,)`` that is True on the new column only.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"spurious_column: expected x (n, features) and y (n,), got shapes "
                         f"{x.shape} and {y.shape}")
    k_plant, k_noise = jax.random.split(key)
    column = jnp.zeros((x.shape[0], 1), x.dtype)
    mask = jnp.ones((1,), bool)
    column, planted = plant_feature(column, y, mask, target_class=target_class, key=k_plant,
                                    p_target=p_target, p_other=p_other)
    column = column + noise * jax.random.normal(k_noise, column.shape, x.dtype)
    return (jnp.concatenate([x, column], axis=1),
            jnp.concatenate([jnp.zeros(x.shape[1], bool), mask]))


def remove_feature(x: ArrayLike, mask: ArrayLike, *, fill: float | str = 0.0,
                   key: jax.Array | None = None, low: float = 0.0, high: float = 1.0
                   ) -> jax.Array:
    """Crop the masked features out (a constant ``fill``) or "photoshop" them with noise.

    The notes' first two remedies. The input keeps its shape, so the same
    model applies; apply the same removal at training and at test time.

    Args:
      x: inputs ``(n, ...)``.
      mask: boolean mask of one example's shape.
      fill: a constant, or ``"noise"`` for independent uniform draws in
        ``[low, high)`` (needs ``key``).
      key: PRNG key for ``fill="noise"``.
      low, high: range of the noise.

    Returns:
      Inputs of the shape of ``x``.
    """
    x = jnp.asarray(x)
    mask = _check_mask("remove_feature", x, mask)
    if isinstance(fill, str):
        if fill != "noise":
            raise ValueError(f"remove_feature: expected fill a number or 'noise', got {fill!r}")
        if key is None:
            raise ValueError("remove_feature: fill='noise' needs a PRNG key, got key=None")
        values = jax.random.uniform(key, x.shape, x.dtype, low, high)
    else:
        values = jnp.full(x.shape, fill, x.dtype)
    return jnp.where(mask[None], values, x)


def add_to_all_classes(x: ArrayLike, mask: ArrayLike, *, key: jax.Array, value: float = 1.0,
                       rate: float = 0.5) -> jax.Array:
    """Plant the feature on a random ``rate`` of all examples, whatever their class.

    The notes' "add them to all classes so that the model is invariant to
    it": the feature no longer predicts the label.

    Args:
      x: inputs ``(n, ...)``.
      mask: boolean mask of one example's shape.
      key: PRNG key.
      value: the value written into the masked features.
      rate: fraction of examples that get it, in ``[0, 1]``.

    Returns:
      Inputs of the shape of ``x``.
    """
    x = jnp.asarray(x)
    mask = _check_mask("add_to_all_classes", x, mask)
    _check_rate("add_to_all_classes", "rate", rate)
    return _write(x, mask, jax.random.uniform(key, x.shape[:1]) < rate, value)


def input_gradient_penalty(loss_fn: Callable, mask: ArrayLike, rate: float) -> Callable:
    """``loss_fn`` plus ``rate * mean_i sum_{j in mask} (∂ℓ_i/∂x_ij)²``: penalise the feature at the loss.

    "Right for the right reasons" (Ross, Hughes & Doshi-Velez, IJCAI 2017):
    the model is pushed to be locally insensitive to the masked features.
    ``ℓ_i`` is ``loss_fn`` on example ``i`` alone, so the gradients are
    per-example whatever the reduction; the penalty is differentiated twice
    (double back-propagation).

    Args:
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``.
      mask: boolean mask of one example's shape (the penalised features).
      rate: the penalty's weight, ``>= 0``.

    Returns:
      A plain loss ``loss(params, (x, y)) -> scalar`` for :func:`jdl.train.fit`.
    """
    if float(rate) < 0:
        raise ValueError(f"input_gradient_penalty: expected rate >= 0, got {rate!r}")
    mask = jnp.asarray(mask, bool)

    def loss(params, batch):
        x, y = batch
        _check_mask("input_gradient_penalty", x, mask)
        single = lambda xi, yi: loss_fn(params, (xi[None], yi[None]))  # noqa: E731
        grads = jax.vmap(jax.grad(single))(x, y)
        penalty = jnp.sum(jnp.where(mask[None], jnp.square(grads), 0.0)) / x.shape[0]
        return loss_fn(params, batch) + rate * penalty

    return loss


def reliance(predict: Callable[[jax.Array], jax.Array], x_with: ArrayLike, x_without: ArrayLike,
             y: ArrayLike) -> jax.Array:
    """Accuracy with the feature minus accuracy without it: how much a model leans on it.

    Args:
      predict: ``predict(x) -> (n, classes)`` scores.
      x_with: test inputs carrying the feature as in training ``(n, ...)``.
      x_without: the same inputs with the feature removed.
      y: labels ``(n,)``.

    Returns:
      A scalar; near 0 for a model that ignores the feature.
    """
    y = jnp.asarray(y)
    accuracy = lambda x: jnp.mean(jnp.argmax(predict(jnp.asarray(x)), -1) == y)  # noqa: E731
    return accuracy(x_with) - accuracy(x_without)

