"""Gradient attributions: gradient x input, integrated gradients, SmoothGrad.

All take a jdl model and its params, explain one output score per example
(``target``), are batched over the leading axis and traceable under ``jit``;
integrated gradients and SmoothGrad loop over their steps / samples with one
``lax.scan``.

References:
  Shrikumar, Greenside & Kundaje, "Learning important features through
  propagating activation differences", ICML (2017): gradient x input.
  Sundararajan, Taly & Yan, "Axiomatic attribution for deep networks", ICML
  (2017): integrated gradients and completeness.
  Smilkov, Thorat, Kim, Viegas & Wattenberg, "SmoothGrad: removing noise by
  adding noise" (2017).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdl.nn.core import Layer

IG_METHODS = ("gauss_legendre", "riemann_middle", "riemann_trapezoid")


def _check(fn_name: str, model, x) -> jax.Array:
    if not isinstance(model, Layer):
        raise TypeError(f"{fn_name}: expected a jdl Layer as model, got {type(model).__name__}")
    x = jnp.asarray(x)
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{fn_name}: expected float x of shape (batch, ...), got {x.dtype} "
                         f"{x.shape}")
    return x


def _target(fn_name: str, out: jax.Array, target) -> jax.Array | None:
    """Target index per example ``(batch,)``, or None for a model with one output per row."""
    n = out.shape[0]
    if out.ndim == 1:
        return None
    if out.ndim != 2:
        raise ValueError(f"{fn_name}: expected model output (batch,) or (batch, outputs), got "
                         f"{out.shape}")
    if target is None:
        return jnp.argmax(out, axis=1)
    target = jnp.asarray(target)
    if not jnp.issubdtype(target.dtype, jnp.integer) or target.shape not in ((), (n,)):
        raise ValueError(f"{fn_name}: expected target None, an int or ints of shape ({n},), "
                         f"got {target.dtype} {target.shape}")
    return jnp.broadcast_to(target, (n,))


def _scores(model, params, state, x, target):
    """``f_target(x)`` per example, ``(batch,)``."""
    out, _ = model.apply(params, x, state=state)
    if target is None:
        return out.reshape(out.shape[0])
    return jnp.take_along_axis(out, target[:, None], axis=1)[:, 0]


def _gradient(model, params, state, x, target):
    """``d f_target / dx`` for every example (examples are independent)."""
    return jax.grad(lambda z: _scores(model, params, state, z, target).sum())(x)


def _resolve(fn_name, model, params, state, x, target):
    out, _ = model.apply(params, x, state=state)
    return _target(fn_name, out, target)


def gradient_x_input(model: Layer, params, x, *, state=None, target=None) -> jax.Array:
    """Gradient x input, ``x * d f_c / dx`` (Shrikumar et al. 2017).

    Args:
      model, params: a jdl model and its params; ``state`` its state if any.
      x: inputs ``(batch, ...)``.
      target: explained output: ``None`` (each row's largest), an int or ints ``(batch,)``.

    Returns:
      Attributions of the shape of ``x``.
    """
    x = _check("gradient_x_input", model, x)
    target = _resolve("gradient_x_input", model, params, state, x, target)
    return x * _gradient(model, params, state, x, target)


class IntegratedGradients(NamedTuple):
    """Integrated-gradients attributions.

    Attributes:
      attributions: shape of ``x``.
      completeness_gap: ``(batch,)``, ``sum(attributions) - (f(x) - f(baseline))``;
        zero for the exact integral, so it measures the quadrature error.
      score: ``f_c(x)`` ``(batch,)``.
      baseline_score: ``f_c(baseline)`` ``(batch,)``.
    """

    attributions: jax.Array
    completeness_gap: jax.Array
    score: jax.Array
    baseline_score: jax.Array


def _quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on ``[0, 1]``."""
    if method == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    nodes = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    return nodes, weights


def integrated_gradients(model: Layer, params, x, baseline=None, *, steps: int = 32,
                         method: str = "gauss_legendre", state=None,
                         target=None) -> IntegratedGradients:
    """Integrated gradients ``(x - b) * int_0^1 grad f_c(b + t (x - b)) dt`` (Sundararajan 2017).

    Args:
      model, params: a jdl model and its params; ``state`` its state if any.
      x: inputs ``(batch, ...)``.
      baseline: the reference, broadcastable to ``x`` (default zeros).
      steps: quadrature points (model gradients per example).
      method: ``"gauss_legendre"`` (default, exact for polynomial paths of
        degree ``< 2 steps``), ``"riemann_middle"`` (the paper's sum) or
        ``"riemann_trapezoid"``.
      target: explained output: ``None`` (the largest at ``x``), an int or ints
        ``(batch,)``; the same output is followed along the whole path.

    Returns:
      An :class:`IntegratedGradients` with the completeness gap per example.
    """
    x = _check("integrated_gradients", model, x)
    if method not in IG_METHODS:
        raise ValueError(f"integrated_gradients: expected method in {IG_METHODS}, got {method!r}")
    if not isinstance(steps, int) or steps < (2 if method == "riemann_trapezoid" else 1):
        raise ValueError(f"integrated_gradients: expected a positive int steps (>= 2 for the "
                         f"trapezoid), got {steps!r}")
    baseline = jnp.zeros_like(x) if baseline is None else jnp.asarray(baseline, x.dtype)
    try:
        baseline = jnp.broadcast_to(baseline, x.shape)
    except ValueError:
        raise ValueError(f"integrated_gradients: expected a baseline broadcastable to x of "
                         f"shape {x.shape}, got {baseline.shape}") from None
    target = _resolve("integrated_gradients", model, params, state, x, target)
    nodes, weights = _quadrature(method, steps)
    delta = x - baseline

    def step(total, node_weight):
        t, w = node_weight
        return total + w * _gradient(model, params, state, baseline + t * delta, target), None

    total, _ = lax.scan(step, jnp.zeros_like(x),
                        (jnp.asarray(nodes, x.dtype), jnp.asarray(weights, x.dtype)))
    attributions = delta * total
    score = _scores(model, params, state, x, target)
    base_score = _scores(model, params, state, baseline, target)
    gap = attributions.reshape(x.shape[0], -1).sum(1) - (score - base_score)
    return IntegratedGradients(attributions, gap, score, base_score)


def smoothgrad(model: Layer, params, x, *, key: jax.Array, num_samples: int = 32,
               noise: float = 0.15, times_input: bool = False, state=None,
               target=None) -> jax.Array:
    """SmoothGrad: the gradient averaged over noisy copies of ``x`` (Smilkov et al. 2017).

    Args:
      model, params: a jdl model and its params; ``state`` its state if any.
      x: inputs ``(batch, ...)``.
      key: PRNG key for the noise.
      num_samples: noisy copies per example.
      noise: noise standard deviation as a fraction of each example's value
        range ``max(x) - min(x)`` (the paper's 10-20 %).
      times_input: multiply the averaged gradient by ``x``.
      target: explained output: ``None`` (the largest at ``x``), an int or ints
        ``(batch,)``.

    Returns:
      Attributions of the shape of ``x``.
    """
    x = _check("smoothgrad", model, x)
    if not isinstance(num_samples, int) or num_samples < 1 or not noise >= 0:
        raise ValueError(f"smoothgrad: expected num_samples >= 1 and noise >= 0, got "
                         f"{num_samples!r}, {noise!r}")
    target = _resolve("smoothgrad", model, params, state, x, target)
    flat = x.reshape(x.shape[0], -1)
    sigma = (noise * (flat.max(1) - flat.min(1))).reshape((-1,) + (1,) * (x.ndim - 1))

    def step(total, k):
        noisy = x + sigma * jax.random.normal(k, x.shape, x.dtype)
        return total + _gradient(model, params, state, noisy, target), None

    total, _ = lax.scan(step, jnp.zeros_like(x), jax.random.split(key, num_samples))
    mean = total / num_samples
    return mean * x if times_input else mean
