"""Schedules: values, use inside a compiled optimiser, and the Robbins–Monro helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import train as jt


def test_schedule_values():
    t = np.arange(0, 50)
    np.testing.assert_allclose(jax.vmap(jt.robbins_monro(0.5, 2.0, 0.75))(t),
                               0.5 / (2.0 + t) ** 0.75, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(jt.step_decay(1.0, 0.5, 10))(t), 0.5 ** (t // 10),
                               rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(jt.exponential(1.0, 0.9))(t), 0.9**t, rtol=1e-12)
    cos = jt.cosine(1.0, 20, 0.1)
    np.testing.assert_allclose([cos(0), cos(10), cos(20), cos(40)], [1.0, 0.55, 0.1, 0.1],
                               rtol=1e-12)
    warm = jt.warmup(jt.constant(0.2), 4, init_value=0.0)
    np.testing.assert_allclose([warm(s) for s in range(7)], [0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2],
                               atol=1e-12)
    decayed = jt.warmup(jt.exponential(1.0, 0.5), 2)
    np.testing.assert_allclose([decayed(s) for s in range(5)], [0, 0.5, 1.0, 0.5, 0.25],
                               atol=1e-12)


def test_schedule_drives_a_compiled_optimizer():
    """An optax-compatible schedule: SGD on f(w) = w²/2 multiplies w by (1 - lr_t)."""
    schedule = jt.robbins_monro(0.5, 1.0)
    tx = jt.sgd(schedule)
    step = jax.jit(jt.train_step(lambda w, _: 0.5 * jnp.sum(w**2), tx))
    w, state = jnp.ones(1), tx.init(jnp.ones(1))
    for _ in range(6):
        w, state, _ = step(w, state, jnp.zeros(1))
    np.testing.assert_allclose(w, np.prod([1 - 0.5 / (1 + t) for t in range(6)]), rtol=1e-12)


@pytest.mark.parametrize("schedule,diverges,square_converges", [
    (jt.robbins_monro(0.1, 10.0), True, True),
    (jt.robbins_monro(0.1, 1.0, power=0.7), True, True),
    (jt.robbins_monro(0.1, 1.0, power=0.5), True, False),
    (jt.robbins_monro(0.1, 1.0, power=1.5), False, True),
    (jt.constant(0.01), True, False),
    (jt.step_decay(0.1, 0.5, 100), False, True),
    (jt.step_decay(0.1, 1.0, 100), True, False),
    (jt.exponential(0.1, 0.999), False, True),
    (jt.cosine(0.1, 1000), False, True),
    (jt.cosine(0.1, 1000, final_value=0.001), True, False),
    (jt.warmup(jt.robbins_monro(0.1, 10.0), 50), True, True),
    (jt.warmup(jt.cosine(0.1, 100), 10), False, True),
])
def test_analytic_summability(schedule, diverges, square_converges):
    result = jt.robbins_monro_conditions(schedule)
    assert result.method == "analytic"
    assert (result.sum_diverges, result.square_sum_converges) == (diverges, square_converges)
    assert result.satisfied == (diverges and square_converges)


@pytest.mark.parametrize("fn,satisfied", [
    (lambda t: 0.1 / (10.0 + t), None),             # p = 1 exactly: the boundary
    (lambda t: 0.1 / (1.0 + t) ** 0.75, True),
    (lambda t: 0.1 / (1.0 + t) ** 0.3, False),      # Σ lr² diverges
    (lambda t: 0.1 / (1.0 + t) ** 1.5, False),      # Σ lr converges
    (lambda t: 0.01, False),                        # constant
    (lambda t: 0.1 * 0.999**t, False),              # faster than any power
    (lambda t: 1e-3 * (1.5 + np.cos(t / 1000.0)), None),            # cyclic: inconclusive
    (lambda t: 0.1 / ((t + 2.0) * np.log(t + 2.0)), None),         # p -> 1 from above
    (lambda t: 0.1 / (1.0 + t) ** 0.52, None),      # within tol of the 1/2 boundary
])
def test_numerical_summability_is_honest(fn, satisfied):
    result = jt.robbins_monro_conditions(fn)
    assert result.method == "numerical"
    assert result.satisfied is satisfied, result.reason


def test_numerical_check_at_the_harmonic_boundary_says_what_it_knows():
    result = jt.robbins_monro_conditions(lambda t: 0.1 / (10.0 + t))
    assert result.sum_diverges is None and result.square_sum_converges is True
    assert "robbins_monro" in result.reason


def test_numerical_check_agrees_with_analytic_on_the_families():
    for schedule in (jt.robbins_monro(0.2, 5.0, 0.8), jt.robbins_monro(0.2, 5.0, 1.3),
                     jt.constant(0.1)):
        analytic = jt.robbins_monro_conditions(schedule)
        numerical = jt.robbins_monro_conditions(lambda t, s=schedule: float(s(t)))
        assert numerical.satisfied == analytic.satisfied


@pytest.mark.parametrize("make,error", [
    (lambda: jt.robbins_monro(0.1, 0.0), ValueError),
    (lambda: jt.step_decay(0.1, 1.5, 10), ValueError),
    (lambda: jt.step_decay(0.1, 0.5, 0), ValueError),
    (lambda: jt.exponential(0.1, 1.2), ValueError),
    (lambda: jt.cosine(0.1, 0), ValueError),
    (lambda: jt.warmup(0.1, 5), TypeError),
    (lambda: jt.robbins_monro_conditions(0.1), TypeError),
    (lambda: jt.robbins_monro_conditions(lambda t: 1.0, horizon=100), ValueError),
])
def test_bad_input(make, error):
    with pytest.raises(error):
        make()
