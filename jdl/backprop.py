"""The notes' explicit back-propagation (delta rule), kept as a checked reference.

An MLP with weights ``W[l]`` of shape ``(in_l, out_l)`` and biases ``B[l]`` of
shape ``(out_l,)``: ``a_0 = x``, ``a_{l+1} = f(a_l @ W[l] + B[l])`` for the
hidden layers and a linear output ``y = a_{L-1} @ W[L-1] + B[L-1]``. The
backward pass is the notes' ``backward`` written for a whole batch at once:

``delta = 2 (y - t) / batch`` (the derivative of :func:`mse_loss`), then for
each layer from the last, ``dW[l] = a_l.T @ delta``, ``dB[l] = sum(delta)``
over the batch, and ``delta <- (delta @ W[l].T) * f'(a_l)`` -- the delta rule
``delta_j = sum_k delta_k a_k'(z_k) w_jk`` of the notes, with ``f'`` read from
the stored activation ``a_l`` as the notes do (``a > 0`` for ReLU).

A tied (shared) weight is used by several layers; its gradient is the sum of
the gradients of its uses, the notes' formula
``dE/dv = sum over uses (dE/dz_k)(dz_k/dw_use)``.

The notes' derivative formulas are here too: :func:`sigmoid_derivative`,
:func:`tanh_derivative`, :func:`softmax_jacobian`, :func:`cosh_derivative`.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jdl import backprop
    >>> w = [jnp.ones((3, 4)), jnp.ones((4, 2))]
    >>> b = [jnp.zeros(4), jnp.zeros(2)]
    >>> x, t = jnp.ones((5, 3)), jnp.zeros((5, 2))
    >>> loss, (dw, db) = backprop.mlp_gradients(w, b, x, t, "relu")
    >>> [g.shape for g in dw]
    [(3, 4), (4, 2)]
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "Tie", "activation_derivative", "backward", "cosh_derivative", "effective_weights", "forward",
    "mlp_gradients", "mse_loss", "sigmoid_derivative", "softmax_jacobian", "tanh_derivative",
]

_HIDDEN = ("relu", "tanh", "sigmoid")


class Tie(NamedTuple):
    """Layer uses the weight of layer ``source``, transposed if ``transpose``.

    ``Tie(0, transpose=True)`` on the last layer of an auto-encoder gives the
    classic tied decoder ``W_dec = W_enc.T``.
    """

    source: int
    transpose: bool = False


# --- the notes' derivative formulas ------------------------------------------


def sigmoid_derivative(x: ArrayLike) -> jax.Array:
    """The notes' ``d sigmoid(x) / dx = sigmoid(x) - sigmoid(x)^2``, element-wise.

    As written, the subtraction cancels once ``sigmoid(x)`` rounds to 1
    (``x`` above about 17 in float32, 37 in float64): the absolute error stays
    below one rounding unit of 1, but the relative error of the tiny result
    grows (autodiff's ``s (1 - s)`` shares this).
    """
    s = jax.nn.sigmoid(jnp.asarray(x))
    return s - s * s


def tanh_derivative(x: ArrayLike) -> jax.Array:
    """The notes' ``d tanh(x) / dx = 1 - tanh(x)^2``, element-wise.

    Like :func:`sigmoid_derivative`, accurate in absolute terms; the tiny
    result for large ``|x|`` loses relative precision (or rounds to 0).
    """
    th = jnp.tanh(jnp.asarray(x))
    return 1 - th * th


def cosh_derivative(x: ArrayLike) -> jax.Array:
    """The notes' ``d cosh(x) / dx = sinh(x)``, element-wise."""
    return jnp.sinh(jnp.asarray(x))


def softmax_jacobian(z: ArrayLike) -> jax.Array:
    """The notes' softmax Jacobian ``dS_i / dz_j = delta_ij S_i - S_i S_j``.

    Args:
      z: logits of shape ``(..., classes)``; leading axes are batch axes.

    Returns:
      ``J`` of shape ``(..., classes, classes)`` with ``J[..., i, j] =
      dS_i/dz_j = diag(S) - S S^T`` (symmetric), ``S = softmax(z)``.

    Raises:
      ValueError: for a scalar ``z``.
    """
    z = jnp.asarray(z)
    if z.ndim < 1:
        raise ValueError(f"softmax_jacobian: expected z of shape (..., classes), got {z.shape}")
    s = jax.nn.softmax(z, axis=-1)
    k = z.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(k, dtype=s.dtype), s.shape[:-1] + (k, k))
    return s[..., :, None] * (eye - s[..., None, :])


def activation_derivative(name: str, a: ArrayLike) -> jax.Array:
    """``f'(z)`` read from the activation ``a = f(z)``, as the notes' backward does.

    ``relu``: ``a > 0`` (equal to ``z > 0``; at ``z = 0`` it gives 0, the
    convention JAX's ``relu`` also uses); ``tanh``: ``1 - a^2``;
    ``sigmoid``: ``a - a^2``.

    Raises:
      ValueError: for an activation other than ``relu``, ``tanh``, ``sigmoid``.
    """
    a = jnp.asarray(a)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "tanh":
        return 1 - a * a
    if name == "sigmoid":
        return a - a * a
    raise ValueError(f"activation_derivative: expected one of {_HIDDEN}, got {name!r}")


def _activate(name: str, z: jax.Array) -> jax.Array:
    if name == "relu":
        return jnp.maximum(z, 0)
    if name == "tanh":
        return jnp.tanh(z)
    return jax.nn.sigmoid(z)


# --- the MLP ------------------------------------------------------------------


def _check_activation(fn_name: str, activation: str) -> None:
    if activation not in _HIDDEN:
        raise ValueError(
            f"{fn_name}: expected a hidden activation in {_HIDDEN}, got {activation!r}")


def _normalise_ties(fn_name: str, ties, num_layers: int) -> dict[int, Tie]:
    """``ties`` as ``{layer: Tie}``; a bare int source means no transpose."""
    out = {}
    for layer, tie in dict(ties or {}).items():
        tie = Tie(tie) if isinstance(tie, int) else Tie(*tie)
        if not (0 <= layer < num_layers and 0 <= tie.source < num_layers):
            raise ValueError(
                f"{fn_name}: expected tie layer indices in [0, {num_layers}), "
                f"got {layer} -> {tie.source}")
        out[layer] = tie
    for layer, tie in out.items():
        if tie.source == layer or tie.source in out:
            raise ValueError(
                f"{fn_name}: a tie must point to an untied layer, got {layer} -> {tie.source}")
    return out


def effective_weights(weights: Sequence, ties: Mapping | None = None) -> list[jax.Array]:
    """The weight each layer uses: its own, or its tie's source (transposed if asked).

    Args:
      weights: one entry per layer; a tied layer's entry is ``None``.
      ties: ``{layer: source}`` or ``{layer: Tie(source, transpose)}``.

    Returns:
      The list of ``(in_l, out_l)`` matrices the forward pass multiplies by.

    Raises:
      ValueError: if a tied layer has its own weight, an untied one has
        none, or a tie points to a tied layer or outside the network.
    """
    weights = list(weights)
    ties = _normalise_ties("effective_weights", ties, len(weights))
    out = []
    for layer, w in enumerate(weights):
        if (layer in ties) != (w is None):
            raise ValueError(
                f"effective_weights: expected weights[{layer}] to be "
                f"{'None (it is tied)' if layer in ties else 'an array'}, "
                f"got {type(w).__name__}")
        if layer in ties:
            w = weights[ties[layer].source]
            w = jnp.asarray(w).T if ties[layer].transpose else w
        out.append(jnp.asarray(w))
    return out


def _check_network(fn_name: str, ws: list[jax.Array], biases: Sequence, x: jax.Array) -> None:
    if len(biases) != len(ws) or not ws:
        raise ValueError(
            f"{fn_name}: expected one bias per layer, got {len(ws)} weights and "
            f"{len(biases)} biases")
    if x.ndim != 2:
        raise ValueError(f"{fn_name}: expected x of shape (batch, in), got {x.shape}")
    width = x.shape[1]
    for layer, (w, b) in enumerate(zip(ws, biases)):
        if w.ndim != 2 or w.shape[0] != width or jnp.shape(b) != (w.shape[1],):
            raise ValueError(
                f"{fn_name}: layer {layer} expected weight ({width}, out) and bias (out,), "
                f"got {w.shape} and {jnp.shape(b)}")
        width = w.shape[1]


def forward(weights: Sequence, biases: Sequence, x: ArrayLike, activation: str = "relu", *,
            ties: Mapping | None = None) -> list[jax.Array]:
    """The notes' ``forward``: every layer's activation, for the whole batch.

    Args:
      weights: ``L`` matrices of shape ``(in_l, out_l)`` (``None`` for a tied
        layer, see :func:`effective_weights`).
      biases: ``L`` vectors of shape ``(out_l,)``.
      x: inputs of shape ``(batch, in)``.
      activation: the hidden activation, ``"relu"``, ``"tanh"`` or
        ``"sigmoid"``; the output layer is linear.
      ties: ``{layer: source}`` or ``{layer: Tie(source, transpose)}``.

    Returns:
      ``[x, a_1, ..., a_{L-1}, y]``: the input (the notes' ``A[0]``), the
      ``L - 1`` hidden activations of shape ``(batch, out_l)`` and the output
      ``y`` of shape ``(batch, out)``.

    Raises:
      ValueError: for an unknown activation or inconsistent shapes.
    """
    _check_activation("forward", activation)
    ws = effective_weights(weights, ties)
    x = jnp.asarray(x)
    _check_network("forward", ws, biases, x)
    acts = [x]
    for layer, (w, b) in enumerate(zip(ws, biases)):
        z = acts[-1] @ w + jnp.asarray(b)[None, :]
        acts.append(z if layer == len(ws) - 1 else _activate(activation, z))
    return acts


def mse_loss(weights: Sequence, biases: Sequence, x: ArrayLike, t: ArrayLike,
             activation: str = "relu", *, ties: Mapping | None = None) -> jax.Array:
    """The loss whose gradient the notes' backward computes: ``sum((y - t)^2) / batch``.

    The notes start the backward pass from ``2 (y - t) / y.shape[0]`` and
    ``y.shape[0]`` is the batch size, so the squared error is summed over the
    outputs and averaged over the examples (it equals ``torch.nn.MSELoss`` only
    for one output).

    Args:
      weights, biases, x, activation, ties: as in :func:`forward`.
      t: targets of shape ``(batch, out)``.

    Returns:
      A scalar.
    """
    y = forward(weights, biases, x, activation, ties=ties)[-1]
    t = _check_targets("mse_loss", y, t)
    return jnp.sum(jnp.square(y - t)) / y.shape[0]


def _check_targets(fn_name: str, y: jax.Array, t: ArrayLike) -> jax.Array:
    t = jnp.asarray(t)
    if t.shape != y.shape:
        raise ValueError(
            f"{fn_name}: expected targets t of the output shape {y.shape}, got {t.shape}")
    return t


def backward(weights: Sequence, biases: Sequence, activations: Sequence, t: ArrayLike,
             activation: str = "relu", *,
             ties: Mapping | None = None) -> tuple[list, list[jax.Array]]:
    """The notes' ``backward``: the delta rule over layers, vectorised over the batch.

    Args:
      weights, biases, activation, ties: as in :func:`forward`.
      activations: the list returned by :func:`forward`; its last entry is
        the output ``y`` of shape ``(batch, out)``.
      t: targets of shape ``(batch, out)``.

    Returns:
      ``(dW, dB)``: the gradients of :func:`mse_loss`, in layer order, shaped
      like ``weights`` and ``biases``. A tied layer's ``dW`` entry is ``None``
      and its gradient is added (transposed back if the tie transposes) to
      its source's, so ``dW`` has the structure of ``jax.grad`` of
      :func:`mse_loss` in ``weights``.

    Raises:
      ValueError: for an unknown activation or inconsistent shapes.
    """
    _check_activation("backward", activation)
    ws = effective_weights(weights, ties)
    ties = _normalise_ties("backward", ties, len(ws))
    acts = [jnp.asarray(a) for a in activations]
    if len(acts) != len(ws) + 1:
        raise ValueError(
            f"backward: expected {len(ws) + 1} activations (input, hidden, output), "
            f"got {len(acts)}")
    _check_network("backward", ws, biases, acts[0])
    y = acts[-1]
    t = _check_targets("backward", y, t)
    delta = 2 * (y - t) / y.shape[0]  # the MSE derivative
    d_w, d_b = [None] * len(ws), [None] * len(ws)
    for layer in reversed(range(len(ws))):
        d_w[layer] = acts[layer].T @ delta
        d_b[layer] = jnp.sum(delta, axis=0)
        if layer > 0:  # the notes also form (useless) input deltas at layer 0
            delta = (delta @ ws[layer].T) * activation_derivative(activation, acts[layer])
    for layer, tie in ties.items():  # a shared weight: sum the gradients of its uses
        grad = d_w[layer].T if tie.transpose else d_w[layer]
        d_w[tie.source] = d_w[tie.source] + grad
        d_w[layer] = None
    return d_w, d_b


def mlp_gradients(weights: Sequence, biases: Sequence, x: ArrayLike, t: ArrayLike,
                  activation: str = "relu", *, ties: Mapping | None = None):
    """Forward then backward: the loss and its gradients by the delta rule.

    Args:
      weights, biases, x, activation, ties: as in :func:`forward`.
      t: targets of shape ``(batch, out)``.

    Returns:
      ``(loss, (dW, dB))`` like ``jax.value_and_grad(mse_loss, argnums=(0, 1))``.
    """
    acts = forward(weights, biases, x, activation, ties=ties)
    t = _check_targets("mlp_gradients", acts[-1], t)
    loss = jnp.sum(jnp.square(acts[-1] - t)) / t.shape[0]
    return loss, backward(weights, biases, acts, t, activation, ties=ties)
