"""Learning-rate schedules and the Robbins–Monro test ``Σ lr = ∞, Σ lr² < ∞``.

The notes: "learning rate decay should converge to 0 but its series should
converge to infinity". Stochastic approximation (Robbins & Monro, 1951)
converges under ``Σ_t lr_t = ∞`` (the steps can reach any point) and
``Σ_t lr_t² < ∞`` (the gradient noise they add has finite variance). Among
the families here only ``a / (b + t)^p`` with ``1/2 < p <= 1`` meets both;
step, exponential and cosine decay make ``Σ lr`` finite (or, with a floor,
``Σ lr²`` infinite).

Each constructor returns a :class:`Schedule`, an optax-compatible callable
``step -> learning rate`` that also records its family and parameters, so
:func:`robbins_monro_conditions` can answer analytically; any other callable
gets a numerical check that answers ``None`` (inconclusive) when the tail
does not look like a clean power law.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax


class Schedule(NamedTuple):
    """A learning-rate schedule ``lr(step)`` that knows its family.

    Attributes:
      fn: ``fn(step) -> lr`` for an integer step (scalar array or int).
      family: ``"constant"``, ``"robbins_monro"``, ``"step"``,
        ``"exponential"``, ``"cosine"`` or ``"warmup"``.
      config: the constructor's arguments (``"schedule"`` holds the inner
        :class:`Schedule` of a warm-up).
    """

    fn: Callable[[Any], Any]
    family: str
    config: dict

    def __call__(self, step):
        """The learning rate at ``step`` (0-based)."""
        return self.fn(step)


def _check_positive(fn_name: str, **values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{fn_name}: expected {name} > 0, got {value!r}")


def constant(value: float) -> Schedule:
    """``lr_t = value``: ``Σ lr²`` diverges, so not Robbins–Monro."""
    _check_positive("constant", value=value)
    return Schedule(optax.constant_schedule(value), "constant", {"value": value})


def robbins_monro(a: float, b: float = 1.0, power: float = 1.0) -> Schedule:
    """``lr_t = a / (b + t)^power`` (Robbins & Monro, 1951).

    Meets ``Σ lr = ∞`` and ``Σ lr² < ∞`` exactly when ``1/2 < power <= 1``.

    Args:
      a: scale, ``> 0``.
      b: offset, ``> 0`` (``lr_0 = a / b^power``).
      power: decay exponent, ``> 0``.
    """
    _check_positive("robbins_monro", a=a, b=b, power=power)

    def fn(step):
        return a / (b + jnp.asarray(step, jnp.result_type(float))) ** power

    return Schedule(fn, "robbins_monro", {"a": a, "b": b, "power": power})


def step_decay(init_value: float, factor: float, every: int) -> Schedule:
    """``lr_t = init_value * factor^floor(t / every)`` (piecewise constant).

    Args:
      init_value: the first learning rate, ``> 0``.
      factor: multiplier per stage, ``0 < factor <= 1``.
      every: steps per stage, ``>= 1``.
    """
    _check_positive("step_decay", init_value=init_value, factor=factor)
    if factor > 1 or not isinstance(every, int) or every < 1:
        raise ValueError(
            f"step_decay: expected 0 < factor <= 1 and an int every >= 1, got "
            f"factor={factor!r}, every={every!r}")
    fn = optax.exponential_decay(init_value, every, factor, staircase=True)
    return Schedule(fn, "step", {"init_value": init_value, "factor": factor, "every": every})


def exponential(init_value: float, rate: float) -> Schedule:
    """``lr_t = init_value * rate^t`` with ``0 < rate <= 1``."""
    _check_positive("exponential", init_value=init_value, rate=rate)
    if rate > 1:
        raise ValueError(f"exponential: expected 0 < rate <= 1, got {rate!r}")
    fn = optax.exponential_decay(init_value, 1, rate)
    return Schedule(fn, "exponential", {"init_value": init_value, "rate": rate})


def cosine(init_value: float, decay_steps: int, final_value: float = 0.0) -> Schedule:
    """Cosine decay from ``init_value`` to ``final_value`` over ``decay_steps``, then flat.

    ``lr_t = final + (init - final) * (1 + cos(pi * min(t, T) / T)) / 2``
    (Loshchilov & Hutter, SGDR, 2017, without restarts).
    """
    _check_positive("cosine", init_value=init_value)
    if not isinstance(decay_steps, int) or decay_steps < 1 or not 0 <= final_value <= init_value:
        raise ValueError(
            f"cosine: expected an int decay_steps >= 1 and 0 <= final_value <= init_value, got "
            f"decay_steps={decay_steps!r}, final_value={final_value!r}")
    fn = optax.cosine_decay_schedule(init_value, decay_steps, alpha=final_value / init_value)
    return Schedule(fn, "cosine", {"init_value": init_value, "decay_steps": decay_steps,
                                   "final_value": final_value})


def warmup(schedule: Schedule | Callable, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Linear warm-up from ``init_value`` to ``schedule(0)`` over ``warmup_steps``, then ``schedule``.

    After the warm-up, step ``t`` uses ``schedule(t - warmup_steps)`` (Goyal et
    al., 2017). A finite warm-up does not change the Robbins–Monro verdict.
    """
    if not callable(schedule):
        raise TypeError(f"warmup: expected a callable schedule, got {type(schedule).__name__}")
    if not isinstance(warmup_steps, int) or warmup_steps < 1 or init_value < 0:
        raise ValueError(
            f"warmup: expected an int warmup_steps >= 1 and init_value >= 0, got "
            f"warmup_steps={warmup_steps!r}, init_value={init_value!r}")
    peak = float(schedule(0))
    ramp = optax.linear_schedule(init_value, peak, warmup_steps)
    fn = optax.join_schedules([ramp, schedule], [warmup_steps])
    return Schedule(fn, "warmup", {"schedule": schedule, "warmup_steps": warmup_steps,
                                   "init_value": init_value})


class Summability(NamedTuple):
    """Whether a schedule meets the Robbins–Monro conditions.

    Attributes:
      sum_diverges: ``Σ lr = ∞``; ``None`` when the check is inconclusive.
      square_sum_converges: ``Σ lr² < ∞``; ``None`` when inconclusive.
      satisfied: both hold (``False`` if either fails, ``None`` otherwise).
      method: ``"analytic"`` (from the family) or ``"numerical"`` (from the tail).
      reason: one sentence saying why.
    """

    sum_diverges: bool | None
    square_sum_converges: bool | None
    satisfied: bool | None
    method: str
    reason: str


def _verdict(diverges, square_converges, method, reason) -> Summability:
    if diverges is False or square_converges is False:
        satisfied = False
    elif diverges is None or square_converges is None:
        satisfied = None
    else:
        satisfied = True
    return Summability(diverges, square_converges, satisfied, method, reason)


def _analytic(schedule: Schedule) -> Summability:
    family, cfg = schedule.family, schedule.config
    if family == "warmup":
        inner = robbins_monro_conditions(cfg["schedule"])
        return inner._replace(reason=f"a finite warm-up leaves the tail: {inner.reason}")
    if family == "constant":
        return _verdict(True, False, "analytic", "a constant rate: Σ lr and Σ lr² both diverge")
    if family == "robbins_monro":
        p = cfg["power"]
        return _verdict(p <= 1, p > 0.5, "analytic",
                        f"lr ~ t^-{p}: Σ lr diverges iff p <= 1, Σ lr² converges iff p > 1/2")
    if family == "step" and cfg["factor"] == 1 or family == "exponential" and cfg["rate"] == 1:
        return _verdict(True, False, "analytic", "factor 1 is a constant rate: Σ lr² diverges")
    if family in ("step", "exponential"):
        return _verdict(False, True, "analytic", "geometric decay: Σ lr is finite")
    if family == "cosine":
        if cfg["final_value"] > 0:
            return _verdict(True, False, "analytic",
                            "cosine decay to a floor > 0 is constant after decay_steps: Σ lr² = ∞")
        return _verdict(False, True, "analytic",
                        "cosine decay to 0 stops after decay_steps: Σ lr is finite")
    raise ValueError(f"robbins_monro_conditions: unknown schedule family {family!r}")


def _numerical(fn: Callable, horizon: int, tol: float) -> Summability:
    decades = int(math.log10(horizon))
    if decades < 4:
        raise ValueError(
            f"robbins_monro_conditions: expected horizon >= 1e4 for a numerical check, "
            f"got {horizon}")
    t = np.logspace(2, decades, 4 * (decades - 2) + 1).round().astype(np.int64)
    lr = np.asarray([float(fn(int(s))) for s in t], np.float64)
    if not np.all(np.isfinite(lr)) or np.any(lr < 0):
        return _verdict(None, None, "numerical",
                        "the schedule is non-finite or negative on the tail: inconclusive")
    if np.all(lr[-4:] == 0):
        return _verdict(False, True, "numerical",
                        f"lr is exactly 0 from t = {t[-4]} on (within the horizon {horizon})")
    if np.any(lr == 0):
        return _verdict(None, None, "numerical",
                        "lr touches 0 and comes back: inconclusive")
    # Local power-law exponents p_k = -d log lr / d log t, one per decade.
    log_t, log_lr = np.log(t), np.log(lr)
    slopes = -(log_lr[4::4] - log_lr[:-4:4]) / (log_t[4::4] - log_t[:-4:4])
    p = slopes[-1]
    if np.ptp(slopes[-2:]) > tol:
        if slopes[-1] > slopes[-2] + tol and slopes[-1] > 2:
            return _verdict(False, True, "numerical",
                            f"decay faster than any power (local exponents {slopes.round(2)}): "
                            "Σ lr is finite")
        return _verdict(None, None, "numerical",
                        f"the tail is not a clean power law (local exponents {slopes.round(2)}): "
                        "inconclusive")
    diverges = True if p < 1 - tol else False if p > 1 + tol else None
    square_converges = True if p > 0.5 + tol else False if p < 0.5 - tol else None
    reason = f"tail lr ~ t^-{p:.3f} over the last two decades up to t = {t[-1]}"
    if diverges is None:
        reason += ("; within tol of p = 1 a finite probe cannot tell 1/t (Σ lr = ∞) from "
                   "1/t^(1+ε) or 1/(t log t): use jdl.train.robbins_monro for an analytic answer")
    return _verdict(diverges, square_converges, "numerical", reason)


def robbins_monro_conditions(schedule: Schedule | Callable, *, horizon: int = 10**7,
                             tol: float = 0.1) -> Summability:
    """Does ``schedule`` meet ``Σ lr = ∞`` and ``Σ lr² < ∞``?

    A :class:`Schedule` from this module is decided analytically from its
    family. Any other callable is probed on a log grid of steps up to
    ``horizon``: when the local power-law exponent ``p`` of the tail is stable
    over the last two decades, ``Σ lr`` diverges iff ``p <= 1`` and ``Σ lr²``
    converges iff ``p > 1/2``; within ``tol`` of a boundary (the harmonic
    ``1/t`` itself sits on one), or for a tail that is not a power law
    (cycles, plateaus), the answer is ``None``. A finite
    probe cannot prove a property of an infinite sum: numerical answers are
    evidence, and say so in ``method``.

    Args:
      schedule: a :class:`Schedule` or any ``step -> lr`` callable.
      horizon: last step probed numerically (``>= 1e4``).
      tol: margin on the exponent for a numerical decision.

    Returns:
      A :class:`Summability`.

    Example:
      >>> robbins_monro_conditions(robbins_monro(0.1, 10.0)).satisfied
      True
      >>> robbins_monro_conditions(exponential(0.1, 0.99)).satisfied
      False
    """
    if isinstance(schedule, Schedule):
        return _analytic(schedule)
    if not callable(schedule):
        raise TypeError(
            f"robbins_monro_conditions: expected a schedule callable, got {type(schedule).__name__}")
    return _numerical(schedule, horizon, tol)
