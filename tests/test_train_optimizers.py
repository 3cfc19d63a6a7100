"""The notes' optimisers: update rules by hand, rates on quadratics, Adam's bias claim."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import train as jt
from jdl.hessian import learning_rates

B1, B2, EPS, LR, BETA, WD = 0.9, 0.999, 1e-8, 0.1, 0.8, 0.01


def _quadratic(eigenvalues, seed=0):
    """A = Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    d = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q @ np.diag(eigenvalues) @ q.T


def _hand_rule(name, w0, grads):
    """The update rules of jdl.train.optimizers' docstring, in plain numpy."""
    w, m, v, s = w0.copy(), np.zeros_like(w0), np.zeros_like(w0), np.zeros_like(w0)
    acc = np.full_like(w0, 0.1)
    out = []
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            w = w - LR * g
        elif name == "sgd_wd":
            w = w - LR * (g + WD * w)
        elif name == "heavy_ball":
            m = BETA * m + g
            w = w - LR * m
        elif name == "nesterov":
            m = BETA * m + g
            w = w - LR * (BETA * m + g)
        elif name == "rmsprop":
            s = 0.9 * s + 0.1 * g * g
            w = w - LR * g / np.sqrt(s + EPS)
        elif name == "adagrad":
            acc = acc + g * g
            w = w - LR * g / np.sqrt(acc + 1e-7)
        elif name in ("adam", "adam_uncorrected", "adamw"):
            m = B1 * m + (1 - B1) * g
            v = B2 * v + (1 - B2) * g * g
            if name == "adam_uncorrected":
                step = m / (np.sqrt(v) + EPS)
            else:
                step = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
            if name == "adamw":
                step = step + WD * w
            w = w - LR * step
        out.append(w.copy())
    return out


OPTIMIZERS = {
    "sgd": lambda: jt.sgd(LR),
    "sgd_wd": lambda: jt.sgd(LR, weight_decay=WD),
    "heavy_ball": lambda: jt.heavy_ball(LR, BETA),
    "nesterov": lambda: jt.nesterov(LR, BETA),
    "rmsprop": lambda: jt.rmsprop(LR, decay=0.9, eps=EPS),
    "adagrad": lambda: jt.adagrad(LR),
    "adam": lambda: jt.adam(LR, B1, B2, EPS),
    "adam_uncorrected": lambda: jt.adam(LR, B1, B2, EPS, bias_correction=False),
    "adamw": lambda: jt.adamw(LR, B1, B2, EPS, weight_decay=WD),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_update_rule_matches_the_formula(name):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=5)
    grads = [rng.normal(size=5) for _ in range(4)]
    tx = OPTIMIZERS[name]()

    @jax.jit
    def run(w, grads):
        def step(carry, g):
            w, state = carry
            updates, state = tx.update(g, state, w)
            w = optax.apply_updates(w, updates)
            return (w, state), w
        return jax.lax.scan(step, (w, tx.init(w)), grads)[1]

    got = run(jnp.asarray(w0), jnp.asarray(np.stack(grads)))
    np.testing.assert_allclose(np.asarray(got), np.stack(_hand_rule(name, w0, grads)),
                               rtol=1e-12, atol=1e-14)


def _run_quadratic(tx, a, w0, steps):
    """Norms ||w_t|| of ``steps`` optimiser steps on f(w) = ½ wᵀAw (compiled)."""
    step = jax.jit(jt.train_step(lambda w, a: 0.5 * w @ a @ w, tx))

    @jax.jit
    def run(w):
        def body(carry, _):
            w, state = carry
            w, state, loss = step(w, state, a)
            return (w, state), (jnp.linalg.norm(w), loss)
        return jax.lax.scan(body, (w, tx.init(w)), None, length=steps)[1]

    return [np.asarray(v) for v in run(jnp.asarray(w0))]


def test_gradient_descent_contracts_at_the_predicted_rate():
    eigenvalues = np.array([0.5, 1.0, 2.0, 4.0, 10.0])
    a = _quadratic(eigenvalues)
    lam = np.linalg.eigvalsh(a)
    kappa = lam[-1] / lam[0]
    lr = 2 / (lam[0] + lam[-1])
    rate = (kappa - 1) / (kappa + 1)
    predicted = learning_rates(lam[-1], lam[0])
    np.testing.assert_allclose([predicted.optimal_step, predicted.contraction], [lr, rate],
                               rtol=1e-12)
    # Along the extreme eigenvectors the contraction is exactly `rate` per step.
    vecs = np.linalg.eigh(a)[1]
    w0 = vecs[:, 0] + vecs[:, -1]
    exact, _ = _run_quadratic(jt.sgd(lr), a, w0, 60)
    np.testing.assert_allclose(exact, np.linalg.norm(w0) * rate ** np.arange(1, 61), rtol=1e-9)
    # From a random start no step is worse than the predicted rate.
    w_rand = np.random.default_rng(2).normal(size=5)
    norms, _ = _run_quadratic(jt.sgd(lr), a, w_rand, 60)
    ratios = norms[1:] / norms[:-1]
    assert np.all(ratios <= rate * (1 + 1e-12))
    # A step 10% off the optimum, either way, contracts more slowly.
    for factor in (0.9, 1.1):
        slower, _ = _run_quadratic(jt.sgd(factor * lr), a, w0, 60)
        worst = max(abs(1 - factor * lr * lam[0]), abs(1 - factor * lr * lam[-1]))
        assert worst > rate and slower[-1] > exact[-1]


def test_jdl_hessian_learning_rates_predict_these_numbers():
    """jdl.hessian.learning_rates gives the same limits and rates as eigvalsh does here."""
    lam = np.linalg.eigvalsh(_quadratic(np.array([0.1, 0.5, 2.0, 10.0])))
    kappa = lam[-1] / lam[0]
    rates = learning_rates(lam[-1], lam[0], momentum=0.5)
    np.testing.assert_allclose(
        [rates.stable_limit, rates.optimal_step, rates.contraction, rates.heavy_ball_step,
         rates.heavy_ball_momentum, rates.heavy_ball_rate, rates.momentum_stable_limit],
        [2 / lam[-1], 2 / (lam[0] + lam[-1]), (kappa - 1) / (kappa + 1),
         4 / (np.sqrt(lam[-1]) + np.sqrt(lam[0])) ** 2,
         ((np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)) ** 2,
         (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1), 3 / lam[-1]], rtol=1e-12)


@pytest.mark.parametrize("factor,diverges", [(0.98, False), (1.02, True)])
def test_gradient_descent_diverges_above_two_over_lambda_max(factor, diverges):
    a = _quadratic(np.array([0.5, 1.0, 10.0]))
    lam = np.linalg.eigvalsh(a)
    lr = factor * learning_rates(lam[-1]).stable_limit
    w0 = np.linalg.eigh(a)[1][:, -1]
    norms, _ = _run_quadratic(jt.sgd(lr), a, w0, 200)
    # Along v_max the iterate is multiplied by (1 - lr λmax) each step.
    np.testing.assert_allclose(norms, abs(1 - lr * lam[-1]) ** np.arange(1, 201), rtol=1e-8)
    assert (norms[-1] > 1) == diverges


@pytest.mark.parametrize("factor,diverges", [(0.97, False), (1.03, True)])
def test_heavy_ball_diverges_above_its_stable_limit(factor, diverges):
    """With momentum β the stable limit moves from 2/λmax to (2 + 2β)/λmax."""
    a = _quadratic(np.array([0.5, 1.0, 10.0]))
    lam = np.linalg.eigvalsh(a)
    limit = learning_rates(lam[-1], momentum=0.6).momentum_stable_limit
    norms, _ = _run_quadratic(jt.heavy_ball(factor * limit, 0.6), a, np.linalg.eigh(a)[1][:, -1],
                              400)
    assert (norms[-1] > 1) == diverges and (norms[-1] < 1e-2 or diverges)


def test_heavy_ball_reaches_the_polyak_rate():
    a = _quadratic(np.array([0.1, 0.5, 2.0, 10.0]))
    lam = np.linalg.eigvalsh(a)
    kappa = lam[-1] / lam[0]
    predicted = learning_rates(lam[-1], lam[0])
    lr, beta = predicted.heavy_ball_step, predicted.heavy_ball_momentum
    norms, _ = _run_quadratic(jt.heavy_ball(lr, beta), a, np.ones(4), 400)
    measured = (norms[399] / norms[199]) ** (1 / 200)
    polyak = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    np.testing.assert_allclose(predicted.heavy_ball_rate, polyak, rtol=1e-12)
    gd = (kappa - 1) / (kappa + 1)
    # At the optimum the iteration matrix has double eigenvalues (a factor t):
    # over 200 steps that adds at most 2^(1/200) - 1 = 0.35% to the rate.
    assert polyak * (1 - 1e-3) < measured < polyak * 1.005
    assert measured < gd


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_minimises_a_quadratic(name):
    a = _quadratic(np.array([0.5, 1.0, 2.0, 4.0]))
    tx = {"sgd": jt.sgd(0.2), "sgd_wd": jt.sgd(0.2, weight_decay=1e-4),
          "heavy_ball": jt.heavy_ball(0.1, 0.8), "nesterov": jt.nesterov(0.1, 0.8),
          "rmsprop": jt.rmsprop(optax.exponential_decay(0.05, 50, 0.5)),
          "adagrad": jt.adagrad(0.5),
          "adam": jt.adam(optax.exponential_decay(0.05, 50, 0.5)),
          "adam_uncorrected": jt.adam(optax.exponential_decay(0.05, 50, 0.5),
                                      bias_correction=False),
          "adamw": jt.adamw(optax.exponential_decay(0.05, 50, 0.5), weight_decay=1e-4)}[name]
    w0 = np.ones(4)
    _, losses = _run_quadratic(tx, a, w0, 600)
    assert losses[-1] < 1e-4 * (0.5 * w0 @ a @ w0)


def test_adam_bias_correction_matters_early_as_the_notes_say():
    """Constant gradient g: uncorrected moments are (1-β^t)·g and (1-β^t)·g², biased toward 0."""
    g = jnp.array([0.5, -2.0, 1e-3])
    w = jnp.zeros(3)
    raw = jt.scale_by_adam_uncorrected(B1, B2, EPS)
    raw_state = raw.init(w)
    corrected, uncorrected = jt.adam(1.0, B1, B2, EPS), jt.adam(1.0, B1, B2, EPS,
                                                                  bias_correction=False)
    c_state, u_state = corrected.init(w), uncorrected.init(w)
    ratios = []
    for t in range(1, 3001):
        _, raw_state = raw.update(g, raw_state)
        c_up, c_state = corrected.update(g, c_state, w)
        u_up, u_state = uncorrected.update(g, u_state, w)
        ratios.append(float(u_up[0] / c_up[0]))
        if t in (1, 10, 100):
            np.testing.assert_allclose(raw_state.mu, (1 - B1**t) * g, rtol=1e-12)
            np.testing.assert_allclose(raw_state.nu, (1 - B2**t) * g * g, rtol=1e-12)
            assert np.all(np.abs(raw_state.mu) < np.abs(g))  # biased toward zero
            # the corrected estimate is unbiased: its step is -sign(g) up to eps
            np.testing.assert_allclose(c_up[:2], -jnp.sign(g[:2]), rtol=1e-6)
    ratios = np.asarray(ratios)
    predicted = (1 - B1 ** np.arange(1, 3001)) / np.sqrt(1 - B2 ** np.arange(1, 3001))
    np.testing.assert_allclose(ratios, predicted, rtol=1e-6)
    assert abs(ratios[0] - 1) > 1          # step 1: the two differ by a factor sqrt(1000)/10
    assert abs(ratios[-1] - 1) < 0.05      # late: the correction no longer matters
    # The closer β is to 1, the longer the bias lasts: 1 - β^t after 10 steps.
    assert (1 - 0.99**10) < (1 - 0.9**10)


def test_adamw_decays_weights_decoupled_from_the_gradient():
    w = jnp.array([1.0, -3.0])
    tx = jt.adamw(0.1, weight_decay=0.5)
    state = tx.init(w)
    for _ in range(5):
        updates, state = tx.update(jnp.zeros(2), state, w)
        w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(w, np.array([1.0, -3.0]) * (1 - 0.1 * 0.5) ** 5, rtol=1e-12)


@pytest.mark.parametrize("make,match", [
    (lambda: jt.heavy_ball(0.1, 1.0), "heavy_ball"),
    (lambda: jt.nesterov(0.1, -0.1), "nesterov"),
    (lambda: jt.sgd(0.1, weight_decay=-1.0), "sgd"),
    (lambda: jt.scale_by_adam_uncorrected(1.0), "scale_by_adam_uncorrected"),
    (lambda: jt.adamw(0.1, weight_decay=-1.0), "adamw"),
])
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_momentum_sweep_can_be_vmapped():
    """A traced momentum (vmap over beta) passes the argument check and matches single runs."""
    grads = {"w": jnp.array([1.0, -2.0])}

    def two_steps(beta):
        tx = jt.heavy_ball(0.1, beta)
        state = tx.init(grads)
        _, state = tx.update(grads, state)
        updates, _ = tx.update(grads, state)
        return updates["w"]

    betas = jnp.array([0.0, 0.5, 0.9])
    swept = jax.vmap(two_steps)(betas)
    for i, beta in enumerate([0.0, 0.5, 0.9]):
        np.testing.assert_allclose(swept[i], two_steps(beta), rtol=1e-12)
    with pytest.raises(ValueError, match="heavy_ball: expected 0 <= momentum < 1"):
        jt.heavy_ball(0.1, 1.0)
