"""The ``flatten`` layer: ``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``."""

from __future__ import annotations

import math

import jax.numpy as jnp

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
