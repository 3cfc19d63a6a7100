"""jdl.hessian Lanczos and eigenvalues: chosen spectra, a small MLP against dense eigvalsh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import hessian, losses, nn
from jdl.hessian.lanczos import _lanczos
from jdl.hessian.operators import Operator, prepare_data

N = 60


def quadratic(params, batch):
    """``x^T A x / 2`` with ``A`` the single example of the batch: the Hessian is ``A``."""
    return 0.5 * params["x"] @ (batch[0] @ params["x"])


def matrix_with_spectrum(spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum),) * 2))
    return (q * np.asarray(spectrum)) @ q.T


SPECTRA = {
    "negative": np.concatenate([[-7.0, -5.0], np.linspace(-2.0, 3.0, N - 4), [4.0, 6.0]]),
    "repeated": np.concatenate([[-3.0, -3.0], np.linspace(-1.0, 1.0, N - 5), [2.0, 2.0, 2.0]]),
    "clustered": np.concatenate([[-1.0, -0.999, -0.998], np.linspace(0.0, 0.5, N - 6),
                                 [0.998, 0.999, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_quadratic_with_chosen_spectrum(name):
    spectrum = np.sort(SPECTRA[name])
    a = jnp.asarray(matrix_with_spectrum(spectrum))[None]
    params = {"x": jnp.zeros(N)}
    eig = hessian.eigenvalues(quadratic, params, a, k=3, which="both", key=jax.random.key(0),
                              tol=1e-10)
    expected = np.concatenate([spectrum[::-1][:3], spectrum[:3]])
    np.testing.assert_allclose(eig.values, expected, rtol=1e-9, atol=1e-12)
    assert bool(np.all(eig.converged)) and float(eig.residuals.max()) < 1e-9
    vectors = np.asarray(eig.vectors["x"])  # (6, N)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(6), atol=1e-9)
    np.testing.assert_allclose(vectors @ a[0] @ vectors.T, np.diag(expected), atol=1e-9)


def test_multiplicity_check_finds_the_copy_one_krylov_space_misses():
    # One Krylov space holds one copy of 2.0; with a loose tol it converges on
    # [2.0, 1.9, 1.8] before roundoff brings in the other copy. The deflated
    # restart finds it.
    spectrum = np.concatenate([np.linspace(0.0, 1.0, N - 4), [2.0, 2.0, 1.9, 1.8]])
    a = jnp.asarray(matrix_with_spectrum(spectrum, seed=1))[None]
    eig = hessian.eigenvalues(quadratic, {"x": jnp.zeros(N)}, a, k=3, key=jax.random.key(2),
                              tol=1e-3)
    np.testing.assert_allclose(eig.values, [2.0, 2.0, 1.9], rtol=1e-4)
    vectors = np.asarray(eig.vectors["x"])
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(3), atol=1e-3)


def test_lanczos_full_length_gives_the_whole_spectrum_and_weights():
    spectrum = SPECTRA["negative"]
    a = jnp.asarray(matrix_with_spectrum(spectrum))[None]
    result = hessian.lanczos(quadratic, {"x": jnp.zeros(N)}, a, num_steps=N, key=jax.random.key(3))
    np.testing.assert_allclose(result.ritz_values, np.sort(spectrum), atol=1e-10)
    np.testing.assert_allclose(result.ritz_weights.sum(), 1.0, rtol=1e-12)
    basis = np.asarray(result.basis)
    np.testing.assert_allclose(basis @ basis.T, np.eye(N), atol=1e-10)
    t = np.diag(result.alphas) + np.diag(result.betas, 1) + np.diag(result.betas, -1)
    np.testing.assert_allclose(basis @ a[0] @ basis.T, t, atol=1e-10)


def test_lanczos_without_basis_finds_the_extremes():
    spectrum = SPECTRA["negative"]
    a = jnp.asarray(matrix_with_spectrum(spectrum))[None]
    result = hessian.lanczos(quadratic, {"x": jnp.zeros(N)}, a, num_steps=40,
                             key=jax.random.key(3), reorthogonalize=False)
    assert result.basis is None
    np.testing.assert_allclose([result.ritz_values[0], result.ritz_values[-1]], [-7.0, 6.0],
                               rtol=1e-10)


def test_lanczos_compiles_once_whatever_the_number_of_steps():
    traces = []

    def counted(params, batch):
        traces.append(1)
        return quadratic(params, batch)

    a = prepare_data("test", jnp.asarray(matrix_with_spectrum(SPECTRA["negative"]))[None])
    params = {"x": jnp.zeros(N)}
    sizes = []
    for num_steps in (3, 30):
        traces.clear()
        jaxpr = jax.make_jaxpr(_lanczos.__wrapped__, static_argnums=(0, 4, 5))(
            Operator(counted), params, a, jax.random.key(0), num_steps, True)
        sizes.append((len(traces), len(jaxpr.eqns)))
    assert sizes[0] == sizes[1]  # the loss is traced, and the program built, the same way


MODEL = nn.serial(nn.dense(20), nn.activation("tanh"), nn.dense(20), nn.activation("tanh"),
                  nn.dense(3))
_, PARAMS, _ = MODEL.init(jax.random.key(4), (-1, 6))
X = jax.random.normal(jax.random.key(5), (80, 6))
Y = jnp.arange(80) % 3


def mlp_loss(params, batch):
    return losses.softmax_cross_entropy(MODEL.apply(params, batch[0])[0], batch[1])


@pytest.fixture(scope="module")
def dense_spectrum():
    matrix = np.asarray(hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y)))
    return matrix, np.linalg.eigvalsh(matrix)


def test_mlp_top_and_bottom_five_match_dense_eigvalsh(dense_spectrum):
    matrix, exact = dense_spectrum
    assert matrix.shape[0] <= 2000 and exact[0] < 0  # a saddle: negative eigenvalues
    eig = hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), k=5, which="both",
                              key=jax.random.key(6), tol=1e-9)
    expected = np.concatenate([exact[::-1][:5], exact[:5]])
    np.testing.assert_allclose(eig.values, expected, rtol=1e-6)
    # the pytree's leaves, in ravel order, give the flat eigenvectors
    flat = np.concatenate([np.asarray(leaf).reshape(10, -1)
                           for leaf in jax.tree.leaves(eig.vectors)], axis=1)
    residuals = np.linalg.norm(flat @ matrix - eig.values[:, None] * flat, axis=1)
    np.testing.assert_allclose(eig.residuals, residuals, atol=1e-10)
    assert eig.vectors["0_dense"]["w"].shape == (10, 6, 20)


def test_same_key_same_answer_and_keys_agree(dense_spectrum):
    first = hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), k=2, key=jax.random.key(7), tol=1e-8)
    again = hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), k=2, key=jax.random.key(7), tol=1e-8)
    other = hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), k=2, key=jax.random.key(8), tol=1e-8)
    np.testing.assert_array_equal(first.values, again.values)
    np.testing.assert_array_equal(first.vectors["2_dense"]["w"], again.vectors["2_dense"]["w"])
    np.testing.assert_allclose(other.values, first.values, rtol=1e-8)
    np.testing.assert_allclose(first.values, dense_spectrum[1][::-1][:2], rtol=1e-8)


def test_float32_stays_float32_and_is_accurate(dense_spectrum):
    params32 = jax.tree.map(lambda p: p.astype(jnp.float32), PARAMS)
    eig = hessian.eigenvalues(mlp_loss, params32, (X.astype(jnp.float32), Y), k=2,
                              which="both", key=jax.random.key(9), tol=1e-4)
    assert eig.values.dtype == jnp.float32
    assert eig.vectors["0_dense"]["w"].dtype == jnp.float32
    exact = dense_spectrum[1]
    np.testing.assert_allclose(eig.values, [exact[-1], exact[-2], exact[0], exact[1]],
                               rtol=1e-4)
