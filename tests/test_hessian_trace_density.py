"""jdl.hessian trace (Hutchinson, Hutch++) and spectral density (SLQ) against exact spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import hessian, losses, nn
from jdl.hessian.density import broaden

N = 200


def quadratic(params, batch):
    """``x^T A x / 2`` with ``A`` the single example of the batch: the Hessian is ``A``."""
    return 0.5 * params["x"] @ (batch[0] @ params["x"])


def matrix_with_spectrum(spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum),) * 2))
    return (q * np.asarray(spectrum)) @ q.T


rng = np.random.default_rng(1)
SPECTRUM = np.sort(np.concatenate([rng.uniform(0.0, 1.0, 150), rng.uniform(-0.5, 0.0, 40),
                                   rng.uniform(3.0, 5.0, 10)]))
A = jnp.asarray(matrix_with_spectrum(SPECTRUM))[None]
PARAMS = {"x": jnp.zeros(N)}


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_standard_errors(method):
    est = hessian.trace(quadratic, PARAMS, A, key=jax.random.key(0), num_samples=90,
                        method=method)
    exact = SPECTRUM.sum()
    assert est.stderr > 0 and abs(est.estimate - exact) <= 3 * est.stderr
    assert est.num_matvecs == 90
    expected_samples = 90 if method == "hutchinson" else 30
    assert est.samples.shape == (expected_samples,)
    np.testing.assert_allclose(est.stderr, est.samples.std(ddof=1) / np.sqrt(expected_samples))


def test_hutch_plus_plus_is_exact_for_low_rank():
    low_rank = jnp.asarray(matrix_with_spectrum(
        np.concatenate([np.zeros(N - 4), [1.0, -2.0, 3.0, 7.0]])))[None]
    est = hessian.trace(quadratic, PARAMS, low_rank, key=jax.random.key(1), num_samples=30,
                        method="hutch++")
    np.testing.assert_allclose(est.estimate, 9.0, rtol=1e-10)
    assert est.stderr < 1e-10


def test_hutch_plus_plus_beats_hutchinson_on_outliers():
    # Large outliers (as in network Hessians) carry most of Hutchinson's variance;
    # Hutch++'s sketch takes them exactly.
    spectrum = np.where(SPECTRUM > 2.0, 10 * SPECTRUM, SPECTRUM)
    outliers = jnp.asarray(matrix_with_spectrum(spectrum))[None]
    plain = hessian.trace(quadratic, PARAMS, outliers, key=jax.random.key(2), num_samples=90)
    plus = hessian.trace(quadratic, PARAMS, outliers, key=jax.random.key(2), num_samples=90,
                         method="hutch++")
    for est in (plain, plus):
        assert abs(est.estimate - spectrum.sum()) <= 3 * est.stderr
    assert plus.stderr < 0.3 * plain.stderr


def test_trace_stops_at_relative_standard_error():
    est = hessian.trace(quadratic, PARAMS, A, key=jax.random.key(3), num_samples=1000, rtol=0.05)
    assert est.stderr <= 0.05 * abs(est.estimate)
    assert est.num_matvecs < 1000 and est.num_matvecs % 10 == 0
    again = hessian.trace(quadratic, PARAMS, A, key=jax.random.key(3), num_samples=1000, rtol=0.05)
    assert again.estimate == est.estimate


MODEL = nn.serial(nn.dense(10), nn.activation("tanh"), nn.dense(3))
_, MLP_PARAMS, _ = MODEL.init(jax.random.key(4), (-1, 4))
X = jax.random.normal(jax.random.key(5), (40, 4))
Y = jnp.arange(40) % 3


def mlp_loss(params, batch):
    return losses.softmax_cross_entropy(MODEL.apply(params, batch[0])[0], batch[1])


def test_hutchinson_on_an_mlp_hessian():
    exact = float(jnp.trace(hessian.hessian_matrix(mlp_loss, MLP_PARAMS, (X, Y))))
    est = hessian.trace(mlp_loss, MLP_PARAMS, (X, Y), key=jax.random.key(6), num_samples=60)
    assert abs(est.estimate - exact) <= 3 * est.stderr


def test_slq_density_matches_the_exact_eigenvalue_density():
    result = hessian.spectral_density(quadratic, PARAMS, A, key=jax.random.key(7), num_steps=40,
                                      num_runs=30, sigma=0.05)
    assert result.nodes.shape == (30, 40) and result.weights.shape == (30, 40)
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, rtol=1e-10)
    dx = result.grid[1] - result.grid[0]
    np.testing.assert_allclose(result.density.sum() * dx, 1.0, rtol=1e-3)
    # The exact density smoothed the same way, on the same grid.
    exact = broaden(SPECTRUM[None], np.full((1, N), 1.0 / N), result.grid, result.sigma)
    assert np.sum(np.abs(result.density - exact)) * dx < 0.1
    assert np.max(np.abs(np.cumsum(result.density - exact) * dx)) < 0.03
    # The extreme nodes converge to the extreme eigenvalues.
    np.testing.assert_allclose([result.nodes.min(), result.nodes.max()],
                               [SPECTRUM[0], SPECTRUM[-1]], rtol=1e-6)
    # Moments: each run's quadrature gives an unbiased estimate of mean(lambda^p).
    for p in (1, 2, 3):
        per_run = np.sum(result.weights * result.nodes ** p, axis=1)
        stderr = per_run.std(ddof=1) / np.sqrt(per_run.size)
        assert abs(per_run.mean() - np.mean(SPECTRUM ** p)) <= 4 * stderr


def test_density_without_reorthogonalization_and_plot(tmp_path):
    result = hessian.spectral_density(quadratic, PARAMS, A, key=jax.random.key(8), num_steps=30,
                                      num_runs=4, reorthogonalize=False)
    np.testing.assert_allclose(result.nodes.max(), SPECTRUM[-1], rtol=1e-6)
    assert result.sigma == pytest.approx(0.01 * (result.nodes.max() - result.nodes.min()))
    for log_scale in (True, False):
        path = hessian.plot_spectral_density(result, str(tmp_path / f"d{log_scale}.png"),
                                             log_scale=log_scale)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_input():
    with pytest.raises(ValueError, match="trace: expected method to be one of"):
        hessian.trace(quadratic, PARAMS, A, key=jax.random.key(0), method="exact")
    with pytest.raises(ValueError, match="trace: expected num_samples to be an int >= 3"):
        hessian.trace(quadratic, PARAMS, A, key=jax.random.key(0), num_samples=2,
                      method="hutch++")
    with pytest.raises(ValueError, match=rf"spectral_density: expected num_steps .*\[1, {N}\]"):
        hessian.spectral_density(quadratic, PARAMS, A, key=jax.random.key(0), num_steps=N + 1)
    with pytest.raises(ValueError, match="spectral_density: expected sigma"):
        hessian.spectral_density(quadratic, PARAMS, A, key=jax.random.key(0), sigma=-1.0)
