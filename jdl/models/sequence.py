"""Sequence models of the notes: a vanilla RNN or an LSTM with a head on its last state.

:func:`sequence_model` runs a :func:`jdl.nn.rnn` or :func:`jdl.nn.lstm`
(unrolled with ``lax.scan``, so autodiff through it is back-propagation
through time) and a dense head on the last hidden state ``h_T``: logits for a
classifier, values for a regressor. Its initial state ``h_0`` follows one of
the notes' strategies (``H0_STRATEGIES``):

- ``"zeros"``: ``h_0 = 0``.
- ``"random"``: fresh noise ``h_0 ~ N(0, h0_scale^2)`` per sequence, from the
  ``key`` of ``apply``, "such that the RNN will desensitize itself from that
  noise"; in evaluation without a key, ``h_0 = 0`` (the noise's mean).
- ``"warmup"``: "set it to random and run it for a few iterations ... then
  reuse that value": ``init`` draws a random ``h_0`` into the model state and
  :func:`warm_up_h0` replaces it by the final state after running the RNN over
  a few sequences; every sequence then starts from it.
- ``"learned"``: ``h_0`` is a trainable parameter (``params["h0"]``).

For an LSTM the initial state is the pair ``(h_0, c_0)``; each strategy treats
both alike.

:func:`rnn_bptt` is the notes' BPTT formula written out by hand for a vanilla
RNN, a checked reference for autodiff through ``lax.scan``.
:func:`hidden_gradient_norms` measures ``||dh_t / ds_0||`` over time, the
vanishing-gradient diagnostic that separates an RNN from an LSTM.
:func:`rows_as_sequence` turns images into sequences of rows (digits read
row by row: 8 time steps of 8 pixels).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jdl.nn import activations
from jdl.nn.core import Layer, check_last_dim, check_rank, default_dtype
from jdl.nn.dense import dense
from jdl.nn.recurrent import lstm, lstm_cell, rnn, rnn_cell

__all__ = [
    "CELLS", "H0_STRATEGIES", "check_sequence", "hidden_gradient_norms", "rnn_bptt",
    "rows_as_sequence", "sequence_model", "warm_up_h0",
]

H0_STRATEGIES = ("zeros", "random", "warmup", "learned")
CELLS = ("rnn", "lstm")

# d activation(a) / da for the activations that rnn_bptt differentiates by hand.
_DERIVATIVES = {
    "tanh": lambda a: 1.0 - jnp.tanh(a) ** 2,
    "sigmoid": lambda a: jax.nn.sigmoid(a) * (1.0 - jax.nn.sigmoid(a)),
    "relu": lambda a: (a > 0).astype(a.dtype),
    "identity": jnp.ones_like,
}


def check_sequence(fn_name: str, x: ArrayLike, features: int | None = None) -> jax.Array:
    """``x`` as an array, after checking it is ``(batch, time, features)``.

    Raises:
      ValueError: if ``x`` is not rank 3, or its last axis is not ``features``.
    """
    x = jnp.asarray(x)
    check_rank(fn_name, x, (3,), "sequences of shape (batch, time, features)")
    if features is not None:
        check_last_dim(fn_name, x, features, "sequences (batch, time, features)")
    return x


def _check_cell(fn_name: str, cell: str) -> None:
    if cell not in CELLS:
        raise ValueError(f"{fn_name}: expected cell 'rnn' or 'lstm', got {cell!r}")


def _step_fn(cell: str, activation: str | Callable) -> Callable:
    """``step(params, carry, x_t) -> (carry, h_t)`` for ``lax.scan``."""
    if cell == "lstm":
        return lstm_cell
    fn = activations.get(activation)
    return lambda params, carry, x_t: rnn_cell(params, carry, x_t, fn)


def _run(step: Callable, params, carry, x: jax.Array):
    """Scan ``step`` over the time axis of ``x`` ``(batch, time, features)``.

    Returns:
      ``(final_carry, hs)`` with ``hs`` of shape ``(time, batch, hidden)``.
    """
    return lax.scan(lambda c, x_t: step(params, c, x_t), carry, jnp.swapaxes(x, 0, 1))


def sequence_model(cell: str, hidden: int, outputs: int, *, h0: str = "zeros",
                   h0_scale: float = 1.0, activation: str = "tanh") -> Layer:
    """An RNN or LSTM over ``(batch, time, features)`` with a dense head on ``h_T``.

    Args:
      cell: ``"rnn"`` (Elman, :func:`jdl.nn.rnn`) or ``"lstm"`` (:func:`jdl.nn.lstm`).
      hidden: hidden size.
      outputs: head size: classes (logits) for a classifier, targets for a regressor.
      h0: initial-state strategy, one of ``H0_STRATEGIES`` (see the module docstring).
      h0_scale: standard deviation of the random initial state (``"random"``,
        ``"warmup"``).
      activation: the vanilla RNN's activation name (ignored for the LSTM).

    Returns:
      A :class:`~jdl.nn.Layer` of kind ``"sequence_model"`` with children
      ``("recurrent", "head")``; params ``{"recurrent": ..., "head": {"w", "b"}}``
      plus ``"h0"`` (and ``"c0"`` for the LSTM) of shape ``(hidden,)`` when
      ``h0="learned"``; state ``{"h0"(, "c0")}`` when ``h0="warmup"``, else
      ``{}``. Input ``(batch, time, features)``, output ``(batch, outputs)``.
      With ``h0="random"``, ``apply(..., train=True)`` needs a ``key``.

    Raises:
      ValueError: for a bad argument; at ``apply`` for sequences that are not
        rank 3 or whose feature size differs from ``init``'s, ``train=True``
        without a key for ``h0="random"``, or ``h0="warmup"`` without the state.
    """
    fn_name = "sequence_model"
    _check_cell(fn_name, cell)
    if h0 not in H0_STRATEGIES:
        raise ValueError(f"{fn_name}: expected h0 in {H0_STRATEGIES}, got {h0!r}")
    if not isinstance(outputs, int) or outputs < 1:
        raise ValueError(f"{fn_name}: expected a positive int outputs, got {outputs!r}")
    if not isinstance(h0_scale, (int, float)) or h0_scale < 0:
        raise ValueError(f"{fn_name}: expected h0_scale >= 0, got {h0_scale!r}")
    recurrent = (rnn(hidden, activation=activation, return_sequences=False) if cell == "rnn"
                 else lstm(hidden, return_sequences=False))
    head = dense(outputs)
    state_names = ("h0", "c0") if cell == "lstm" else ("h0",)

    def init(key, input_shape, dtype=None):
        dtype = default_dtype(dtype)
        if len(input_shape) != 3:
            raise ValueError(
                f"{fn_name}: expected an input shape (batch, time, features), "
                f"got {tuple(input_shape)}")
        k_rec, k_head, k_h0 = jax.random.split(key, 3)
        h_shape, rec_params, _ = recurrent.init(k_rec, input_shape, dtype)
        out_shape, head_params, _ = head.init(k_head, h_shape, dtype)
        params, state = {"recurrent": rec_params, "head": head_params}, {}
        if h0 == "learned":
            params.update({name: jnp.zeros((hidden,), dtype) for name in state_names})
        if h0 == "warmup":
            keys = jax.random.split(k_h0, len(state_names))
            state = {name: h0_scale * jax.random.normal(k, (hidden,), dtype)
                     for name, k in zip(state_names, keys)}
        return out_shape, params, state

    def initial_state(params, state, key, train, batch, dtype):
        if h0 == "zeros" or (h0 == "random" and key is None and not train):
            return None
        if h0 == "random":
            if key is None:
                raise ValueError(
                    f"{fn_name}: h0='random' with train=True needs a PRNG key; call "
                    f"apply(params, x, key=jax.random.key(...), train=True); got key=None")
            keys = jax.random.split(key, len(state_names))
            parts = [h0_scale * jax.random.normal(k, (batch, hidden), dtype) for k in keys]
        else:
            source, where = (params, "params") if h0 == "learned" else (state, "state")
            if any(name not in source for name in state_names):
                raise ValueError(
                    f"{fn_name}: h0={h0!r} needs {state_names} in its {where} (from init or "
                    f"warm_up_h0), got keys {sorted(source)}")
            parts = [jnp.broadcast_to(source[name].astype(dtype), (batch, hidden))
                     for name in state_names]
        return tuple(parts) if cell == "lstm" else parts[0]

    def apply(params, x, *, state=None, key=None, train=False):
        state = {} if state is None else state
        x = check_sequence(fn_name, x, params["recurrent"]["w_x"].shape[0])
        dtype = jnp.result_type(x, params["recurrent"]["w_x"])
        carry = initial_state(params, state, key, train, x.shape[0], dtype)
        h_last, _ = recurrent.apply(params["recurrent"], x, h0=carry)
        y, _ = head.apply(params["head"], h_last)
        return y, state

    config = {"cell": cell, "hidden": hidden, "outputs": outputs, "h0": h0,
              "h0_scale": h0_scale, "activation": activation}
    return Layer(init, apply, "sequence_model", config, (recurrent, head), ("recurrent", "head"))


def warm_up_h0(model: Layer, params, state, x: ArrayLike) -> dict:
    """The notes' warmed-up initial state: run the RNN from ``state``'s ``h_0`` over ``x``.

    The sequences are read one after the other, as one long sequence, starting
    from the (random) ``h_0`` that ``init`` put in ``state``; the final state
    becomes the new ``h_0`` of every sequence.

    Args:
      model: a :func:`sequence_model` with ``h0="warmup"``.
      params: its params.
      state: its state ``{"h0"(, "c0")}``, each ``(hidden,)``.
      x: warm-up sequences ``(sequences, time, features)``.

    Returns:
      The new state, with the final ``h_T`` (and ``c_T``) of shape ``(hidden,)``.

    Raises:
      ValueError: for a model that is not a warm-up ``sequence_model``, a state
        without ``h0``, or sequences of the wrong shape.
    """
    fn_name = "warm_up_h0"
    if model.kind != "sequence_model" or model.config["h0"] != "warmup":
        raise ValueError(
            f"{fn_name}: expected a sequence_model with h0='warmup', got kind {model.kind!r} "
            f"with config {model.config}")
    if "h0" not in state:
        raise ValueError(
            f"{fn_name}: expected a state with 'h0' (from init), got keys {sorted(state)}")
    rec = params["recurrent"]
    x = check_sequence(fn_name, x, rec["w_x"].shape[0])
    cell = model.config["cell"]
    long = x.reshape(1, x.shape[0] * x.shape[1], x.shape[2])
    dtype = jnp.result_type(x, rec["w_x"])
    carry = state["h0"][None].astype(dtype)
    if cell == "lstm":
        carry = (carry, state["c0"][None].astype(dtype))
    final, _ = _run(_step_fn(cell, model.config["activation"]), rec, carry, long.astype(dtype))
    if cell == "lstm":
        return {"h0": final[0][0], "c0": final[1][0]}
    return {"h0": final[0]}


def rnn_bptt(params, x: ArrayLike, h0: ArrayLike, grad_h: ArrayLike,
             activation: str = "tanh") -> tuple[dict, jax.Array]:
    """Back-propagation through time for a vanilla RNN, by the notes' formula.

    For ``h_t = f(a_t)``, ``a_t = x_t w_x + h_{t-1} w_h + b`` and a loss ``E``
    of the hidden states, the notes write
    ``dE/dtheta = sum_t dE/dh_t (d+h_t/dtheta + dh_t/dh_{t-1} dh_{t-1}/dtheta)``:
    the direct (``d+``) dependence of each step on ``theta`` plus the one
    through the previous state. Unrolled, this is the backward recursion
    ``g_t = dE+/dh_t + delta_{t+1} w_h^T``, ``delta_t = g_t * f'(a_t)``,
    ``dE/dw_x = sum_t x_t^T delta_t``, ``dE/dw_h = sum_t h_{t-1}^T delta_t``,
    ``dE/db = sum_t sum_batch delta_t`` and ``dE/dh_0 = delta_1 w_h^T``
    (Werbos, "Backpropagation through time: what it does and how to do it", 1990).
    Written by hand, vectorised over the batch, as a check of autodiff.

    Args:
      params: ``{"w_x": (features, hidden), "w_h": (hidden, hidden), "b": (hidden,)}``.
      x: inputs ``(batch, time, features)``.
      h0: initial states ``(batch, hidden)``.
      grad_h: the direct gradient ``dE+/dh_t`` of the loss with respect to
        every hidden state, ``(batch, time, hidden)`` (zero except at ``T`` for
        a loss on the last state).
      activation: ``"tanh"``, ``"sigmoid"``, ``"relu"`` or ``"identity"``.

    Returns:
      ``(grads, grad_h0)``: ``grads`` like ``params``, ``grad_h0`` ``(batch, hidden)``.

    Raises:
      ValueError: for an unsupported activation or mismatched shapes.
    """
    fn_name = "rnn_bptt"
    if activation not in _DERIVATIVES:
        raise ValueError(
            f"{fn_name}: expected activation in {tuple(_DERIVATIVES)}, got {activation!r}")
    w_x, w_h, b = params["w_x"], params["w_h"], params["b"]
    x = check_sequence(fn_name, x, w_x.shape[0])
    batch, time, hidden = x.shape[0], x.shape[1], w_h.shape[0]
    h0, grad_h = jnp.asarray(h0), jnp.asarray(grad_h)
    if h0.shape != (batch, hidden) or grad_h.shape != (batch, time, hidden):
        raise ValueError(
            f"{fn_name}: expected h0 {(batch, hidden)} and grad_h {(batch, time, hidden)}, "
            f"got {h0.shape} and {grad_h.shape}")
    f, df = activations.get(activation), _DERIVATIVES[activation]
    xs = jnp.swapaxes(x, 0, 1)

    def forward(h_prev, x_t):
        a_t = x_t @ w_x + h_prev @ w_h + b
        return f(a_t), (a_t, h_prev)

    _, (a, h_prev) = lax.scan(forward, h0, xs)

    def backward(carry, inputs):
        back, gw_x, gw_h, gb = carry   # back = delta_{t+1} w_h^T: dE/dh_t through h_{t+1}
        a_t, h_prev_t, x_t, direct = inputs
        delta = (direct + back) * df(a_t)
        return (delta @ w_h.T, gw_x + x_t.T @ delta, gw_h + h_prev_t.T @ delta,
                gb + delta.sum(0)), None

    zeros = (jnp.zeros_like(h0), jnp.zeros_like(w_x), jnp.zeros_like(w_h), jnp.zeros_like(b))
    (grad_h0, gw_x, gw_h, gb), _ = lax.scan(
        backward, zeros, (a, h_prev, xs, jnp.swapaxes(grad_h, 0, 1)), reverse=True)
    return {"w_x": gw_x, "w_h": gw_h, "b": gb}, grad_h0


def hidden_gradient_norms(cell: str, params, x: ArrayLike, *, activation: str = "tanh",
                          h0=None) -> jax.Array:
    """``||dh_t / ds_0||_F`` for ``t = 1..T``, averaged over the batch.

    ``s_0`` is the whole initial state: ``h_0`` for an RNN, ``(h_0, c_0)`` for an
    LSTM. The norm of this Jacobian is how strongly the state at time ``t``
    still depends on the start, the quantity whose exponential decay is the
    vanishing-gradient problem (Bengio et al., 1994; Hochreiter &
    Schmidhuber, 1997); it is computed exactly by forward-mode autodiff.

    Args:
      cell: ``"rnn"`` or ``"lstm"``.
      params: the recurrent params ``{"w_x", "w_h", "b"}`` (e.g.
        ``model_params["recurrent"]`` of a :func:`sequence_model`).
      x: sequences ``(batch, time, features)``.
      activation: the RNN's activation (ignored for the LSTM).
      h0: the initial state around which to differentiate, ``(batch, hidden)``
        (a pair for the LSTM); zeros if None.

    Returns:
      ``(time,)`` mean Frobenius norms over the batch.

    Raises:
      ValueError: for an unknown cell or sequences of the wrong shape.
    """
    fn_name = "hidden_gradient_norms"
    _check_cell(fn_name, cell)
    x = check_sequence(fn_name, x, params["w_x"].shape[0])
    hidden = params["w_h"].shape[0]
    dtype = jnp.result_type(x, params["w_x"])
    parts = 2 if cell == "lstm" else 1
    if h0 is None:
        s0 = jnp.zeros((x.shape[0], parts * hidden), dtype)
    else:
        s0 = jnp.concatenate(h0 if cell == "lstm" else (h0,), axis=-1).astype(dtype)
    step = _step_fn(cell, activation)

    def states(s0_one, x_one):
        carry = (s0_one[None, :hidden], s0_one[None, hidden:]) if cell == "lstm" else s0_one[None]
        _, hs = _run(step, params, carry, x_one[None])
        return hs[:, 0]   # (time, hidden)

    jac = jax.vmap(jax.jacfwd(states))(s0, x.astype(dtype))  # (batch, time, hidden, state)
    return jnp.sqrt(jnp.sum(jac ** 2, axis=(2, 3))).mean(0)


def rows_as_sequence(images: ArrayLike) -> jax.Array:
    """Images read row by row: ``(batch, height, width[, channels])``.

    The output is ``(batch, height, width * channels)``: one time step per row.

    Digits (8x8) become sequences of 8 time steps of 8 pixels.

    Raises:
      ValueError: for inputs that are not rank 3 or 4.
    """
    images = jnp.asarray(images)
    check_rank("rows_as_sequence", images, (3, 4), "images (batch, height, width[, channels])")
    return images.reshape(images.shape[0], images.shape[1], -1)
