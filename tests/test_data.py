"""jdl.data: bundled datasets, deterministic splits, transforms fitted on training data, batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jdl import data

SIZES = {"digits": (1797, 64, 10), "breast_cancer": (569, 30, 2), "diabetes": (442, 10, 0),
         "iris": (150, 4, 3), "wine": (178, 13, 3)}


@pytest.mark.parametrize("name", data.DATASETS)
def test_load_shapes_and_partition(name):
    n, d, k = SIZES[name]
    ds = data.load(name, key=jax.random.key(3))
    assert ds.num_classes == k and ds.name == name and len(ds.feature_names) == d
    xs = [ds.x_train, ds.x_val, ds.x_test]
    assert sum(x.shape[0] for x in xs) == n
    assert all(x.shape[1] == d and x.dtype == jnp.float32 for x in xs)
    # The three splits partition the raw rows: every row appears exactly once.
    rows = np.concatenate([np.asarray(x, np.float64) for x in xs])
    raw = data._raw(name)[0]
    key = lambda a: np.round(a, 4).tobytes()  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, raw.astype(np.float32).astype(np.float64)))
    if k:
        assert ds.y_train.dtype == jnp.int32 and int(ds.y_train.max()) == k - 1


def test_split_is_deterministic_in_the_key():
    a, b = data.load("iris", key=jax.random.key(1)), data.load("iris", key=jax.random.key(1))
    c = data.load("iris", key=jax.random.key(2))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_digits_images_and_scale():
    ds = data.load("digits", images=True)
    assert ds.x_train.shape[1:] == (8, 8, 1)
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0


def test_diabetes_is_raw_regression():
    ds = data.load("diabetes")
    assert ds.y_train.dtype == jnp.float32
    assert float(ds.x_train[:, 0].mean()) > 20  # age in years, not sklearn's pre-scaled copy


@pytest.mark.parametrize("call,match", [
    (lambda: data.load("mnist"), "unknown dataset"),
    (lambda: data.load("iris", split=(0.5, 0.5, 0.5)), "summing to 1"),
    (lambda: data.load("iris", images=True), "images=True"),
    (lambda: data.fit_whiten(jnp.ones((5, 2)), method="svd"), "method"),
    (lambda: data.fit_center(jnp.ones(5)), r"shape \(n >= 2"),
    (lambda: data.batch_indices(jax.random.key(0), 10, 11), "batch_size"),
    (lambda: data.permutation(jax.random.key(0), 0), "1 <= n <= 2"),
    (lambda: data.permutation(jax.random.key(0), 2.0), "int n"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_transforms_are_fitted_on_training_data():
    ds = data.load("wine", dtype=jnp.float64)
    center = data.fit_center(ds.x_train)
    np.testing.assert_allclose(center(ds.x_train).mean(0), 0, atol=1e-10)
    assert np.abs(center(ds.x_val).mean(0)).max() > 1e-3  # validation data is not re-centred
    std = data.fit_standardize(ds.x_train)
    np.testing.assert_allclose(std(ds.x_train).std(0), 1, atol=1e-10)
    for method in ("pca", "zca"):
        z = data.fit_whiten(ds.x_train, method=method, eps=0.0)(ds.x_train)
        np.testing.assert_allclose(z.T @ z / z.shape[0], np.eye(13), atol=1e-8)


def test_zca_is_the_symmetric_whitening():
    x = jax.random.normal(jax.random.key(0), (500, 4)) @ jnp.array(
        [[2.0, 0.3, 0, 0], [0, 1, 0.5, 0], [0, 0, 0.2, 0], [0.1, 0, 0, 3]])
    w = data.fit_whiten(x, method="zca", eps=0.0).matrix
    np.testing.assert_allclose(w, w.T, atol=1e-10)
    cov = np.cov(np.asarray(x).T, bias=True)
    np.testing.assert_allclose(w @ w, np.linalg.inv(cov), rtol=1e-8)


def test_pca_projects_on_the_top_eigenvectors():
    ds = data.load("wine", dtype=jnp.float64)
    pca = data.fit_pca(ds.x_train, 3)
    scores = pca(ds.x_train)
    np.testing.assert_allclose(pca.matrix.T @ pca.matrix, np.eye(3), atol=1e-12)
    cov = np.cov(np.asarray(ds.x_train).T, bias=True)
    top = np.sort(np.linalg.eigvalsh(cov))[::-1][:3]
    np.testing.assert_allclose(np.var(scores, axis=0), top, rtol=1e-9)
    with pytest.raises(ValueError, match="fit_pca: expected 1 <= components <= 13"):
        data.fit_pca(ds.x_train, 14)


@pytest.mark.parametrize("n", [1, 2, 7, 256, 257, 1078, 70_000])
def test_permutation_is_a_permutation(n):
    perm = np.asarray(jax.jit(data.permutation, static_argnums=1)(jax.random.key(n), n))
    assert perm.dtype == np.int32 and np.array_equal(np.sort(perm), np.arange(n))
    assert n < 7 or not np.array_equal(perm, np.arange(n))


def _chi_square_p(counts: np.ndarray) -> float:
    """p-value of Pearson's chi-square test of equal expected counts."""
    return float(stats.chisquare(counts).pvalue)


def test_permutation_of_four_is_uniform_over_all_24():
    perms = np.asarray(jax.jit(jax.vmap(lambda k: data.permutation(k, 4)))(
        jax.random.split(jax.random.key(0), 48_000)))
    codes = perms @ 4 ** np.arange(4)
    counts = np.unique(codes, return_counts=True)[1]
    assert counts.size == 24 and _chi_square_p(counts) > 1e-3


@pytest.mark.parametrize("n,rounds", [(5, 1), (1078, 2), (70_000, 4)])
def test_permutation_is_stable_sorts_by_the_random_bits(n, rounds):
    """Each round is a stable argsort of the random bits above the position bits."""
    key = jax.random.key(3)
    width = (n - 1).bit_length()
    expected = np.arange(n)
    for k in jax.random.split(key, rounds):
        digits = np.asarray(jax.random.bits(k, (n,), jnp.uint32)) >> width
        expected = expected[np.argsort(digits, kind="stable")]
    np.testing.assert_array_equal(data.permutation(key, n), expected)


def test_permutation_with_several_sort_rounds_is_uniform():
    """n = 70,000 needs 17 position bits, so 15 random bits a round and 4 rounds."""
    n, draws = 70_000, 400
    perms = np.asarray(jax.jit(jax.vmap(lambda k: data.permutation(k, n)))(
        jax.random.split(jax.random.key(1), draws)))
    # where element 0 and the last element land: uniform over 20 bins of positions
    for element in (0, n - 1):
        where = np.argmax(perms == element, axis=1)
        assert _chi_square_p(np.bincount(where * 20 // n, minlength=20)) > 1e-3
    # neighbours in the input are independent in the output: the order of 0 and 1
    # is a fair coin, and the first position holds any element (20 bins)
    first_before = np.mean(np.argmax(perms == 0, axis=1) < np.argmax(perms == 1, axis=1))
    assert abs(first_before - 0.5) < 4 * 0.5 / np.sqrt(draws)
    assert _chi_square_p(np.bincount(perms[:, 0] * 20 // n, minlength=20)) > 1e-3


@pytest.mark.parametrize("n,b,drop_last", [(10, 3, True), (10, 3, False), (12, 4, True)])
def test_batch_indices_is_a_permutation(n, b, drop_last):
    idx = np.asarray(jax.jit(data.batch_indices, static_argnums=(1, 2, 3))(
        jax.random.key(0), n, b, drop_last))
    if drop_last:
        assert idx.shape == (n // b, b) and len(set(idx.ravel())) == idx.size
    else:
        assert idx.shape == (-(-n // b), b) and set(idx.ravel()) == set(range(n))
        assert len(set(idx.ravel()[:n])) == n  # the permutation first, padding after


def test_minibatches_keeps_pairs_together():
    x = jnp.arange(20.0).reshape(10, 2)
    y = jnp.arange(10)
    xb, yb = data.minibatches(jax.random.key(4), (x, y), 5)
    assert xb.shape == (2, 5, 2) and yb.shape == (2, 5)
    np.testing.assert_array_equal(xb[..., 0], 2 * yb)
    with pytest.raises(ValueError, match="same first axis"):
        data.minibatches(jax.random.key(0), (x, y[:5]), 5)
