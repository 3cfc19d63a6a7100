"""The fully connected layer ``y = x @ w + b``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jdl.nn import initializers
from jdl.nn.core import Layer, check_last_dim, default_dtype

TRANSPOSED_MAX_ROWS = 128


def _input_times(x: jax.Array, w_dot: jax.Array) -> jax.Array:
    """``x @ w_dot`` written so that its transpose (the kernel's gradient) is fast on CPU.

    Reverse mode turns ``x @ w_dot`` into ``x^T g`` contracted over the rows,
    a layout XLA's CPU backend runs as a generic dot, ~1.7x slower than a
    plain matmul for batches of tens to hundreds of rows (2x under vmap, as
    in restarts). Written against a materialised ``x^T`` (the optimisation
    barrier keeps XLA from folding the transpose back into the dot), the
    gradient becomes the plain ``x^T @ g``. Forward mode pays instead (a
    Hessian-vector product at 512 rows took ~24% longer, at 64 rows ~5%), so
    other backends, and batches over ``TRANSPOSED_MAX_ROWS`` rows, keep
    ``x @ w_dot``.
    """
    rows = x.size // x.shape[-1]
    if rows > TRANSPOSED_MAX_ROWS or jax.default_backend() != "cpu":
        return x @ w_dot
    x_t = lax.optimization_barrier(x.reshape(rows, x.shape[-1]).T)     # (in, rows)
    return jnp.einsum("ir,io->ro", x_t, w_dot).reshape(*x.shape[:-1], w_dot.shape[-1])


@jax.custom_jvp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x (..., in)`` and ``w (in, out)``, with a CPU-friendly kernel gradient."""
    return x @ w


def _matmul_jvp(primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    y = x @ w
    y_dot = jnp.zeros_like(y) if isinstance(x_dot, SymbolicZero) else x_dot @ w
    if not isinstance(w_dot, SymbolicZero):
        y_dot = y_dot + _input_times(x, w_dot)
    return y, y_dot


matmul.defjvp(_matmul_jvp, symbolic_zeros=True)


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
        y = matmul(x, params["w"])
        if use_bias:
            y = y + jnp.broadcast_to(params["b"], y.shape)
        return y, ({} if state is None else state)

    return Layer(init, apply, "dense", {"features": features, "use_bias": use_bias})
