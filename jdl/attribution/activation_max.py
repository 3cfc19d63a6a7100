"""Activation maximisation: the input a unit or class responds to most.

The notes state it as ``argmax_x log p(c | x) + log p(x)``: gradient ascent on
the input, with a prior ``log p(x)`` keeping the result close to the data.
Priors here: an L2 penalty ``-lam ||x||^2``, total variation (smooth images),
and a Gaussian fitted to data (mean and shrunk covariance). Jitter shifts the
image by a few random pixels at every step so the result does not exploit
single pixels. One ``lax.scan`` runs the optax optimiser for all steps,
``vmap`` runs all classes / units at once.

References:
  Erhan, Bengio, Courville & Vincent, "Visualizing higher-layer features of a
  deep network", Tech. rep. 1341, U. Montreal (2009).
  Simonyan, Vedaldi & Zisserman, "Deep inside convolutional networks" (2014): L2 prior.
  Mahendran & Vedaldi, "Understanding deep image representations by
  inverting them", CVPR (2015): total variation.
  Montavon, Samek & Mueller, "Methods for interpreting and understanding deep
  neural networks", Digital Signal Processing (2018): Gaussian density prior.
  Mordvintsev, Olah & Tyka, "Inceptionism" (2015); Olah, Mordvintsev &
  Schubert, "Feature visualization", Distill (2017): jitter.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.tree_util import Partial

from jdl.nn.core import Layer

OBJECTIVES = ("log_softmax", "logit")
DEFAULT_OPTIMIZER = optax.adam(0.05)


def _l2(weight, x):
    return -weight * jnp.sum(x * x)


def _total_variation(weight, eps, x):
    dy = x[1:, :-1] - x[:-1, :-1]
    dx = x[:-1, 1:] - x[:-1, :-1]
    return -weight * jnp.sum(jnp.sqrt(dy * dy + dx * dx + eps))


def _gaussian(weight, mean, precision, x):
    diff = x.reshape(-1) - mean
    return -0.5 * weight * diff @ precision @ diff


def l2_prior(weight: float) -> Partial:
    """``log p(x) = -weight * ||x||^2`` (up to a constant)."""
    if not weight >= 0:
        raise ValueError(f"l2_prior: expected weight >= 0, got {weight!r}")
    return Partial(_l2, jnp.asarray(weight))


def total_variation_prior(weight: float, eps: float = 1e-6) -> Partial:
    """``log p(x) = -weight * sum_ij sqrt(dy^2 + dx^2 + eps)``, images ``(height, width, channels)``."""
    if not weight >= 0 or not eps > 0:
        raise ValueError(f"total_variation_prior: expected weight >= 0 and eps > 0, got "
                         f"{weight!r}, {eps!r}")
    return Partial(_total_variation, jnp.asarray(weight), jnp.asarray(eps))


def gaussian_prior(data, weight: float = 1.0, shrinkage: float = 0.1) -> Partial:
    """A Gaussian fitted to ``data``: ``log p(x) = -weight/2 (x - mu)^T cov^-1 (x - mu)``.

    The covariance is shrunk towards its mean variance,
    ``(1 - shrinkage) cov + shrinkage * mean(diag cov) * I``
    (Ledoit & Wolf 2004), so constant pixels (digits' borders) keep it invertible.

    Args:
      data: examples ``(n, ...)``; the prior applies to inputs of shape ``data.shape[1:]``.
      weight: scale of the log-density.
      shrinkage: in ``(0, 1]``.
    """
    data = np.asarray(data, np.float64)
    if data.ndim < 2 or data.shape[0] < 2:
        raise ValueError(f"gaussian_prior: expected data (n >= 2, ...), got {data.shape}")
    if not 0 < shrinkage <= 1 or not weight >= 0:
        raise ValueError(f"gaussian_prior: expected shrinkage in (0, 1] and weight >= 0, got "
                         f"{shrinkage!r}, {weight!r}")
    flat = data.reshape(data.shape[0], -1)
    mean = flat.mean(0)
    cov = np.cov(flat, rowvar=False)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    return Partial(_gaussian, jnp.asarray(weight), jnp.asarray(mean), jnp.asarray(precision))


class _Settings(NamedTuple):
    """The static part of a run: one compilation per distinct value (models hash by identity)."""

    model: Layer
    optimizer: optax.GradientTransformation
    objective: str
    jitter: int
    bounds: tuple[float, float] | None
    steps: int
    input_shape: tuple[int, ...]
    init_scale: float


@functools.partial(jax.jit, static_argnums=0)
def _maximize(settings: _Settings, params, state, priors, init, units, keys):
    """All units at once (``vmap``), all steps in one ``lax.scan``."""
    model, optimizer, objective, jitter, bounds, steps, input_shape, init_scale = settings
    dtype = init.dtype

    def score(x, unit):
        logits = model.apply(params, x[None], state=state)[0][0]
        values = jax.nn.log_softmax(logits) if objective == "log_softmax" else logits
        return values[unit]

    def total(x, unit, shift):
        moved = jnp.roll(x, shift, axis=(0, 1)) if jitter else x
        log_prior = sum((p(x) for p in priors), jnp.zeros((), dtype))
        return score(moved, unit) + log_prior

    def run(unit, k):
        k_init, k_jitter = jax.random.split(k)
        x = init + init_scale * jax.random.normal(k_init, input_shape, dtype)

        def step(carry, k_step):
            x, opt_state = carry
            shift = jax.random.randint(k_step, (2,), -jitter, jitter + 1)
            value, grad = jax.value_and_grad(total)(x, unit, shift)
            updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grad), opt_state, x)
            x = optax.apply_updates(x, updates)
            if bounds is not None:
                x = jnp.clip(x, bounds[0], bounds[1])
            return (x, opt_state), value

        (x, _), trace = lax.scan(step, (x, optimizer.init(x)), jax.random.split(k_jitter, steps))
        return x, trace, score(x, unit)

    return jax.vmap(run)(units, keys)


class ActivationMaximum(NamedTuple):
    """Result of :func:`activation_maximization`.

    Attributes:
      inputs: the maximising inputs ``(units, *input_shape)``.
      objective: ``(units, steps)``, the objective (score + log prior) at each step.
      score: ``(units,)``, the final score ``log p(c | x)`` or the unit's value, without the prior.
    """

    inputs: jax.Array
    objective: jax.Array
    score: jax.Array


def activation_maximization(model: Layer, params, units, *, input_shape: Sequence[int],
                            key: jax.Array, steps: int = 256,
                            optimizer: optax.GradientTransformation | None = None,
                            prior: Callable | Sequence[Callable] = (), jitter: int = 0,
                            objective: str = "log_softmax", bounds=None, state=None,
                            init=None, init_scale: float = 0.01) -> ActivationMaximum:
    """``argmax_x score_c(x) + log p(x)`` for every unit ``c`` in ``units`` at once.

    Args:
      model, params: a jdl model with output ``(batch, outputs)`` and its params;
        ``state`` its state if any. For a hidden unit, pass the model cut at that layer.
      units: output indices ``(units,)`` (classes or units).
      input_shape: shape of one input, e.g. ``(64,)`` or ``(8, 8, 1)``.
      key: PRNG key for the initial noise and the jitter.
      steps: optimiser steps.
      optimizer: an optax optimiser (default ``optax.adam(0.05)``); it minimises
        the negated objective.
      prior: a log-prior ``x -> scalar`` (:func:`l2_prior`,
        :func:`total_variation_prior`, :func:`gaussian_prior`) or a sequence
        of them, summed.
      jitter: shift the image by up to this many pixels (uniform in each
        direction, cyclic) before every step; needs ``(height, width, channels)`` inputs.
      objective: ``"log_softmax"`` (``log p(c | x)``, the notes' form) or
        ``"logit"`` (the raw output, e.g. a hidden unit).
      bounds: ``(low, high)`` to clip the input after every step, or None.
      init: starting input ``input_shape`` (default: the Gaussian prior's mean
        if one is given, else zeros) plus noise of scale ``init_scale``.

    Returns:
      An :class:`ActivationMaximum`.

    Raises:
      ValueError: for bad options, or a non-finite objective (diverged).
    """
    if not isinstance(model, Layer):
        raise TypeError(f"activation_maximization: expected a jdl Layer as model, got "
                        f"{type(model).__name__}")
    units = jnp.atleast_1d(jnp.asarray(units))
    input_shape = tuple(int(s) for s in input_shape)
    if units.ndim != 1 or not jnp.issubdtype(units.dtype, jnp.integer):
        raise ValueError(f"activation_maximization: expected integer units (units,), got "
                         f"{units.dtype} {units.shape}")
    if objective not in OBJECTIVES:
        raise ValueError(f"activation_maximization: expected objective in {OBJECTIVES}, got "
                         f"{objective!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"activation_maximization: expected a positive int steps, got {steps!r}")
    if not isinstance(jitter, int) or jitter < 0 or (jitter and len(input_shape) != 3):
        raise ValueError(f"activation_maximization: expected jitter a non-negative int, and "
                         f"images (height, width, channels) to jitter, got jitter={jitter!r} "
                         f"with input_shape {input_shape}")
    priors = tuple(prior) if isinstance(prior, (list, tuple)) else (prior,)
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(params) else float
    out, _ = jax.eval_shape(lambda p, z: model.apply(p, z, state=state),
                            params, jax.ShapeDtypeStruct((1, *input_shape), dtype))
    if len(out.shape) != 2:
        raise ValueError(f"activation_maximization: expected model output (batch, outputs), "
                         f"got {out.shape}")
    if init is None:
        gauss = [p for p in priors if isinstance(p, Partial) and p.func is _gaussian]
        init = gauss[0].args[1].reshape(input_shape) if gauss else jnp.zeros(input_shape, dtype)
    init = jnp.broadcast_to(jnp.asarray(init, dtype), input_shape)

    keys = jax.random.split(key, units.shape[0])
    settings = _Settings(model, optimizer, objective, jitter, None if bounds is None else
                         tuple(float(b) for b in bounds), steps, input_shape, float(init_scale))
    inputs, trace, final = _maximize(settings, params, state, priors, init, units, keys)
    if not isinstance(trace, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(trace))):
        raise ValueError("activation_maximization: the objective became non-finite (diverged); "
                         "lower the learning rate or add a prior")
    return ActivationMaximum(inputs, trace, final)


def save_image_grid(images, path: str, *, ncols: int | None = None,
                    titles: Sequence[str] | None = None, cmap: str = "gray",
                    symmetric: bool = False) -> None:
    """Write images ``(n, height, width)`` or ``(n, height, width, 1 | 3)`` as one PNG grid.

    Args:
      images: the images; each is scaled to its own range.
      path: output file (``.png``).
      ncols: columns (default ``min(n, 10)``).
      titles: one title per image.
      cmap: matplotlib colormap for one-channel images.
      symmetric: scale each image to ``[-max|x|, max|x|]`` (for signed heatmaps,
        e.g. ``cmap="bwr"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images, np.float64)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"save_image_grid: expected images (n, height, width[, 1 or 3]), got "
                         f"{images.shape}")
    n = images.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"save_image_grid: expected {n} titles, got {len(titles)}")
    ncols = min(n, 10) if ncols is None else ncols
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.5 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if symmetric:
            limit = max(np.abs(img).max(), 1e-12)
            ax.imshow(img, cmap=cmap, vmin=-limit, vmax=limit)
        else:
            lo, hi = img.min(), img.max()
            shown = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            ax.imshow(shown, cmap=cmap if shown.ndim == 2 else None, vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
