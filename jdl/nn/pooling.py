"""Max and average pooling over NHWC images, with ``lax.reduce_window``.

Each output is the max (or mean) of one ``(wh, ww)`` window of one channel,
windows ``(sh, sw)`` apart; output size ``floor((n + p - w) / s) + 1`` per axis
as for ``conv2d``. The notes credit pooling with the translation invariance of CNNs.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jdl.nn.conv import explicit_padding, normalize_pair, normalize_padding, window_output_shape
from jdl.nn.core import Layer, check_rank


def _lowest(dtype):
    """The identity of ``max`` for ``dtype``: ``-inf`` for floats, the minimum int otherwise.

    A Python scalar, not an array: ``lax.reduce_window`` recognises a constant
    identity as the differentiable max/add window reduction; a traced array
    init value (inside ``jit``) is not reverse-differentiable.
    """
    if jnp.issubdtype(dtype, jnp.floating):
        return -float("inf")
    return int(jnp.iinfo(dtype).min)


def _pool(kind: str, window, strides, padding) -> Layer:
    window = normalize_pair(kind, window, "window")
    strides = window if strides is None else normalize_pair(kind, strides, "strides")
    padding = normalize_padding(kind, padding)
    dims, steps = (1, *window, 1), (1, *strides, 1)

    def init(key, input_shape, dtype=None):
        del key, dtype
        return window_output_shape(kind, input_shape, window, strides, padding), {}, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del params, key, train
        x = jnp.asarray(x)
        check_rank(kind, x, (4,), "input (batch, height, width, channels)")
        pads = ((0, 0), *explicit_padding(x.shape[1:3], window, strides, padding), (0, 0))
        if kind == "max_pool":
            y = lax.reduce_window(x, _lowest(x.dtype), lax.max, dims, steps, pads)
        else:
            total = lax.reduce_window(x, 0, lax.add, dims, steps, pads)
            ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
            count = lax.reduce_window(ones, 0, lax.add, dims, steps, pads)
            y = total / count
        return y, ({} if state is None else state)

    return Layer(init, apply, kind, {"window": window, "strides": strides, "padding": padding})


def max_pool(window, *, strides=None, padding="VALID") -> Layer:
    """Max pooling: the largest value of each window, channel by channel.

    Args:
      window: ``w`` or ``(wh, ww)``.
      strides: ``s`` or ``(sh, sw)``; defaults to ``window`` (non-overlapping).
      padding: as ``conv2d``: ``"VALID"``, ``"SAME"``, an int, ``(ph, pw)`` or
        ``((top, bottom), (left, right))``. Padding is ``-inf``: it never wins.

    Returns:
      A parameter-free :class:`Layer` of kind ``"max_pool"`` with config
      ``{"window", "strides", "padding"}``; input ``(batch, height, width,
      channels)``, output ``(batch, out_height, out_width, channels)``.

    Raises:
      ValueError: for bad arguments or an input that is not rank 4.
    """
    return _pool("max_pool", window, strides, padding)


def avg_pool(window, *, strides=None, padding="VALID") -> Layer:
    """Average pooling: the mean of each window, channel by channel.

    A window that overlaps the padding is divided by the number of its
    *non-padding* elements (``count_include_pad=False`` in PyTorch's terms),
    so padding does not pull border outputs towards zero.

    Args:
      window: ``w`` or ``(wh, ww)``.
      strides: ``s`` or ``(sh, sw)``; defaults to ``window``.
      padding: as for :func:`max_pool`.

    Returns:
      A parameter-free :class:`Layer` of kind ``"avg_pool"`` with config
      ``{"window", "strides", "padding"}``; shapes as :func:`max_pool`.

    Raises:
      ValueError: for bad arguments or an input that is not rank 4.
    """
    return _pool("avg_pool", window, strides, padding)
