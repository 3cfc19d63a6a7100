"""Shape-changing layers without parameters: ``flatten``, ``reshape``, ``upsample``."""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from jdl.nn.conv import normalize_pair
from jdl.nn.core import Layer, stateless


def flatten() -> Layer:
    """Flatten every axis but the leading batch axis (row-major, as ``reshape``).

    Returns:
      A parameter-free :class:`Layer` of kind ``"flatten"``; input
      ``(batch, d1, ..., dk)``, output ``(batch, d1 * ... * dk)``.

    Raises:
      ValueError: for an input without a batch axis (rank 0).
    """

    def out_shape(shape):
        if len(shape) < 1:
            raise ValueError(f"flatten: expected an input shape (batch, ...), got {shape}")
        return (shape[0], math.prod(shape[1:]))

    def fn(x):
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError(
                f"flatten: expected an input of shape (batch, ...), got shape {x.shape}")
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    return stateless("flatten", {}, out_shape, fn)


def reshape(shape: Sequence[int]) -> Layer:
    """Reshape each example: ``(batch, ...)`` -> ``(batch, *shape)``.

    Args:
      shape: the per-example output shape, e.g. ``(8, 8, 1)``.

    Returns:
      A parameter-free :class:`Layer` of kind ``"reshape"`` with config ``{"shape"}``.

    Raises:
      ValueError: for a bad shape, or an input whose per-example size differs.
    """
    shape = tuple(shape)
    if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(f"reshape: expected a shape of positive ints, got {shape!r}")
    size = math.prod(shape)

    def check(in_shape):
        if len(in_shape) < 1 or math.prod(in_shape[1:]) != size:
            raise ValueError(
                f"reshape: expected examples of {size} elements to reshape to {shape}, "
                f"got shape {tuple(in_shape)}")

    def out_shape(in_shape):
        check(in_shape)
        return (in_shape[0], *shape)

    def fn(x):
        x = jnp.asarray(x)
        check(x.shape)
        return x.reshape(x.shape[0], *shape)

    return stateless("reshape", {"shape": shape}, out_shape, fn)


def upsample(factor=2) -> Layer:
    """Nearest-neighbour upsampling of NHWC images: each pixel becomes a ``(fh, fw)`` block.

    Args:
      factor: ``f`` or ``(fh, fw)``, positive ints.

    Returns:
      A parameter-free :class:`Layer` of kind ``"upsample"`` with config
      ``{"factor", "method": "nearest"}``; input ``(batch, height, width,
      channels)``, output ``(batch, fh*height, fw*width, channels)``.

    Raises:
      ValueError: for a bad factor or an input that is not rank 4.
    """
    fh, fw = normalize_pair("upsample", factor, "factor")

    def out_shape(in_shape):
        if len(in_shape) != 4:
            raise ValueError(
                f"upsample: expected an input shape (batch, height, width, channels), "
                f"got {tuple(in_shape)}")
        return (in_shape[0], fh * in_shape[1], fw * in_shape[2], in_shape[3])

    def fn(x):
        x = jnp.asarray(x)
        out_shape(x.shape)
        return jnp.repeat(jnp.repeat(x, fh, axis=1), fw, axis=2)

    return stateless("upsample", {"factor": (fh, fw), "method": "nearest"}, out_shape, fn)
