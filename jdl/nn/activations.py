"""Activation functions and the ``activation`` layer.

The scaled tanh ``1.7159 * tanh(2x/3)`` is LeCun's (Efficient BackProp, 1998):
it maps +-1 to +-1 and keeps unit-variance inputs at about unit variance.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jdl.nn.core import Layer, stateless


def relu(x):
    """``max(0, x)``."""
    return jax.nn.relu(x)


def tanh(x):
    """``tanh(x)``."""
    return jnp.tanh(x)


def sigmoid(x):
    """``1 / (1 + exp(-x))``."""
    return jax.nn.sigmoid(x)


def softmax(x, axis: int = -1):
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis`` (max-shifted, stable)."""
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x, axis: int = -1):
    """``x_i - logsumexp(x)`` along ``axis``."""
    return jax.nn.log_softmax(x, axis=axis)


def scaled_tanh(x):
    """LeCun's ``1.7159 * tanh(2x / 3)``."""
    return 1.7159 * jnp.tanh(2.0 * x / 3.0)


def identity(x):
    """``x``."""
    return x


ACTIVATIONS: dict[str, Callable] = {
    "relu": relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "scaled_tanh": scaled_tanh,
    "identity": identity,
}


def get(name: str | Callable) -> Callable:
    """The activation function called ``name`` (a callable is returned as is).

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(
            f"activations.get: unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def activation(name: str | Callable) -> Layer:
    """An element-wise activation layer, e.g. ``activation("relu")``.

    Args:
      name: one of ``relu, tanh, sigmoid, softmax, log_softmax, scaled_tanh,
        identity``, or any element-wise function.

    Returns:
      A parameter-free :class:`Layer` of kind ``"activation"`` whose config
      holds ``name`` (LRP reads it).
    """
    fn = get(name)
    label = name if isinstance(name, str) else getattr(name, "__name__", "custom")
    return stateless("activation", {"name": label, "fn": fn}, lambda s: s, fn)
