"""FGSM and PGD: exact on a linear model, loss-raising on a trained MLP, inside the ball and box."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import adversarial as adv
from jdl import data, nn
from jdl import train as jt

DS = data.load("digits", dtype=jnp.float32)
MODEL = nn.serial(nn.dense(32), nn.activation("relu"), nn.dense(10))
TEST = (DS.x_test, DS.y_test)


def apply_fn(params, x):
    return MODEL.apply(params, x)[0]


LOSS = adv.classifier_loss(apply_fn)
EPSILON = {"linf": 0.1, "l2": 1.0}


@pytest.fixture(scope="module")
def trained():
    params = MODEL.init(jax.random.key(0), (-1, 64), jnp.float32)[1]
    return jt.fit(LOSS, params, optax.adam(0.01), (DS.x_train, DS.y_train), epochs=15,
                  batch_size=64, key=jax.random.key(1), quiet=True).params


def _in_ball(x_adv, x, epsilon, norm):
    delta = np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    return np.all(size <= epsilon * (1 + 1e-5) + 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_raises_the_loss_of_a_trained_model(trained, norm):
    x_adv = adv.fgsm(LOSS, trained, TEST, epsilon=EPSILON[norm], norm=norm)
    assert x_adv.dtype == jnp.float32 and x_adv.shape == DS.x_test.shape
    clean = adv.per_example_loss(LOSS, trained, *TEST)
    attacked = adv.per_example_loss(LOSS, trained, x_adv, DS.y_test)
    assert np.mean(attacked > clean) > 0.95
    assert float(attacked.mean()) > 3 * float(clean.mean())
    assert _in_ball(x_adv, DS.x_test, EPSILON[norm], norm)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_is_at_least_as_strong_as_fgsm_and_stays_in_the_ball(trained, norm, random_start):
    eps = EPSILON[norm]
    key = jax.random.key(7) if random_start else None
    x_fgsm = adv.fgsm(LOSS, trained, TEST, epsilon=eps, norm=norm)
    x_pgd = adv.pgd(LOSS, trained, TEST, epsilon=eps, num_steps=10, norm=norm, key=key)
    assert _in_ball(x_pgd, DS.x_test, eps, norm)
    assert float(x_pgd.min()) >= 0.0 and float(x_pgd.max()) <= 1.0
    loss_fgsm = adv.per_example_loss(LOSS, trained, x_fgsm, DS.y_test)
    loss_pgd = adv.per_example_loss(LOSS, trained, x_pgd, DS.y_test)
    assert float(loss_pgd.mean()) >= float(loss_fgsm.mean())
    robust_fgsm = adv.robust_accuracy(apply_fn, trained, TEST, epsilon=eps, norm=norm,
                                      attack="fgsm").robust
    robust_pgd = adv.robust_accuracy(apply_fn, trained, TEST, epsilon=eps, norm=norm,
                                     num_steps=10, key=key).robust
    assert float(robust_pgd) <= float(robust_fgsm)
    # more steps never weaken PGD: each example keeps its highest-loss iterate
    x_more = adv.pgd(LOSS, trained, TEST, epsilon=eps, num_steps=20, norm=norm,
                     step_size=2.5 * eps / 10, key=key)
    loss_more = adv.per_example_loss(LOSS, trained, x_more, DS.y_test)
    assert np.all(np.asarray(loss_more) >= np.asarray(loss_pgd) - 1e-5)


def _logistic(w, batch):
    x, t = batch
    return jnp.mean(jnp.logaddexp(0.0, -t * (x @ w)))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attacks_reach_the_analytic_worst_case_of_a_linear_model(norm):
    """For the margin ``t x.w`` the worst case in the ball lowers it by ``eps ||w||_dual``."""
    w = jax.random.normal(jax.random.key(0), (6,))
    x = jax.random.normal(jax.random.key(1), (9, 6))
    t = jnp.where(jnp.arange(9) % 2 == 0, 1.0, -1.0)
    eps = 0.3
    dual = jnp.sum(jnp.abs(w)) if norm == "linf" else jnp.linalg.norm(w)
    expected = t * (x @ w) - eps * dual
    for x_adv in (adv.fgsm(_logistic, w, (x, t), epsilon=eps, norm=norm, bounds=None),
                  adv.pgd(_logistic, w, (x, t), epsilon=eps, norm=norm, bounds=None,
                          num_steps=30)):
        np.testing.assert_allclose(t * (x_adv @ w), expected, rtol=1e-10, atol=1e-10)


def test_project_onto_ball_and_box():
    x = jax.random.uniform(jax.random.key(0), (50, 3, 4))
    far = x + 3.0 * jax.random.normal(jax.random.key(1), x.shape)
    for norm, size in (("linf", lambda d: jnp.abs(d).max((1, 2))),
                       ("l2", lambda d: jnp.sqrt(jnp.sum(d ** 2, (1, 2))))):
        p = adv.project(far, x, 0.2, norm)
        assert float(size(p - x).max()) <= 0.2 + 1e-12
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
        near = adv.project(x + 0.01 * (far - x) / size(far - x)[:, None, None], x, 0.2, norm,
                           bounds=None)
        np.testing.assert_allclose(adv.project(near, x, 0.2, norm, bounds=None), near,
                                   rtol=1e-12)  # inside the ball: unchanged


def test_attacks_compile_once_and_run_under_jit(trained):
    adv.fgsm(LOSS, trained, TEST, epsilon=0.05)
    before = adv._fgsm._cache_size()
    adv.fgsm(LOSS, trained, TEST, epsilon=0.2)  # a new epsilon is a new argument, not a constant
    assert adv._fgsm._cache_size() == before
    jitted = jax.jit(lambda eps, p: adv.pgd(LOSS, p, TEST, epsilon=eps, num_steps=3))
    np.testing.assert_allclose(jitted(0.1, trained),
                               adv.pgd(LOSS, trained, TEST, epsilon=0.1, num_steps=3), atol=1e-6)


def test_adversarial_training_raises_robust_accuracy(trained):
    params = MODEL.init(jax.random.key(0), (-1, 64), jnp.float32)[1]
    loss = adv.adversarial_loss(LOSS, epsilon=0.1, attack="fgsm")
    robust_params = jt.fit(loss, params, optax.adam(0.01), (DS.x_train, DS.y_train), epochs=15,
                           batch_size=64, key=jax.random.key(1), quiet=True).params
    plain = adv.robust_accuracy(apply_fn, trained, TEST, epsilon=0.1, num_steps=10)
    robust = adv.robust_accuracy(apply_fn, robust_params, TEST, epsilon=0.1, num_steps=10)
    assert float(robust.robust) > float(plain.robust) + 0.15
    assert float(robust.clean) > 0.9


@pytest.mark.parametrize("call", [
    lambda: adv.fgsm(_logistic, jnp.ones(2), (jnp.ones((3, 2)), jnp.ones(3)), epsilon=-0.1),
    lambda: adv.pgd(_logistic, jnp.ones(2), (jnp.ones((3, 2)), jnp.ones(3)), epsilon=-1),
    lambda: adv.adversarial_loss(_logistic, epsilon=-0.5),
    lambda: adv.robust_accuracy(apply_fn, {}, TEST, epsilon=-0.1),
])
def test_negative_epsilon_is_an_error(call):
    with pytest.raises(ValueError, match="expected epsilon >= 0"):
        call()


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "expected norm to be one of"),
    ({"bounds": (1.0, 0.0)}, "expected bounds"),
    ({"num_steps": 0}, "num_steps >= 1"),
    ({"step_size": -0.1}, "step_size > 0"),
])
def test_bad_attack_options(kwargs, match):
    with pytest.raises(ValueError, match=f"pgd: .*{match}"):
        adv.pgd(_logistic, jnp.ones(2), (jnp.ones((3, 2)), jnp.ones(3)), epsilon=0.1, **kwargs)
    with pytest.raises(ValueError, match="fgsm: expected batch"):
        adv.fgsm(_logistic, jnp.ones(2), jnp.ones((3, 2)), epsilon=0.1)
    with pytest.raises(ValueError, match="attack 'fgsm' or 'pgd'"):
        adv.adversarial_loss(_logistic, epsilon=0.1, attack="cw")
