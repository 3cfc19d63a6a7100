"""jdl.hessian conditioning, learning rates, layer blocks and the sharpness tracker."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jdl import hessian, losses, nn

LAMBDAS = np.array([0.1, 0.5, 2.0, 10.0])  # a diagonal quadratic's Hessian spectrum


def gd_radius(step):
    """Spectral radius of gradient descent's iteration matrix ``I - step H``."""
    return np.max(np.abs(1 - step * LAMBDAS))


def heavy_ball_radius(step, momentum):
    """Spectral radius of ``[[(1 + b) I - a H, -b I], [I, 0]]`` (Polyak's heavy ball)."""
    return max(np.max(np.abs(np.linalg.eigvals(np.array([[1 + momentum - step * lam, -momentum],
                                                          [1.0, 0.0]]))))
               for lam in LAMBDAS)


def test_learning_rates_are_the_iteration_matrix_limits():
    lr = hessian.learning_rates(LAMBDAS.max(), LAMBDAS.min())
    assert lr.stable_limit == pytest.approx(0.2) and lr.condition_number == pytest.approx(100.0)
    assert gd_radius(0.999 * lr.stable_limit) < 1 < gd_radius(1.001 * lr.stable_limit)
    np.testing.assert_allclose(gd_radius(lr.optimal_step), lr.contraction, rtol=1e-12)
    for step in (0.95 * lr.optimal_step, 1.05 * lr.optimal_step):  # the optimum is a minimum
        assert gd_radius(step) > lr.contraction
    np.testing.assert_allclose(lr.contraction, 99 / 101, rtol=1e-12)
    np.testing.assert_allclose(heavy_ball_radius(lr.heavy_ball_step, lr.heavy_ball_momentum),
                               lr.heavy_ball_rate, rtol=1e-6)
    np.testing.assert_allclose(lr.heavy_ball_rate, 9 / 11, rtol=1e-12)
    np.testing.assert_allclose(lr.heavy_ball_momentum, (9 / 11) ** 2, rtol=1e-12)
    for b in (0.0, 0.5, 0.9):
        limit = hessian.learning_rates(LAMBDAS.max(), momentum=b).momentum_stable_limit
        np.testing.assert_allclose(limit, (2 + 2 * b) / 10.0, rtol=1e-12)
        assert heavy_ball_radius(0.999 * limit, b) < 1 < heavy_ball_radius(1.001 * limit, b)


def test_gradient_descent_at_the_optimal_step_contracts_as_predicted():
    lr = hessian.learning_rates(LAMBDAS.max(), LAMBDAS.min())
    w = np.ones(4)
    for _ in range(200):
        w = w - lr.optimal_step * LAMBDAS * w
    np.testing.assert_allclose(np.max(np.abs(w)), lr.contraction ** 200, rtol=1e-8)


def test_learning_rates_bad_input():
    with pytest.raises(ValueError, match="learning_rates: expected a positive finite lambda_max"):
        hessian.learning_rates(-1.0)
    with pytest.raises(ValueError, match=r"learning_rates: expected 0 < lambda_min <= lambda_max"):
        hessian.learning_rates(1.0, -0.5)
    with pytest.raises(ValueError, match=r"learning_rates: expected momentum in \[0, 1\)"):
        hessian.learning_rates(1.0, momentum=1.0)
    assert hessian.learning_rates(2.0).optimal_step is None


def test_condition_number_of_definite_and_indefinite_spectra():
    definite = hessian.condition_number(np.array([1.0, 2.0, 10.0]))
    assert definite.positive_definite and definite.condition_number == pytest.approx(10.0)
    assert definite.negative_mass == 0.0 and definite.positive_ratio == pytest.approx(10.0)
    indefinite = hessian.condition_number(np.array([-2.0, -1.0, 0.0, 1e-9, 0.5, 4.0]))
    assert not indefinite.positive_definite and math.isinf(indefinite.condition_number)
    assert indefinite.negative_mass == pytest.approx(2 / 6)
    assert indefinite.smallest_positive == 0.5 and indefinite.positive_ratio == pytest.approx(8.0)
    assert indefinite.lambda_min == -2.0 and indefinite.lambda_max == 4.0
    with pytest.raises(ValueError, match="condition_number: expected a non-empty finite"):
        hessian.condition_number(np.array([1.0, np.nan]))


def quadratic(params, batch):
    return 0.5 * params["x"] @ (batch[0] @ params["x"])


def matrix_with_spectrum(spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum),) * 2))
    return (q * np.asarray(spectrum)) @ q.T


def test_condition_number_from_eigen_and_density():
    spectrum = np.concatenate([np.linspace(-1.0, -0.1, 10), np.linspace(0.2, 5.0, 30)])
    a = jnp.asarray(matrix_with_spectrum(spectrum))[None]
    params = {"x": jnp.zeros(40)}
    eig = hessian.eigenvalues(quadratic, params, a, k=2, which="both", key=jax.random.key(0),
                              tol=1e-10)
    cond = hessian.condition_number(eig)
    assert cond.lambda_max == pytest.approx(5.0) and cond.lambda_min == pytest.approx(-1.0)
    assert math.isnan(cond.negative_mass) and math.isnan(cond.smallest_positive)
    with pytest.raises(ValueError, match="condition_number: expected an Eigen from which='both'"):
        hessian.condition_number(hessian.eigenvalues(quadratic, params, a, k=2,
                                                     key=jax.random.key(0)))
    positive = jnp.asarray(matrix_with_spectrum(np.linspace(0.1, 4.9, 40), seed=1))[None]
    cond = hessian.condition_number(hessian.eigenvalues(
        quadratic, params, positive, k=2, which="both", key=jax.random.key(0), tol=1e-10))
    assert cond.condition_number == pytest.approx(4.9 / 0.1) and cond.negative_mass == 0.0
    assert cond.smallest_positive == pytest.approx(0.1)
    # From SLQ: each run's weight below zero estimates the fraction 10/40 without bias.
    density = hessian.spectral_density(quadratic, params, a, key=jax.random.key(1),
                                       num_steps=20, num_runs=20)
    per_run = np.sum(density.weights * (density.nodes < 0), axis=1)
    mass = hessian.condition_number(density).negative_mass
    np.testing.assert_allclose(mass, per_run.mean(), rtol=1e-12)
    assert abs(mass - 10 / 40) <= 4 * per_run.std(ddof=1) / np.sqrt(20)


MODEL = nn.serial(nn.dense(8), nn.activation("tanh"), nn.dense(3))
_, PARAMS, _ = MODEL.init(jax.random.key(2), (-1, 4))
X = jax.random.normal(jax.random.key(3), (40, 4))
Y = jnp.arange(40) % 3


def mlp_loss(params, batch):
    return losses.softmax_cross_entropy(MODEL.apply(params, batch[0])[0], batch[1])


@pytest.fixture(scope="module")
def dense_hessian():
    return np.asarray(hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y)))


def test_layer_eigenvalues_are_those_of_the_diagonal_blocks(dense_hessian):
    assert hessian.layer_paths(PARAMS) == [("0_dense",), ("2_dense",)]
    size = ravel_pytree(PARAMS["0_dense"])[0].size
    blocks = {"0_dense": dense_hessian[:size, :size], "2_dense": dense_hessian[size:, size:]}
    result = hessian.layer_eigenvalues(mlp_loss, PARAMS, (X, Y), key=jax.random.key(4), k=2,
                                       which="both", tol=1e-10)
    assert sorted(result) == ["0_dense", "2_dense"]
    for name, eig in result.items():
        exact = np.linalg.eigvalsh(blocks[name])
        np.testing.assert_allclose(eig.values, [exact[-1], exact[-2], exact[0], exact[1]],
                                   rtol=1e-8, atol=1e-12)


def test_eigenvector_mass_splits_the_squared_norm(dense_hessian):
    eig = hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), k=2, key=jax.random.key(5), tol=1e-10)
    mass = hessian.eigenvector_mass(eig.vectors)
    size = ravel_pytree(PARAMS["0_dense"])[0].size
    exact_vectors = np.linalg.eigh(dense_hessian)[1][:, ::-1][:, :2]
    np.testing.assert_allclose(mass["0_dense"], np.sum(exact_vectors[:size] ** 2, axis=0),
                               rtol=1e-6)
    np.testing.assert_allclose(mass["0_dense"] + mass["2_dense"], 1.0, rtol=1e-12)
    nested = {"params": {"a": {"w": jnp.ones((3, 2))}, "b": {"w": jnp.zeros((3, 5))}}}
    assert hessian.layer_paths(nested, depth=2) == [("params", "a"), ("params", "b")]
    np.testing.assert_allclose(hessian.eigenvector_mass(nested, depth=2)["params/a"], [1, 1, 1])


def test_sharpness_inside_jit_is_lambda_max(dense_hessian):
    top = jax.jit(lambda p, b, k: hessian.sharpness(mlp_loss, p, b, key=k, num_steps=30))(
        PARAMS, (X, Y), jax.random.key(6))
    np.testing.assert_allclose(top, np.linalg.eigvalsh(dense_hessian)[-1], rtol=1e-6)


def linear_loss(params, batch):
    return losses.mse(batch[0] @ params["w"], batch[1])


def test_track_sharpness_on_linear_regression():
    x = jax.random.normal(jax.random.key(7), (50, 3)) * jnp.array([1.0, 2.0, 3.0])
    y = x @ jnp.array([1.0, -1.0, 0.5])
    lam_max = np.linalg.eigvalsh(2 * x.T @ x / 50)[-1]
    lr = 1.0 / lam_max  # below the edge of stability 2 / lam_max
    run = hessian.track_sharpness(linear_loss, {"w": jnp.zeros(3)}, (x, y), optax.sgd(lr),
                                  num_steps=40, every=10, key=jax.random.key(8),
                                  lanczos_steps=3)
    np.testing.assert_array_equal(run.steps, [0, 10, 20, 30])
    np.testing.assert_allclose(run.sharpness, lam_max, rtol=1e-10)  # constant on a quadratic
    assert run.losses.shape == (40,) and run.losses[-1] < 1e-3 * run.losses[0]
    with pytest.raises(ValueError, match="track_sharpness: training diverged"):
        hessian.track_sharpness(linear_loss, {"w": jnp.zeros(3)}, (x, y),
                                optax.sgd(3 * 2 / lam_max), num_steps=600, every=100,
                                key=jax.random.key(8), lanczos_steps=3)
