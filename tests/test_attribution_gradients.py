"""Gradient x input, integrated gradients, SmoothGrad and activation maximisation:
analytic answers, completeness, closed-form optima, the digits PNG grid, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import nn
from jdl.attribution import (
    activation_maximization, gaussian_prior, gradient_x_input, integrated_gradients, l2_prior,
    save_image_grid, smoothgrad, total_variation_prior)


def _linear(k=3, d=4, seed=0):
    model = nn.dense(k)
    _, params, _ = model.init(jax.random.key(seed), (-1, d))
    params["b"] = jnp.linspace(-1, 1, k)
    return model, params


def _mlp(seed=0):
    model = nn.serial(nn.dense(8), nn.activation("tanh"), nn.dense(3))
    _, params, _ = model.init(jax.random.key(seed), (-1, 4))
    return model, params


def test_gradient_x_input_of_a_linear_model():
    model, params = _linear()
    x = jax.random.normal(jax.random.key(1), (5, 4))
    target = jnp.array([0, 1, 2, 0, 1])
    got = jax.jit(lambda p, v: gradient_x_input(model, p, v, target=target))(params, x)
    np.testing.assert_allclose(got, x * params["w"][:, target].T, rtol=1e-12)
    # default target: each row's largest output
    out, _ = model.apply(params, x)
    best = jnp.argmax(out, 1)
    np.testing.assert_allclose(gradient_x_input(model, params, x),
                               x * params["w"][:, best].T, rtol=1e-12)


@pytest.mark.parametrize("method", ["gauss_legendre", "riemann_middle", "riemann_trapezoid"])
def test_integrated_gradients_of_a_linear_model_are_exact(method):
    model, params = _linear()
    x = jax.random.normal(jax.random.key(2), (3, 4))
    baseline = jnp.full((4,), 0.5)
    result = integrated_gradients(model, params, x, baseline[None], steps=3, method=method,
                                  target=1)
    np.testing.assert_allclose(result.attributions, (x - baseline[None]) * params["w"][:, 1][None],
                               rtol=1e-12)
    np.testing.assert_allclose(result.completeness_gap, 0.0, atol=1e-12)


def test_gauss_legendre_is_exact_for_polynomial_paths():
    # f(x) = (x . w)^3: the gradient along the path is a degree-2 polynomial in t,
    # integrated exactly by 2 Gauss-Legendre nodes: attributions = (x - b) w * mean(3 (t x.w)^2)
    w = jnp.array([1.0, -0.5, 2.0])
    model = nn.serial(nn.dense(1, use_bias=False), nn.stateless("custom", {}, lambda s: s,
                                                                lambda v: v[:, 0] ** 3))
    params = {"0_dense": {"w": w[:, None]}, "1_custom": {}}
    x = jax.random.normal(jax.random.key(3), (4, 3))
    result = integrated_gradients(model, params, x, steps=2)
    s = x @ w
    np.testing.assert_allclose(result.attributions, x * w[None] * (s ** 2)[:, None], rtol=1e-10)
    np.testing.assert_allclose(result.completeness_gap, 0.0, atol=1e-10)


@pytest.mark.parametrize("method", ["gauss_legendre", "riemann_middle", "riemann_trapezoid"])
def test_completeness_gap_shrinks_with_more_steps(method):
    model, params = _mlp()
    x = 2.0 * jax.random.normal(jax.random.key(4), (6, 4))
    gaps = [float(jnp.abs(integrated_gradients(model, params, x, steps=s, method=method)
                          .completeness_gap).max()) for s in (4, 16, 64)]
    assert gaps[2] < gaps[1] < gaps[0]
    assert gaps[2] < 1e-3


def test_smoothgrad_limits():
    model, params = _linear()
    x = jax.random.normal(jax.random.key(5), (3, 4))
    key = jax.random.key(6)
    # a linear model has the same gradient everywhere, whatever the noise
    got = smoothgrad(model, params, x, key=key, noise=0.5, num_samples=4, target=2)
    np.testing.assert_allclose(got, jnp.broadcast_to(params["w"][:, 2], x.shape), rtol=1e-12)
    mlp, mlp_params = _mlp()
    noiseless = smoothgrad(mlp, mlp_params, x, key=key, noise=0.0, num_samples=3,
                           times_input=True)
    np.testing.assert_allclose(noiseless, gradient_x_input(mlp, mlp_params, x), rtol=1e-12)
    a = smoothgrad(mlp, mlp_params, x, key=key, noise=0.2)
    b = jax.jit(lambda p, v: smoothgrad(mlp, p, v, key=key, noise=0.2))(mlp_params, x)
    np.testing.assert_allclose(a, b, rtol=1e-10)
    assert not np.allclose(a, smoothgrad(mlp, mlp_params, x, key=jax.random.key(7), noise=0.2))


def test_gradient_methods_reject_bad_input():
    model, params = _linear()
    with pytest.raises(ValueError, match="gradient_x_input: expected float x"):
        gradient_x_input(model, params, jnp.ones(4))
    with pytest.raises(ValueError, match="integrated_gradients: expected method"):
        integrated_gradients(model, params, jnp.ones((2, 4)), method="simpson")
    with pytest.raises(ValueError, match="integrated_gradients: expected a baseline"):
        integrated_gradients(model, params, jnp.ones((2, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match="smoothgrad: expected target"):
        smoothgrad(model, params, jnp.ones((2, 4)), key=jax.random.key(0),
                   target=jnp.array([0, 1, 2]))
    with pytest.raises(TypeError, match="smoothgrad: expected a jdl Layer"):
        smoothgrad(lambda v: v, params, jnp.ones((2, 4)), key=jax.random.key(0))


# ---------------------------------------------------------------- activation maximisation

def test_linear_unit_with_l2_prior_reaches_w_over_two_lambda():
    model, params = _linear(k=3, d=5)
    lam = 0.7
    result = activation_maximization(
        model, params, jnp.arange(3), input_shape=(5,), key=jax.random.key(0), steps=200,
        optimizer=optax.sgd(0.2), prior=l2_prior(lam), objective="logit")
    np.testing.assert_allclose(result.inputs, params["w"].T / (2 * lam), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.score, (params["w"] ** 2).sum(0) / (2 * lam)
                               + params["b"], rtol=1e-8)
    assert result.objective.shape == (3, 200)
    # Adam (the default) gets there too, to optimiser precision
    adam = activation_maximization(
        model, params, jnp.arange(3), input_shape=(5,), key=jax.random.key(0), steps=600,
        prior=l2_prior(lam), objective="logit")
    np.testing.assert_allclose(adam.inputs, params["w"].T / (2 * lam), atol=2e-2)


def test_linear_unit_with_gaussian_prior_reaches_mu_plus_sigma_w():
    data = jax.random.normal(jax.random.key(1), (50, 4)) @ jnp.diag(jnp.array([1.0, 2.0, .5, 1.]))
    prior = gaussian_prior(data, shrinkage=0.2)
    model, params = _linear(k=2, d=4)
    result = activation_maximization(
        model, params, jnp.arange(2), input_shape=(4,), key=jax.random.key(2), steps=600,
        optimizer=optax.sgd(0.3), prior=prior, objective="logit")
    mean, precision = prior.args[1], prior.args[2]
    expected = mean[None] + jnp.linalg.solve(precision, params["w"]).T
    np.testing.assert_allclose(result.inputs, expected, rtol=1e-6, atol=1e-8)


def test_activation_maximization_compiles_once_per_model():
    """New params, priors, units and keys reuse the compiled program."""
    from jdl.attribution.activation_max import _maximize

    model, params = _linear(k=3, d=5)
    run = lambda p, lam, units, seed: activation_maximization(  # noqa: E731
        model, p, units, input_shape=(5,), key=jax.random.key(seed), steps=5,
        prior=l2_prior(lam), objective="logit")
    run(params, 0.5, jnp.arange(3), 0)
    size = _maximize._cache_size()
    run(jax.tree.map(lambda a: a + 1.0, params), 0.9, jnp.array([2, 0, 1]), 1)
    assert _maximize._cache_size() == size


def test_total_variation_prior_prefers_smooth_images():
    tv = total_variation_prior(1.0)
    flat = jnp.full((6, 6, 1), 0.3)
    noisy = flat + 0.2 * jax.random.normal(jax.random.key(3), flat.shape)
    assert float(tv(flat)) > float(tv(noisy))
    np.testing.assert_allclose(tv(flat), -25 * np.sqrt(1e-6), rtol=1e-6)


def test_class_maximisers_are_classified_as_their_class(tmp_path):
    model = nn.serial(nn.conv2d(4, 3), nn.activation("relu"), nn.max_pool(2), nn.flatten(),
                      nn.dense(10))
    _, params, _ = model.init(jax.random.key(4), (-1, 8, 8, 1))
    result = activation_maximization(
        model, params, jnp.arange(10), input_shape=(8, 8, 1), key=jax.random.key(5), steps=150,
        prior=[l2_prior(1e-2), total_variation_prior(1e-2)], jitter=1, bounds=(0.0, 1.0))
    logits, _ = model.apply(params, result.inputs)
    log_probs = jax.nn.log_softmax(logits)                     # (input of class i, class c)
    np.testing.assert_allclose(jnp.diag(log_probs), result.score, rtol=1e-10)
    # each class's maximiser gives that class more probability than any other maximiser does
    np.testing.assert_array_equal(jnp.argmax(log_probs, 0), jnp.arange(10))
    assert bool(jnp.all(result.objective[:, -10:].mean(1) > result.objective[:, :10].mean(1)))
    assert float(result.inputs.min()) >= 0.0 and float(result.inputs.max()) <= 1.0
    path = tmp_path / "classes.png"
    save_image_grid(result.inputs, str(path), titles=[str(c) for c in range(10)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_activation_maximization_rejects_bad_input():
    model, params = _linear(k=2, d=4)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="activation_maximization: expected jitter"):
        activation_maximization(model, params, [0], input_shape=(4,), key=key, jitter=1)
    with pytest.raises(ValueError, match="activation_maximization: expected objective"):
        activation_maximization(model, params, [0], input_shape=(4,), key=key, objective="p")
    exploding = nn.serial(model, nn.stateless("custom", {}, lambda s: s, jnp.exp))
    with pytest.raises(ValueError, match="activation_maximization: the objective became non-fin"):
        activation_maximization(exploding, {"0_dense": params, "1_custom": {}}, [0],
                                input_shape=(4,), key=key, objective="logit",
                                optimizer=optax.sgd(1e3), steps=20)
    with pytest.raises(ValueError, match="save_image_grid: expected images"):
        save_image_grid(np.ones((2, 3)), "unused.png")
