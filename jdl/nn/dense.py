"""The fully connected layer ``y = x @ w + b``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdl.nn import initializers
from jdl.nn.core import Layer, check_last_dim, default_dtype


def dense(features: int, *, use_bias: bool = True, w_init="lecun_normal",
          b_init="zeros") -> Layer:
    """A dense layer applied to the last axis: ``y = x @ w + b``.

    Args:
      features: output size ``out``.
      use_bias: add the bias ``b``.
      w_init: kernel initialiser (name or function), kernel shape ``(in, out)``.
      b_init: bias initialiser, bias shape ``(out,)``.

    Returns:
      A :class:`Layer` with params ``{"w": (in, out), "b": (out,)}``; input
      ``(..., in)``, output ``(..., out)``.
    """
    if not isinstance(features, int) or features < 1:
        raise ValueError(f"dense: expected a positive int for features, got {features!r}")
    w_fn, b_fn = initializers.get(w_init), initializers.get(b_init)

    def init(key, input_shape, dtype=None):
        dtype = default_dtype(dtype)
        if len(input_shape) < 1:
            raise ValueError(f"dense: expected an input shape with a feature axis, got {input_shape}")
        k_w, k_b = jax.random.split(key)
        params = {"w": w_fn(k_w, (input_shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_fn(k_b, (features,), dtype)
        return (*input_shape[:-1], features), params, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del key, train
        x = jnp.asarray(x)
        check_last_dim("dense", x, params["w"].shape[0])
        y = x @ params["w"]
        if use_bias:
            y = y + jnp.broadcast_to(params["b"], y.shape)
        return y, ({} if state is None else state)

    return Layer(init, apply, "dense", {"features": features, "use_bias": use_bias})
