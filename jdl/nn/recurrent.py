"""Recurrent layers: the Elman RNN and the LSTM, unrolled over time with ``lax.scan``.

The cells are pure functions ``cell(params, carry, x_t) -> (carry, h_t)`` so
that ``lax.scan`` can run them and tests can check them step by step.

LSTM (Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000), as the
notes describe it: the forget gate ``f`` decides how much long-term memory
(the cell state ``c``) passes, the input gate ``i`` how much of the new
candidate ``g = tanh(...)`` enters, and the output gate ``o`` how much of the
squashed new memory becomes the hidden state::

    i, f, o = sigmoid(.), sigmoid(.), sigmoid(.);  g = tanh(.)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

The four pre-activations come from one matrix product, in the gate order
``(i, f, g, o)`` along the last axis of ``w_x``, ``w_h`` and ``b``. The forget
bias starts at 1.0 (Jozefowicz et al., 2015) so memory is kept early in training.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jdl.nn import activations, initializers
from jdl.nn.core import Layer, check_last_dim, check_rank, default_dtype


def _preactivation(params, h, x_t):
    z = x_t @ params["w_x"] + h @ params["w_h"]
    return z + jnp.broadcast_to(params["b"], z.shape)


def rnn_cell(params, carry: jax.Array, x_t: jax.Array,
             activation: str | Callable = "tanh") -> tuple[jax.Array, jax.Array]:
    """One Elman RNN step: ``h_t = activation(x_t w_x + h_{t-1} w_h + b)``.

    Args:
      params: ``{"w_x": (features, hidden), "w_h": (hidden, hidden), "b": (hidden,)}``.
      carry: ``h_{t-1}`` of shape ``(batch, hidden)``.
      x_t: the input at time ``t``, ``(batch, features)``.
      activation: a name from :mod:`jdl.nn.activations` or a function.

    Returns:
      ``(h_t, h_t)``: the new carry and the output, both ``(batch, hidden)``.
    """
    h = activations.get(activation)(_preactivation(params, carry, x_t))
    return h, h


def lstm_cell(params, carry: tuple[jax.Array, jax.Array],
              x_t: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """One LSTM step (gate order ``i, f, g, o``).

    Args:
      params: ``{"w_x": (features, 4*hidden), "w_h": (hidden, 4*hidden), "b": (4*hidden,)}``.
      carry: ``(h_{t-1}, c_{t-1})``, each ``(batch, hidden)``.
      x_t: the input at time ``t``, ``(batch, features)``.

    Returns:
      ``((h_t, c_t), h_t)``: the new carry and the output ``(batch, hidden)``.
    """
    h, c = carry
    z_i, z_f, z_g, z_o = jnp.split(_preactivation(params, h, x_t), 4, axis=-1)
    i, f, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jax.nn.sigmoid(z_o)
    g = jnp.tanh(z_g)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (h, c), h


def _check_h0(fn_name, h0, batch, hidden, dtype, what="h0"):
    h0 = jnp.asarray(h0)
    if h0.shape != (batch, hidden):
        raise ValueError(
            f"{fn_name}: expected {what} of shape (batch, hidden) = {(batch, hidden)}, "
            f"got {h0.shape}")
    return h0.astype(dtype)


def _recurrent(kind: str, hidden: int, gates: int, cell, return_sequences: bool,
               config: dict) -> Layer:
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"{kind}: expected a positive int hidden, got {hidden!r}")
    w_x_init, w_h_init = initializers.lecun_normal, initializers.orthogonal

    def init(key, input_shape, dtype=None):
        dtype = default_dtype(dtype)
        if len(input_shape) != 3:
            raise ValueError(
                f"{kind}: expected an input shape (batch, time, features), "
                f"got {tuple(input_shape)}")
        k_x, k_h = jax.random.split(key)
        w_h = jnp.concatenate(
            [w_h_init(k, (hidden, hidden), dtype) for k in jax.random.split(k_h, gates)], axis=1)
        b = jnp.zeros((gates * hidden,), dtype)
        if kind == "lstm":
            b = b.at[hidden:2 * hidden].set(1.0)
        params = {"w_x": w_x_init(k_x, (input_shape[2], gates * hidden), dtype), "w_h": w_h, "b": b}
        out = (input_shape[0], input_shape[1], hidden) if return_sequences else (
            input_shape[0], hidden)
        return out, params, {}

    def apply(params, x, *, state=None, key=None, train=False, h0=None):
        del key, train
        x = jnp.asarray(x)
        check_rank(kind, x, (3,), "input (batch, time, features)")
        check_last_dim(kind, x, params["w_x"].shape[0])
        batch = x.shape[0]
        dtype = jnp.result_type(x, params["w_x"], params["w_h"], params["b"])
        if kind == "lstm":
            if h0 is None:
                carry = (jnp.zeros((batch, hidden), dtype),) * 2
            elif not isinstance(h0, (tuple, list)) or len(h0) != 2:
                raise ValueError(f"lstm: expected h0 as a tuple (h0, c0), got {type(h0).__name__}")
            else:
                carry = (_check_h0(kind, h0[0], batch, hidden, dtype),
                         _check_h0(kind, h0[1], batch, hidden, dtype, "c0"))
        else:
            carry = jnp.zeros((batch, hidden), dtype) if h0 is None else _check_h0(
                kind, h0, batch, hidden, dtype)
        _, hs = lax.scan(lambda c, x_t: cell(params, c, x_t), carry,
                         jnp.swapaxes(x, 0, 1).astype(dtype))
        y = jnp.swapaxes(hs, 0, 1) if return_sequences else hs[-1]
        return y, ({} if state is None else state)

    return Layer(init, apply, kind, config)


def rnn(hidden: int, *, activation: str | Callable = "tanh",
        return_sequences: bool = True) -> Layer:
    """An Elman RNN over ``(batch, time, features)``, unrolled with ``lax.scan``.

    Args:
      hidden: hidden size.
      activation: name from :mod:`jdl.nn.activations` or a function.
      return_sequences: return every ``h_t`` ``(batch, time, hidden)``, else only
        the last ``(batch, hidden)``.

    Returns:
      A :class:`Layer` of kind ``"rnn"`` with params ``{"w_x": (features, hidden),
      "w_h": (hidden, hidden), "b": (hidden,)}`` (LeCun normal, orthogonal, zeros)
      and config ``{"hidden", "activation", "return_sequences"}``. Its ``apply``
      takes an extra keyword ``h0``: the initial state ``(batch, hidden)``
      (default zeros).

    Raises:
      ValueError: for a bad ``hidden``, an input that is not ``(batch, time,
        features)`` or an ``h0`` of the wrong shape.
    """
    fn = activations.get(activation)
    label = activation if isinstance(activation, str) else getattr(activation, "__name__", "custom")
    config = {"hidden": hidden, "activation": label, "return_sequences": return_sequences}
    return _recurrent("rnn", hidden, 1, lambda p, c, x_t: rnn_cell(p, c, x_t, fn),
                      return_sequences, config)


def lstm(hidden: int, *, return_sequences: bool = True) -> Layer:
    """An LSTM over ``(batch, time, features)``, unrolled with ``lax.scan``.

    Args:
      hidden: hidden size.
      return_sequences: return every ``h_t`` ``(batch, time, hidden)``, else only
        the last ``(batch, hidden)``.

    Returns:
      A :class:`Layer` of kind ``"lstm"`` with params ``{"w_x": (features,
      4*hidden), "w_h": (hidden, 4*hidden), "b": (4*hidden,)}`` in gate order
      ``(i, f, g, o)``; ``w_x`` LeCun normal, each gate's block of ``w_h``
      orthogonal, ``b`` zeros but 1.0 for the forget gate. Config ``{"hidden",
      "return_sequences"}``. Its ``apply`` takes an extra keyword ``h0``: a tuple
      ``(h0, c0)`` of ``(batch, hidden)`` arrays (default zeros).

    Raises:
      ValueError: for a bad ``hidden``, an input that is not ``(batch, time,
        features)`` or an ``h0`` that is not a tuple of ``(batch, hidden)`` arrays.
    """
    return _recurrent("lstm", hidden, 4, lstm_cell, return_sequences,
                      {"hidden": hidden, "return_sequences": return_sequences})
