"""Adversarial examples: FGSM and PGD in L∞ and L2 balls, adversarial training, robust accuracy.

The notes' defences against adversarial attacks include "generate
adversarial attacks and make your model predict them correctly";
:func:`adversarial_loss` is that objective for :func:`jdl.train.fit`, built on
the attacks here.

Every attack takes a loss in the contract form ``loss_fn(params, (x, y)) ->
scalar`` (the mean over the batch, as in :mod:`jdl.train`) and returns
adversarial inputs of the shape of ``x``. The loss is evaluated one example
at a time (``vmap`` over batches of one), so each example's perturbation
depends only on that example, whatever the loss's reduction. Attacks are
compiled once per ``(loss_fn, norm, bounds, num_steps)``: ``epsilon`` and
``step_size`` are traced, so sweeping them does not recompile; pass the same
``loss_fn`` object each call (a fresh ``lambda`` compiles again).

Inputs must lie in ``bounds`` (digits: ``[0, 1]``); every iterate is
projected on the ε-ball around ``x`` and then clipped to ``bounds``, which
keeps it in the ball (clipping to a box that holds ``x`` never moves a point
away from ``x``).

Example:
    >>> x_adv = pgd(loss_fn, params, (x, y), epsilon=0.1, num_steps=20)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "NORMS", "RobustAccuracy", "adversarial_loss", "classifier_loss", "fgsm", "pgd",
    "per_example_loss", "project", "robust_accuracy",
]

NORMS = ("linf", "l2")


def _check_epsilon(fn_name: str, epsilon) -> None:
    try:
        bad = float(epsilon) < 0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # traced inside a jitted caller
    if bad:
        raise ValueError(f"{fn_name}: expected epsilon >= 0, got {epsilon!r}")


def _check_options(fn_name: str, norm: str, bounds) -> tuple[float, float] | None:
    if norm not in NORMS:
        raise ValueError(f"{fn_name}: expected norm to be one of {NORMS}, got {norm!r}")
    if bounds is None:
        return None
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
        raise ValueError(f"{fn_name}: expected bounds (low, high) with low < high, or None, "
                         f"got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def _split_batch(fn_name: str, batch) -> tuple[jax.Array, jax.Array]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"{fn_name}: expected batch (x, y), got {type(batch).__name__}")
    x, y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{fn_name}: expected x and y with the same leading batch axis, got "
                         f"shapes {x.shape} and {y.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn_name}: expected float inputs x, got dtype {x.dtype}")
    return x, y


def per_example_loss(loss_fn: Callable, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """``loss_fn`` on each example alone: shape ``(batch,)``.

    Args:
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``.
      params: its params.
      x: inputs ``(batch, ...)``.
      y: targets ``(batch, ...)``.
    """
    return jax.vmap(lambda xi, yi: loss_fn(params, (xi[None], yi[None])))(x, y)


def _sum_over_features(a: jax.Array) -> jax.Array:
    """Sum over every axis but the leading batch axis, keeping dims for broadcasting."""
    return jnp.sum(a, axis=tuple(range(1, a.ndim)), keepdims=True)


def _safe_l2(a: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.maximum(_sum_over_features(jnp.square(a)), jnp.finfo(a.dtype).tiny))


def _direction(grad: jax.Array, norm: str) -> jax.Array:
    """The steepest-ascent unit step for ``norm``: ``sign(g)`` or ``g / ||g||_2`` per example."""
    if norm == "linf":
        return jnp.sign(grad)
    return grad / _safe_l2(grad)


def project(x_adv: jax.Array, x: jax.Array, epsilon, norm: str = "linf",
            bounds: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """Project ``x_adv`` on the ε-ball around ``x`` (per example), then clip it to ``bounds``.

    Args:
      x_adv: perturbed inputs ``(batch, ...)``.
      x: clean inputs ``(batch, ...)``, inside ``bounds``.
      epsilon: ball radius ``>= 0``.
      norm: ``"linf"`` (clip each coordinate of ``x_adv - x`` to ``[-ε, ε]``)
        or ``"l2"`` (scale ``x_adv - x`` down to length ``ε`` if longer).
      bounds: the valid input box ``(low, high)``, or None.

    Returns:
      Inputs of the shape and dtype of ``x``.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = jnp.clip(delta, -epsilon, epsilon)
    else:
        delta = delta * jnp.minimum(1.0, epsilon / _safe_l2(delta))
    out = x + delta
    if bounds is not None:
        out = jnp.clip(out, bounds[0], bounds[1])
    return out.astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("loss_fn", "norm", "bounds"))
def _fgsm(loss_fn, params, x, y, epsilon, norm, bounds):
    grad = jax.grad(lambda x: jnp.sum(per_example_loss(loss_fn, params, x, y)))(x)
    return project(x + epsilon * _direction(grad, norm), x, epsilon, norm, bounds)


def fgsm(loss_fn: Callable, params: Any, batch: tuple, *, epsilon: float, norm: str = "linf",
         bounds: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
    """The fast gradient sign method: one step of length ε along the loss gradient.

    ``x_adv = x + ε sign(∇_x L)`` for ``"linf"`` (Goodfellow, Shlens & Szegedy,
    2015) and ``x_adv = x + ε ∇_x L / ||∇_x L||_2`` for ``"l2"`` (the fast
    gradient method), then clipped to ``bounds``.

    Args:
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``.
      params: its params.
      batch: ``(x, y)`` with ``x`` of shape ``(batch, ...)`` inside ``bounds``.
      epsilon: radius of the ball, ``>= 0``.
      norm: ``"linf"`` or ``"l2"``.
      bounds: the valid input box ``(low, high)``, or None for no clipping.

    Returns:
      ``x_adv`` of the shape and dtype of ``x``.

    Raises:
      ValueError: for ``epsilon < 0``, an unknown ``norm``, bad ``bounds`` or
        a batch that is not ``(x, y)``.
    """
    x, y = _split_batch("fgsm", batch)
    _check_epsilon("fgsm", epsilon)
    bounds = _check_options("fgsm", norm, bounds)
    return _fgsm(loss_fn, params, x, y, jnp.asarray(epsilon, x.dtype), norm, bounds)


def _random_start(key, x, epsilon, norm):
    """A uniform draw from the ε-ball around ``x``."""
    if norm == "linf":
        return x + jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon)
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, x.shape, x.dtype)
    direction = direction / _safe_l2(direction)
    dim = x[0].size
    radius = epsilon * jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1),
                                          x.dtype) ** (1.0 / dim)
    return x + radius * direction


@functools.partial(jax.jit, static_argnames=("loss_fn", "norm", "bounds", "num_steps",
                                             "random_start"))
def _pgd(loss_fn, params, x, y, epsilon, step_size, key, norm, bounds, num_steps, random_start):
    def losses_and_grad(x_cur):
        losses, pullback = jax.vjp(lambda x: per_example_loss(loss_fn, params, x, y), x_cur)
        return losses, pullback(jnp.ones_like(losses))[0]

    def keep_best(best, best_loss, x_cur, losses):
        better = losses > best_loss
        mask = better.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x_cur, best), jnp.where(better, losses, best_loss)

    start = x
    if random_start:
        start = project(_random_start(key, x, epsilon, norm), x, epsilon, norm, bounds)

    def body(_, carry):
        x_cur, best, best_loss = carry
        losses, grad = losses_and_grad(x_cur)
        best, best_loss = keep_best(best, best_loss, x_cur, losses)
        x_next = project(x_cur + step_size * _direction(grad, norm), x, epsilon, norm, bounds)
        return x_next, best, best_loss

    loss_dtype = jax.eval_shape(lambda: per_example_loss(loss_fn, params, x, y)).dtype
    init = (start, start, jnp.full((x.shape[0],), -jnp.inf, loss_dtype))
    x_last, best, best_loss = jax.lax.fori_loop(0, num_steps, body, init)
    best, _ = keep_best(best, best_loss, x_last, per_example_loss(loss_fn, params, x_last, y))
    return best


def pgd(loss_fn: Callable, params: Any, batch: tuple, *, epsilon: float, num_steps: int = 10,
        step_size: float | None = None, norm: str = "linf",
        bounds: tuple[float, float] | None = (0.0, 1.0), key: jax.Array | None = None
        ) -> jax.Array:
    """Projected gradient descent on the negative loss (Madry et al., 2018), in one ``fori_loop``.

    Each step moves ``step_size`` along the steepest-ascent direction of
    ``norm`` (``sign(∇)`` or ``∇ / ||∇||_2``), projects on the ε-ball around
    ``x`` and clips to ``bounds`` (:func:`project`). Each example returns the
    iterate with the highest loss seen (the start included), so more steps
    never give a weaker attack.

    Args:
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``.
      params: its params.
      batch: ``(x, y)`` with ``x`` of shape ``(batch, ...)`` inside ``bounds``.
      epsilon: radius of the ball, ``>= 0``.
      num_steps: gradient steps, ``>= 1``.
      step_size: length of each step; ``2.5 ε / num_steps`` if None (Madry et al.).
      norm: ``"linf"`` or ``"l2"``.
      bounds: the valid input box ``(low, high)``, or None.
      key: PRNG key for a uniform random start in the ball; None starts at ``x``.

    Returns:
      ``x_adv`` of the shape and dtype of ``x``.

    Raises:
      ValueError: for ``epsilon < 0``, ``num_steps < 1``, ``step_size <= 0``,
        an unknown ``norm``, bad ``bounds`` or a batch that is not ``(x, y)``.
    """
    x, y = _split_batch("pgd", batch)
    _check_epsilon("pgd", epsilon)
    bounds = _check_options("pgd", norm, bounds)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"pgd: expected an int num_steps >= 1, got {num_steps!r}")
    if step_size is None:
        step_size = 2.5 * jnp.asarray(epsilon) / num_steps
    else:
        try:
            if float(step_size) <= 0:
                raise ValueError(f"pgd: expected step_size > 0, got {step_size!r}")
        except (TypeError, jax.errors.ConcretizationTypeError):
            pass
    random_start = key is not None
    key = jax.random.key(0) if key is None else key
    return _pgd(loss_fn, params, x, y, jnp.asarray(epsilon, x.dtype),
                jnp.asarray(step_size, x.dtype), key, norm, bounds, num_steps, random_start)


def _attack(fn_name: str, attack: str, loss_fn, params, batch, *, epsilon, norm, bounds,
            num_steps, step_size, key):
    if attack == "fgsm":
        return fgsm(loss_fn, params, batch, epsilon=epsilon, norm=norm, bounds=bounds)
    if attack == "pgd":
        return pgd(loss_fn, params, batch, epsilon=epsilon, num_steps=num_steps,
                   step_size=step_size, norm=norm, bounds=bounds, key=key)
    raise ValueError(f"{fn_name}: expected attack 'fgsm' or 'pgd', got {attack!r}")


def adversarial_loss(loss_fn: Callable, *, epsilon: float, attack: str = "fgsm",
                     norm: str = "linf", weight: float = 0.5, num_steps: int = 10,
                     step_size: float | None = None,
                     bounds: tuple[float, float] | None = (0.0, 1.0)) -> Callable:
    """The adversarial-training objective ``(1 - w) L(x, y) + w L(x_adv, y)``, a plain loss.

    ``x_adv`` is the attack on the current params, held fixed
    (``stop_gradient``) when differentiating in the params: by Danskin's
    theorem that is the gradient of the inner maximum. ``weight=0.5`` with
    FGSM is Goodfellow et al. (2015); ``weight=1`` with PGD is Madry et al.
    (2018) (here PGD starts at ``x``: a plain loss gets no key).

    Args:
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``.
      epsilon: attack radius ``>= 0``.
      attack: ``"fgsm"`` or ``"pgd"``.
      norm: ``"linf"`` or ``"l2"``.
      weight: weight ``w`` of the adversarial term, in ``[0, 1]``.
      num_steps, step_size: PGD's, see :func:`pgd`.
      bounds: the valid input box, or None.

    Returns:
      ``loss(params, (x, y)) -> scalar`` for :func:`jdl.train.fit`.

    Raises:
      ValueError: for ``epsilon < 0``, ``weight`` outside ``[0, 1]``, an
        unknown ``attack`` or ``norm``.
    """
    fn_name = "adversarial_loss"
    _check_epsilon(fn_name, epsilon)
    bounds = _check_options(fn_name, norm, bounds)
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"{fn_name}: expected attack 'fgsm' or 'pgd', got {attack!r}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{fn_name}: expected weight in [0, 1], got {weight!r}")

    def loss(params, batch):
        x, y = batch
        x_adv = jax.lax.stop_gradient(_attack(
            fn_name, attack, loss_fn, jax.lax.stop_gradient(params), (x, y), epsilon=epsilon,
            norm=norm, bounds=bounds, num_steps=num_steps, step_size=step_size, key=None))
        adversarial = loss_fn(params, (x_adv, y))
        if weight == 1.0:
            return adversarial
        return (1.0 - weight) * loss_fn(params, (x, y)) + weight * adversarial

    return loss


@functools.lru_cache(maxsize=64)
def classifier_loss(apply_fn: Callable) -> Callable:
    """Mean softmax cross-entropy of ``apply_fn(params, x) -> logits`` against integer labels.

    Cached per ``apply_fn``, so attacks built on it compile once.

    Args:
      apply_fn: ``apply_fn(params, x) -> (batch, classes)`` logits, e.g.
        ``lambda p, x: model.apply(p, x)[0]`` for a jdl model.

    Returns:
      ``loss(params, (x, y)) -> scalar`` with ``y`` of shape ``(batch,)``.
    """
    def loss(params, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()

    return loss


class RobustAccuracy(NamedTuple):
    """What :func:`robust_accuracy` returns.

    Attributes:
      clean: accuracy on the clean inputs.
      robust: fraction of examples classified correctly both clean and attacked.
      x_adv: the adversarial inputs, shape of ``x``.
    """

    clean: jax.Array
    robust: jax.Array
    x_adv: jax.Array


def robust_accuracy(apply_fn: Callable, params: Any, batch: tuple, *, epsilon: float,
                    attack: str = "pgd", norm: str = "linf", num_steps: int = 20,
                    step_size: float | None = None,
                    bounds: tuple[float, float] | None = (0.0, 1.0),
                    key: jax.Array | None = None) -> RobustAccuracy:
    """Accuracy under attack: the cross-entropy is attacked, the argmax is scored.

    Args:
      apply_fn: ``apply_fn(params, x) -> (batch, classes)`` logits; pass the
        same function object each call to reuse the compilation.
      params: its params.
      batch: ``(x, y)`` with integer labels ``y`` of shape ``(batch,)``.
      epsilon: attack radius ``>= 0``.
      attack: ``"fgsm"`` or ``"pgd"``.
      norm, num_steps, step_size, bounds, key: as for :func:`pgd`.

    Returns:
      A :class:`RobustAccuracy` ``(clean, robust, x_adv)``.

    Raises:
      ValueError: for ``epsilon < 0`` and the other errors of the attacks.
    """
    fn_name = "robust_accuracy"
    x, y = _split_batch(fn_name, batch)
    _check_epsilon(fn_name, epsilon)
    x_adv = _attack(fn_name, attack, classifier_loss(apply_fn), params, (x, y),
                    epsilon=epsilon, norm=norm, bounds=bounds, num_steps=num_steps,
                    step_size=step_size, key=key)
    clean = jnp.argmax(apply_fn(params, x), axis=-1) == y
    attacked = jnp.argmax(apply_fn(params, x_adv), axis=-1) == y
    return RobustAccuracy(jnp.mean(clean), jnp.mean(clean & attacked), x_adv)
