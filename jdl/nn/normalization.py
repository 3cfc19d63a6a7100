"""Batch normalisation and layer normalisation over the last (feature) axis.

``batch_norm`` (Ioffe & Szegedy, 2015) normalises each channel with statistics
over every other axis (batch and, for images, height and width); in training
it uses the batch's own statistics and updates running averages kept in the
state tree, in evaluation it uses those running averages. ``layer_norm``
(Ba, Kiros & Hinton, 2016) normalises each example over its last axis.
The notes recommend batch norm between layers to keep the data centred and
every layer's variance similar.
"""

from __future__ import annotations

import jax.numpy as jnp

from jdl.nn.core import Layer, check_last_dim, default_dtype


def _affine(x_hat, params):
    scale = jnp.broadcast_to(params["scale"], x_hat.shape)
    return x_hat * scale + jnp.broadcast_to(params["bias"], x_hat.shape)


def batch_norm(*, momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalisation of the last axis: ``y = scale * (x - mean) / sqrt(var + eps) + bias``.

    Training (``train=True``) uses the batch mean and the *biased* batch
    variance (divided by ``n``, as Flax; PyTorch stores the unbiased one) over
    every axis but the last, and returns the running statistics
    ``running = momentum * running + (1 - momentum) * batch`` as the new state
    (the same biased variance is averaged). Evaluation (``train=False``) uses the
    running statistics from ``state``.

    Args:
      momentum: weight of the old running statistics, in ``[0, 1]``.
      eps: added to the variance, ``> 0``.

    Returns:
      A :class:`Layer` of kind ``"batch_norm"`` with params ``{"scale": (c,),
      "bias": (c,)}`` (ones, zeros), state ``{"mean": (c,), "var": (c,)}``
      (zeros, ones) and config ``{"momentum", "eps"}``; input and output
      ``(batch, ..., c)``.

    Raises:
      ValueError: for bad arguments; at ``apply``, for an input of rank < 2 or
        with the wrong channel count, or in evaluation without the state
        from ``init`` (in training a missing state is read as the initial one).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: expected momentum in [0, 1], got {momentum!r}")
    if not eps > 0:
        raise ValueError(f"batch_norm: expected eps > 0, got {eps!r}")

    def init(key, input_shape, dtype=None):
        del key
        dtype = default_dtype(dtype)
        if len(input_shape) < 2:
            raise ValueError(
                f"batch_norm: expected an input shape (batch, ..., channels), got {input_shape}")
        c = input_shape[-1]
        params = {"scale": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)}
        state = {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}
        return tuple(input_shape), params, state

    def apply(params, x, *, state=None, key=None, train=False):
        del key
        x = jnp.asarray(x)
        c = params["scale"].shape[0]
        if x.ndim < 2:
            raise ValueError(
                "batch_norm: expected input of rank >= 2 (batch, ..., channels), "
                f"got shape {x.shape}")
        check_last_dim("batch_norm", x, c)
        has_state = bool(state) and "mean" in state and "var" in state
        if not train and not has_state:
            raise ValueError(
                "batch_norm: evaluation (train=False) needs the running statistics; pass "
                f"state=... from init (or the last training step), got state={state!r}")
        if has_state:
            running_mean, running_var = state["mean"], state["var"]
        else:
            running_mean = jnp.zeros((c,), params["scale"].dtype)
            running_var = jnp.ones((c,), params["scale"].dtype)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
            new_state = {
                "mean": (momentum * running_mean + (1 - momentum) * mean.reshape(c)
                         ).astype(running_mean.dtype),
                "var": (momentum * running_var + (1 - momentum) * var.reshape(c)
                        ).astype(running_var.dtype),
            }
        else:
            mean = jnp.broadcast_to(running_mean, x.shape)
            var = jnp.broadcast_to(running_var, x.shape)
            new_state = state
        x_hat = (x - mean) / jnp.sqrt(var + eps)
        return _affine(x_hat, params), new_state

    return Layer(init, apply, "batch_norm", {"momentum": momentum, "eps": eps})


def layer_norm(*, eps: float = 1e-5) -> Layer:
    """Layer normalisation: each example normalised over its last axis, then scaled and shifted.

    ``y = scale * (x - mean) / sqrt(var + eps) + bias`` with the mean and the
    biased variance taken over the last axis only; train and eval agree.

    Args:
      eps: added to the variance, ``> 0``.

    Returns:
      A :class:`Layer` of kind ``"layer_norm"`` with params ``{"scale": (c,),
      "bias": (c,)}`` (ones, zeros) and config ``{"eps"}``; input and output
      ``(..., c)``.

    Raises:
      ValueError: for ``eps <= 0``; at ``apply``, for a scalar input or the wrong
        last-axis size.
    """
    if not eps > 0:
        raise ValueError(f"layer_norm: expected eps > 0, got {eps!r}")

    def init(key, input_shape, dtype=None):
        del key
        dtype = default_dtype(dtype)
        if len(input_shape) < 1:
            raise ValueError(
                f"layer_norm: expected an input shape (..., features), got {input_shape}")
        c = input_shape[-1]
        params = {"scale": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)}
        return tuple(input_shape), params, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del key, train
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError(
                f"layer_norm: expected input of rank >= 1 (..., features), got shape {x.shape}")
        check_last_dim("layer_norm", x, params["scale"].shape[0])
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return _affine((x - mean) / jnp.sqrt(var + eps), params), ({} if state is None else state)

    return Layer(init, apply, "layer_norm", {"eps": eps})
