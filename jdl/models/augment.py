"""Rotation augmentation: "to make auto encoders invariant to rotations we give it
randomly rotated versions of the images as input" (the notes).

:func:`rotate` turns a batch of NHWC images by per-image angles about their
centres, by sampling each output pixel from the input with
``jax.scipy.ndimage.map_coordinates`` (bilinear, zeros outside);
:func:`random_rotation` draws the angles from a key; :func:`rotation_objective`
wraps a loss so that every training step sees freshly rotated images.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates
from jax.typing import ArrayLike

from jdl.nn.core import check_rank
from jdl.train.objective import StatefulLoss

__all__ = ["random_rotation", "rotate", "rotation_objective"]


def _rotate_one(image: jax.Array, angle: jax.Array, order: int, cval: float) -> jax.Array:
    height, width = image.shape[:2]
    ci, cj = (height - 1) / 2, (width - 1) / 2
    di, dj = jnp.meshgrid(jnp.arange(height, dtype=angle.dtype) - ci,
                          jnp.arange(width, dtype=angle.dtype) - cj, indexing="ij")
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # output pixel (i, j) samples the input at the point rotated back by -angle
    coords = [ci + cos * di + sin * dj, cj - sin * di + cos * dj]

    def channel(c):
        return map_coordinates(c, coords, order=order, mode="constant", cval=cval)

    return jax.vmap(channel, in_axes=2, out_axes=2)(image)


def rotate(images: ArrayLike, angles: ArrayLike, *, order: int = 1,
           cval: float = 0.0) -> jax.Array:
    """Rotate each image counter-clockwise (as displayed, row 0 at the top) about its centre.

    ``angle = pi / 2`` on a square image equals ``np.rot90`` on the height and
    width axes. Pixels that come from outside the image are ``cval``.

    Args:
      images: ``(batch, height, width, channels)``.
      angles: ``(batch,)`` angles in radians, or a scalar for all images.
      order: interpolation order, ``0`` (nearest) or ``1`` (bilinear).
      cval: the value outside the image.

    Returns:
      Rotated images, ``(batch, height, width, channels)``, in the images' dtype.

    Raises:
      ValueError: for images that are not rank 4, angles of the wrong shape or
        an order other than 0 or 1.
    """
    images = jnp.asarray(images)
    check_rank("rotate", images, (4,), "images (batch, height, width, channels)")
    if order not in (0, 1):
        raise ValueError(f"rotate: expected order 0 or 1, got {order!r}")
    angles = jnp.asarray(angles, images.dtype)
    if angles.ndim == 0:
        angles = jnp.broadcast_to(angles, images.shape[:1])
    if angles.shape != images.shape[:1]:
        raise ValueError(
            f"rotate: expected angles of shape (batch,) = {images.shape[:1]} or a scalar, "
            f"got {angles.shape}")
    return jax.vmap(lambda im, a: _rotate_one(im, a, order, cval))(images, angles)


def random_rotation(key: jax.Array, images: ArrayLike, max_angle: float = jnp.pi, *,
                    order: int = 1) -> jax.Array:
    """Rotate each image by an angle drawn uniformly from ``[-max_angle, max_angle]``.

    Args:
      key: PRNG key for the angles (one per image).
      images: ``(batch, height, width, channels)``.
      max_angle: largest rotation in radians, ``>= 0`` (``pi``: any angle).
      order: interpolation order, 0 or 1.

    Returns:
      Rotated images of the same shape.
    """
    if max_angle < 0:
        raise ValueError(f"random_rotation: expected max_angle >= 0, got {max_angle}")
    images = jnp.asarray(images)
    check_rank("random_rotation", images, (4,), "images (batch, height, width, channels)")
    angles = jax.random.uniform(key, images.shape[:1], images.dtype, -max_angle, max_angle)
    return rotate(images, angles, order=order)


def rotation_objective(loss_fn: Callable, max_angle: float = jnp.pi) -> StatefulLoss:
    """``loss_fn`` on randomly rotated images in training, on the images as given in evaluation.

    Args:
      loss_fn: a plain ``loss_fn(params, batch) -> scalar`` whose batch is an
        image array ``(batch, height, width, channels)`` (an auto-encoder's) or a
        tuple whose first element is one (``(x, y)`` for a classifier).
      max_angle: largest rotation in radians.

    Returns:
      A :class:`~jdl.train.StatefulLoss` for ``jdl.train.fit``: each step
      rotates its images by fresh angles from the step's key; the targets of
      an auto-encoder are the rotated images themselves.
    """
    if not callable(loss_fn):
        raise TypeError(
            f"rotation_objective: expected a callable loss_fn, got {type(loss_fn).__name__}")
    if max_angle < 0:
        raise ValueError(f"rotation_objective: expected max_angle >= 0, got {max_angle}")

    def fn(params, model_state, batch, key, train):
        if train:
            if isinstance(batch, tuple):
                batch = (random_rotation(key, batch[0], max_angle), *batch[1:])
            else:
                batch = random_rotation(key, batch, max_angle)
        return loss_fn(params, batch), model_state

    return StatefulLoss(fn)
