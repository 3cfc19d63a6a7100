"""The 2-D convolution layer (NHWC images, HWIO kernels) and its window arithmetic.

Like the notes' loop code and every deep-learning library, ``conv2d`` computes
a cross-correlation: ``y[n, i, j, o] = sum_{a, b, c} x[n, i*s + a*d, j*s + b*d, c]
* w[a, b, c, o] + b[o]`` on the padded input. The output size along one axis is
``floor((n + p - k_eff) / s) + 1`` with ``p`` the total padding and
``k_eff = (k - 1) * d + 1`` the dilated kernel size.

The helpers :func:`normalize_pair`, :func:`normalize_padding` and
:func:`explicit_padding` are shared with the pooling layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jdl.nn import initializers
from jdl.nn.core import Layer, check_rank, default_dtype

Padding = str | tuple[tuple[int, int], tuple[int, int]]


def normalize_pair(fn_name: str, value, what: str) -> tuple[int, int]:
    """``(v, v)`` for an int ``v``, the pair itself for a pair of positive ints.

    Raises:
      ValueError: unless ``value`` is a positive int or a pair of them.
    """
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(
            f"{fn_name}: expected a positive int or a pair of them for {what}, got {value!r}")
    return pair


def normalize_padding(fn_name: str, padding) -> Padding:
    """``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.

    Accepts the strings in any case, an int ``p`` (``p`` on every side), a pair
    ``(ph, pw)`` (``ph`` above and below, ``pw`` left and right) or a pair of pairs.

    Raises:
      ValueError: for anything else or negative padding.
    """
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"{fn_name}: expected padding 'SAME', 'VALID' or explicit pads, got {padding!r}")
        return padding.upper()
    if isinstance(padding, int):
        padding = (padding, padding)
    try:
        pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    except TypeError:
        pads = ()
    if len(pads) != 2 or not all(
            len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p) for p in pads):
        raise ValueError(
            f"{fn_name}: expected padding 'SAME', 'VALID', an int or "
            f"((top, bottom), (left, right)) of non-negative ints, got {padding!r}")
    return pads


def explicit_padding(spatial: tuple[int, int], window: tuple[int, int],
                     strides: tuple[int, int], padding: Padding) -> tuple[tuple[int, int], ...]:
    """The ``((top, bottom), (left, right))`` pads that ``padding`` means for this input.

    ``"SAME"`` gives ``ceil(n / s)`` outputs, with the extra pad at the bottom/right
    (as TensorFlow and ``lax``); ``"VALID"`` pads nothing. ``window`` is the
    effective (dilated) window size.
    """
    if isinstance(padding, str):
        return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding))
    return padding


def output_size(n: int, window: int, stride: int, pads: tuple[int, int]) -> int:
    """``floor((n + p - k_eff) / s) + 1`` with ``p = sum(pads)``, ``k_eff = window``."""
    return (n + pads[0] + pads[1] - window) // stride + 1


def window_output_shape(fn_name: str, input_shape, window, strides, padding) -> tuple[int, ...]:
    """The NHWC output shape (channels unchanged) of a window op on ``input_shape``.

    Raises:
      ValueError: if ``input_shape`` is not ``(batch, height, width, channels)``
        or the window is larger than the padded input.
    """
    if len(input_shape) != 4:
        raise ValueError(
            f"{fn_name}: expected an input shape (batch, height, width, channels), "
            f"got {tuple(input_shape)}")
    spatial = tuple(input_shape[1:3])
    pads = explicit_padding(spatial, window, strides, padding)
    out = tuple(output_size(n, k, s, p) for n, k, s, p in zip(spatial, window, strides, pads))
    if min(out) < 1:
        raise ValueError(
            f"{fn_name}: window {window} does not fit the padded input of spatial shape "
            f"{spatial} with padding {padding}")
    return (input_shape[0], *out, input_shape[3])


SHIFTED_MAX_CHANNELS = 4
"""On CPU, inputs with at most this many channels are convolved by :func:`shifted_conv`."""


def shifted_conv(x, w, strides, pads, dilation):
    """The cross-correlation as one matmul over the ``kh * kw`` shifted views of ``x``.

    Same result as ``lax.conv_general_dilated`` (NHWC, HWIO); ``conv2d`` uses
    it on CPU for images with few channels (1 to 4: grey, RGB), where XLA's
    CPU convolution and its transpose are 2 to 7 times slower than this
    im2col by slicing.

    Args:
      x: ``(batch, height, width, cin)``.
      w: ``(kh, kw, cin, cout)``.
      strides, dilation: pairs; pads: ``((top, bottom), (left, right))``.

    Returns:
      ``(batch, out_height, out_width, cout)``.
    """
    (kh, kw, cin, cout), (sh, sw), (dh, dw) = w.shape, strides, dilation
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    oh = output_size(x.shape[1], (kh - 1) * dh + 1, sh, pads[0])
    ow = output_size(x.shape[2], (kw - 1) * dw + 1, sw, pads[1])
    views = [lax.slice(xp, (0, a * dh, b * dw, 0),
                       (x.shape[0], a * dh + (oh - 1) * sh + 1, b * dw + (ow - 1) * sw + 1, cin),
                       (1, sh, sw, 1))
             for a in range(kh) for b in range(kw)]
    return jnp.concatenate(views, axis=-1) @ w.reshape(kh * kw * cin, cout)


def conv2d(features: int, kernel_size, *, strides=1, padding="SAME", dilation=1,
           use_bias: bool = True, w_init="lecun_normal", b_init="zeros") -> Layer:
    """A 2-D convolution over NHWC images with an HWIO kernel.

    Args:
      features: output channels ``cout``.
      kernel_size: ``kh`` (square) or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)``.
      padding: ``"SAME"`` (output ``ceil(n / s)``), ``"VALID"`` (no padding),
        an int, ``(ph, pw)``, or ``((top, bottom), (left, right))``.
      dilation: kernel dilation ``d`` or ``(dh, dw)`` (atrous convolution;
        Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", 2016).
      use_bias: add the bias ``b``.
      w_init: kernel initialiser, kernel shape ``(kh, kw, cin, cout)``.
      b_init: bias initialiser, bias shape ``(cout,)``.

    Returns:
      A :class:`Layer` of kind ``"conv2d"`` with params ``{"w": (kh, kw, cin, cout),
      "b": (cout,)}``; input ``(batch, height, width, cin)``, output
      ``(batch, out_height, out_width, cout)``. Its config holds ``features``,
      ``kernel_size``, ``strides``, ``padding`` (``"SAME"``, ``"VALID"`` or the
      pads), ``dilation`` (all as pairs) and ``use_bias``.

    Raises:
      ValueError: for bad arguments; at ``apply`` for an input that is not rank 4
        or whose channels differ from the kernel's ``cin``.
    """
    if not isinstance(features, int) or features < 1:
        raise ValueError(f"conv2d: expected a positive int for features, got {features!r}")
    kernel_size = normalize_pair("conv2d", kernel_size, "kernel_size")
    strides = normalize_pair("conv2d", strides, "strides")
    dilation = normalize_pair("conv2d", dilation, "dilation")
    padding = normalize_padding("conv2d", padding)
    k_eff = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation))
    w_fn, b_fn = initializers.get(w_init), initializers.get(b_init)

    def init(key, input_shape, dtype=None):
        dtype = default_dtype(dtype)
        out_shape = window_output_shape("conv2d", input_shape, k_eff, strides, padding)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_fn(k_w, (*kernel_size, input_shape[3], features), dtype)}
        if use_bias:
            params["b"] = b_fn(k_b, (features,), dtype)
        return (*out_shape[:3], features), params, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del key, train
        x = jnp.asarray(x)
        w = params["w"]
        check_rank("conv2d", x, (4,), "input (batch, height, width, channels)")
        if x.shape[3] != w.shape[2]:
            raise ValueError(
                f"conv2d: expected input with {w.shape[2]} channels (last axis), "
                f"got shape {x.shape}")
        dtype = jnp.result_type(x, w)
        pads = explicit_padding(x.shape[1:3], k_eff, strides, padding)
        if x.shape[3] <= SHIFTED_MAX_CHANNELS and jax.default_backend() == "cpu":
            y = shifted_conv(x.astype(dtype), w.astype(dtype), strides, pads, dilation)
        else:
            y = lax.conv_general_dilated(
                x.astype(dtype), w.astype(dtype), window_strides=strides, padding=pads,
                rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if use_bias:
            y = y + jnp.broadcast_to(params["b"], y.shape)
        return y, ({} if state is None else state)

    config = {"features": features, "kernel_size": kernel_size, "strides": strides,
              "padding": padding, "dilation": dilation, "use_bias": use_bias}
    return Layer(init, apply, "conv2d", config)
