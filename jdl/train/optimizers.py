"""The notes' optimisers, as optax ``GradientTransformation``s.

Every constructor takes a float or a schedule (``step -> lr``) as the
learning rate and returns an optax transformation; all but Adam without bias
correction are optax's own. Update rules (``g`` the gradient, ``η`` the rate):

- ``sgd``: ``w -= η g`` (Robbins & Monro, 1951).
- ``heavy_ball``: ``v = β v + g;  w -= η v`` (Polyak, 1964).
- ``nesterov``: ``v = β v + g;  w -= η (β v + g)`` (Nesterov, 1983; Sutskever et al., 2013).
- ``rmsprop``: ``s = ρ s + (1-ρ) g²;  w -= η g / sqrt(s + ε)`` (Tieleman & Hinton, 2012).
- ``adagrad``: ``s += g²;  w -= η g / sqrt(s + ε)`` (Duchi et al., 2011).
- ``adam``: ``m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²``; with bias correction
  ``m̂ = m / (1-β1^t), v̂ = v / (1-β2^t)``; ``w -= η m̂ / (sqrt(v̂) + ε)``
  (Kingma & Ba, 2015). Without correction ``m`` and ``v`` themselves are used:
  they start at 0 and, for ``β`` close to 1, stay biased toward zero for about
  ``1/(1-β)`` steps, as the notes say.
- ``adamw``: Adam plus decoupled weight decay ``w -= η λ w`` (Loshchilov & Hutter, 2019).

``weight_decay`` on ``sgd``/``heavy_ball``/``nesterov`` adds ``λ w`` to the
gradient (the gradient of the L2 penalty ``λ/2 ||w||²``), as
``torch.optim.SGD(weight_decay=λ)`` does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Any


def _check_momentum(fn_name: str, momentum) -> None:
    """Reject a concrete momentum outside ``[0, 1)``; a traced one (a vmapped sweep) passes."""
    if not isinstance(momentum, jax.core.Tracer) and not 0 <= float(momentum) < 1:
        raise ValueError(f"{fn_name}: expected 0 <= momentum < 1, got {momentum!r}")


def _with_decay(weight_decay: float, tx: optax.GradientTransformation, fn_name: str):
    if weight_decay < 0:
        raise ValueError(f"{fn_name}: expected weight_decay >= 0, got {weight_decay!r}")
    if weight_decay == 0:
        return tx
    return optax.chain(optax.add_decayed_weights(weight_decay), tx)


def sgd(learning_rate: ScalarOrSchedule, *, weight_decay: float = 0.0
        ) -> optax.GradientTransformation:
    """Plain stochastic gradient descent ``w -= η (g + λ w)``."""
    return _with_decay(weight_decay, optax.sgd(learning_rate), "sgd")


def heavy_ball(learning_rate: ScalarOrSchedule, momentum: float = 0.9, *,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Polyak's heavy-ball momentum ``v = β v + g; w -= η v``.

    On a quadratic with Hessian eigenvalues in ``[λmin, λmax]``, the step
    ``η = 4 / (sqrt(λmax) + sqrt(λmin))²`` with ``β = ((sqrt κ - 1)/(sqrt κ + 1))²``
    contracts by ``(sqrt κ - 1)/(sqrt κ + 1)`` per step, against ``(κ - 1)/(κ + 1)``
    for gradient descent.
    """
    _check_momentum("heavy_ball", momentum)
    return _with_decay(weight_decay, optax.sgd(learning_rate, momentum=momentum), "heavy_ball")


def nesterov(learning_rate: ScalarOrSchedule, momentum: float = 0.9, *,
             weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Nesterov momentum, the look-ahead form ``w -= η (β v + g)`` with ``v = β v + g``."""
    _check_momentum("nesterov", momentum)
    tx = optax.sgd(learning_rate, momentum=momentum, nesterov=True)
    return _with_decay(weight_decay, tx, "nesterov")


def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8
            ) -> optax.GradientTransformation:
    """RMSProp: divide by a moving average of squared gradients, per parameter."""
    return optax.rmsprop(learning_rate, decay=decay, eps=eps)


def adagrad(learning_rate: ScalarOrSchedule, eps: float = 1e-7,
            initial_accumulator_value: float = 0.1) -> optax.GradientTransformation:
    """Adagrad: divide by the root of the sum of all past squared gradients, per parameter."""
    return optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value,
                         eps=eps)


class ScaleByAdamUncorrectedState(NamedTuple):
    """Adam's moment estimates without bias correction.

    Attributes:
      mu: first moment ``m``, a pytree like the params.
      nu: second moment ``v``, a pytree like the params.
    """

    mu: Any
    nu: Any


def scale_by_adam_uncorrected(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                              ) -> optax.GradientTransformation:
    """Adam's direction ``m / (sqrt(v) + ε)`` from the raw, uncorrected moments.

    ``m`` and ``v`` start at zero, so after ``t`` steps of a constant gradient
    ``g`` they are ``(1 - β1^t) g`` and ``(1 - β2^t) g²``: biased toward zero.

    Returns:
      A ``GradientTransformation`` with :class:`ScaleByAdamUncorrectedState`.
    """
    for name, beta in (("b1", b1), ("b2", b2)):
        if not 0 <= beta < 1:
            raise ValueError(f"scale_by_adam_uncorrected: expected 0 <= {name} < 1, got {beta!r}")

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByAdamUncorrectedState(mu=zeros, nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return direction, ScaleByAdamUncorrectedState(mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, *, bias_correction: bool = True) -> optax.GradientTransformation:
    """Adam, with or without the bias correction of its moment estimates.

    Args:
      learning_rate: ``η``, a float or a schedule.
      b1, b2: decay of the first and second moment averages.
      eps: added to ``sqrt(v)``.
      bias_correction: divide the moments by ``1 - β^t`` (optax's ``adam``);
        ``False`` chains :func:`scale_by_adam_uncorrected` with the rate.
    """
    if bias_correction:
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    return optax.chain(scale_by_adam_uncorrected(b1, b2, eps),
                       optax.scale_by_learning_rate(learning_rate))


def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """AdamW: Adam with decoupled weight decay ``w -= η λ w`` (Loshchilov & Hutter, 2019)."""
    if weight_decay < 0:
        raise ValueError(f"adamw: expected weight_decay >= 0, got {weight_decay!r}")
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
