"""Shapley values: exact answers, the Shapley axioms, convergence, chunking, sharding, bad input."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from jdl import parallel
from jdl.attribution import patch_groups, shapley
from jdl.attribution.shapley import _shapley_jit

KEY = jax.random.key(0)
METHODS = ("exact", "permutation", "kernel")


def _mlp(params, rows):
    w1, b1, w2 = params
    return jnp.tanh(rows @ w1 + b1) @ w2


def _mlp_params(d, k=None, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w2_shape = (8,) if k is None else (8, k)
    return (jax.random.normal(k1, (d, 8)), 0.3 * jax.random.normal(k2, (8,)),
            jax.random.normal(k3, w2_shape))


def _reference_by_permutations(f, x, background):
    """Mean marginal contribution over all d! orderings (numpy, one instance)."""
    d = x.shape[0]
    perms = np.array(list(itertools.permutations(range(d))))
    masks = np.zeros((len(perms), d + 1, d), bool)
    for j in range(1, d + 1):
        masks[np.arange(len(perms))[:, None], j, perms[:, :j]] = True
    rows = np.where(masks[:, :, None, :], x[None, None, None, :], background[None, None])
    v = np.asarray(f(jnp.asarray(rows.reshape(-1, d)))).reshape(len(perms), d + 1, -1).mean(2)
    gains = np.diff(v, axis=1)
    phi = np.zeros(d)
    for p, g in zip(perms, gains):
        phi[p] += g
    return phi / len(perms)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("background_rows, max_rows", [(None, 4096), (5, 3)])
def test_linear_model_is_exact(method, background_rows, max_rows):
    w = jnp.array([1.0, -2.0, 3.0, 0.5, 0.0])
    x = jax.random.normal(jax.random.key(1), (3, 5))
    if background_rows is None:
        baseline = jnp.array([0.5, 0.0, 1.0, -1.0, 2.0])
        reference = baseline
    else:
        baseline = jax.random.normal(jax.random.key(2), (background_rows, 5))
        reference = baseline.mean(0)
    result = shapley(lambda r: r @ w + 1.0, x, baseline, key=KEY, method=method,
                     num_permutations=4, max_rows=max_rows)
    np.testing.assert_allclose(result.values, w[None, :] * (x - reference[None, :]), atol=1e-10)


def test_product_is_exact_with_one_antithetic_pair():
    x = jnp.array([2.0, 3.0])
    result = shapley(lambda r: r[:, 0] * r[:, 1], x, jnp.zeros(2), key=KEY, num_permutations=2)
    np.testing.assert_allclose(result.values, [3.0, 3.0], atol=1e-12)
    assert result.std_error is None                  # one pair: one independent sample


@pytest.mark.parametrize("method", ["exact", "permutation"])
def test_dummy_feature_gets_zero(method):
    params = _mlp_params(3)
    f = Partial(lambda p, r: _mlp(p, r[:, :3]), params)     # feature 3 is never read
    x = jax.random.normal(jax.random.key(3), (4, 4))
    background = jax.random.normal(jax.random.key(4), (6, 4))
    values = shapley(f, x, background, key=KEY, method=method, num_permutations=8).values
    np.testing.assert_allclose(values[:, 3], 0.0, atol=1e-12)
    assert np.abs(values[:, :3]).max() > 1e-2


def test_symmetric_features_are_equal():
    def f(r):
        return jnp.tanh(r[:, 0] + r[:, 1]) * r[:, 2] + r[:, 0] * r[:, 1] + r[:, 3]

    x = jnp.array([[0.7, 0.7, -1.2, 0.4], [-0.3, -0.3, 2.0, 1.0]])
    background = jnp.array([[0.1, 0.1, 0.5, 0.0], [1.0, 1.0, -0.5, 2.0]])
    values = shapley(f, x, background, method="exact").values
    np.testing.assert_allclose(values[:, 0], values[:, 1], atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_linearity_in_the_model(method):
    pf, pg = _mlp_params(4, seed=1), _mlp_params(4, seed=2)
    x = jax.random.normal(jax.random.key(5), (3, 4))
    background = jax.random.normal(jax.random.key(6), (4, 4))
    kwargs = dict(key=KEY, method=method, num_permutations=6)
    phi_f = shapley(Partial(_mlp, pf), x, background, **kwargs).values
    phi_g = shapley(Partial(_mlp, pg), x, background, **kwargs).values
    both = shapley(lambda r: 2.0 * _mlp(pf, r) - _mlp(pg, r), x, background, **kwargs).values
    np.testing.assert_allclose(both, 2.0 * phi_f - phi_g, atol=1e-10)


@pytest.mark.parametrize("d", [3, 5, 7])
def test_exact_by_subsets_equals_exact_by_permutations(d):
    params = _mlp_params(d, seed=d)
    f = Partial(_mlp, params)
    x = jax.random.normal(jax.random.key(7), (d,))
    background = jax.random.normal(jax.random.key(8), (3, d))
    values = shapley(f, x, background, method="exact").values
    reference = _reference_by_permutations(f, np.asarray(x), np.asarray(background))
    np.testing.assert_allclose(values, reference, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_efficiency_holds_for_every_method(method):
    f = Partial(_mlp, _mlp_params(6, k=3))
    x = jax.random.normal(jax.random.key(9), (4, 6))
    background = jax.random.normal(jax.random.key(10), (5, 6))
    result = shapley(f, x, background, key=KEY, method=method, num_permutations=4)
    assert result.values.shape == (4, 6, 3)
    np.testing.assert_allclose(result.values.sum(1), result.prediction - result.base_value[None],
                               atol=1e-10)
    np.testing.assert_allclose(result.prediction, f(x), atol=1e-12)
    np.testing.assert_allclose(result.base_value, f(background).mean(0), atol=1e-12)


def test_multi_output_equals_each_output_alone():
    params = _mlp_params(5, k=2)
    x = jax.random.normal(jax.random.key(11), (2, 5))
    background = jax.random.normal(jax.random.key(12), (3, 5))
    both = shapley(Partial(_mlp, params), x, background, key=KEY, num_permutations=4).values
    for j in range(2):
        one = shapley(lambda r, j=j: _mlp(params, r)[:, j], x, background, key=KEY,
                      num_permutations=4).values
        np.testing.assert_allclose(both[..., j], one, atol=1e-12)


@pytest.mark.parametrize("method", ["permutation", "kernel"])
def test_sampling_converges_to_exact(method):
    f = Partial(_mlp, _mlp_params(6, seed=3))
    x = jax.random.normal(jax.random.key(13), (4, 6))
    background = jax.random.normal(jax.random.key(14), (4, 6))
    exact = shapley(f, x, background, method="exact").values
    errors, std_errors = [], []
    for m in (8, 512):
        result = shapley(f, x, background, key=KEY, method=method, num_permutations=m)
        errors.append(float(jnp.sqrt(jnp.mean((result.values - exact) ** 2))))
        std_errors.append(float(jnp.sqrt(jnp.mean(result.std_error ** 2))))
        # the reported standard error describes the actual error
        assert 0.3 < errors[-1] / std_errors[-1] < 3.0
    assert errors[1] < errors[0] / 3.0          # sqrt(64) = 8 in expectation


def test_standard_error_matches_spread_over_keys():
    f = Partial(_mlp, _mlp_params(5, seed=4))
    x = jax.random.normal(jax.random.key(15), (5,))
    background = jax.random.normal(jax.random.key(16), (3, 5))
    runs = [shapley(f, x, background, key=jax.random.key(s), num_permutations=8)
            for s in range(40)]
    spread = np.std([r.values for r in runs], axis=0, ddof=1)
    reported = np.mean([r.std_error for r in runs], axis=0)
    np.testing.assert_allclose(reported, spread, rtol=0.45)


def test_feature_groups_on_a_linear_model():
    w = jnp.arange(1.0, 17.0)
    x = jax.random.normal(jax.random.key(17), (2, 16))
    groups = patch_groups(4, 4, 2)
    assert groups.shape == (16,) and sorted(set(groups.tolist())) == [0, 1, 2, 3]
    result = shapley(lambda r: r @ w, x, jnp.zeros(16), key=KEY, groups=groups,
                     num_permutations=4)
    expected = np.stack([np.asarray(w * x)[:, groups == g].sum(1) for g in range(4)], axis=1)
    np.testing.assert_allclose(result.values, expected, atol=1e-10)


def test_reproducible_and_independent_of_chunking():
    f = Partial(_mlp, _mlp_params(5, seed=5))
    x = jax.random.normal(jax.random.key(18), (5, 5))
    background = jax.random.normal(jax.random.key(19), (3, 5))
    a = shapley(f, x, background, key=KEY, num_permutations=6, max_rows=4096)
    b = shapley(f, x, background, key=KEY, num_permutations=6, max_rows=7)
    c = shapley(f, x, background, key=jax.random.key(1), num_permutations=6)
    np.testing.assert_allclose(a.values, b.values, atol=1e-12)
    np.testing.assert_allclose(a.std_error, b.std_error, atol=1e-12)
    assert not np.allclose(a.values, c.values)


def test_float32_stays_float32_and_params_change_without_recompiling():
    params = jax.tree.map(lambda a: a.astype(jnp.float32), _mlp_params(4, seed=6))
    x = jax.random.normal(jax.random.key(20), (3, 4), jnp.float32)
    background = jnp.zeros((2, 4), jnp.float32)
    first = shapley(Partial(_mlp, params), x, background, key=KEY, num_permutations=4)
    assert first.values.dtype == jnp.float32
    size = _shapley_jit._cache_size()
    params2 = jax.tree.map(lambda a: 2.0 * a, params)
    second = shapley(Partial(_mlp, params2), x, background, key=KEY, num_permutations=4)
    assert _shapley_jit._cache_size() == size
    assert not np.allclose(first.values, second.values)


@pytest.mark.devices(4)
@pytest.mark.parametrize("method", ["permutation", "exact"])
def test_sharded_batch_gives_the_same_values(method):
    f = Partial(_mlp, _mlp_params(5, k=2, seed=7))
    x = jax.random.normal(jax.random.key(21), (8, 5))
    background = jax.random.normal(jax.random.key(22), (3, 5))
    mesh = parallel.data_mesh(4)
    one = shapley(f, x, background, key=KEY, method=method, num_permutations=4)
    many = shapley(f, parallel.shard_batch(x, mesh), parallel.replicate(background, mesh),
                   key=KEY, method=method, num_permutations=4)
    np.testing.assert_allclose(many.values, one.values, atol=1e-12)


def test_bad_input_raises_clear_errors():
    f = lambda r: r.sum(1)  # noqa: E731
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="shapley: expected baseline"):
        shapley(f, x, jnp.zeros(4), key=KEY)
    with pytest.raises(ValueError, match=r"shapley: expected f to map rows"):
        shapley(lambda r: r[:, :, None] * jnp.ones((1, 1, 2)), x, jnp.zeros(3), key=KEY)
    with pytest.raises(ValueError, match=r"shapley: expected f to map rows"):
        shapley(lambda r: r.sum(), x, jnp.zeros(3), key=KEY)
    with pytest.raises(ValueError, match="use method='permutation'"):
        shapley(f, jnp.ones(21), jnp.zeros(21), method="exact")
    with pytest.raises(ValueError, match="shapley: non-finite model outputs"):
        shapley(lambda r: jnp.log(r[:, 0] - 2.0), x, jnp.zeros(3), key=KEY)
    with pytest.raises(ValueError, match="must be even"):
        shapley(f, x, jnp.zeros(3), key=KEY, num_permutations=3)
    with pytest.raises(ValueError, match="needs a key"):
        shapley(f, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="expected groups numbered"):
        shapley(f, x, jnp.zeros(3), key=KEY, groups=np.array([0, 2, 2]))
    with pytest.raises(ValueError, match="expected method"):
        shapley(f, x, jnp.zeros(3), key=KEY, method="sampling")
    with pytest.raises(TypeError, match="shapley: expected a callable"):
        shapley(np.ones(3), x, jnp.zeros(3), key=KEY)


def test_evaluation_count_matches_the_permutation_budget():
    x = jnp.ones((2, 4))
    result = shapley(lambda r: r.sum(1), x, jnp.zeros((3, 4)), key=KEY, num_permutations=6)
    assert result.num_evaluations == 2 * (6 * 3 * 3 + 1) + 3
    assert math.isclose(float(result.values.sum()), 8.0)


@pytest.mark.parametrize("method, n, m, max_rows", [
    ("permutation", 5, 3, 7), ("permutation", 9, 40, 16), ("exact", 4, 3, 10),
    ("kernel", 3, 2, 5), ("permutation", 2, 1, 1)])
def test_rows_per_model_call_stay_within_max_rows(method, n, m, max_rows):
    seen = []

    def f(rows):
        seen.append(rows.shape[0])                  # recorded while tracing: static shapes
        return jnp.tanh(rows).sum(1)

    x = jax.random.normal(jax.random.key(23), (n, 4))
    background = jax.random.normal(jax.random.key(24), (m, 4))
    result = shapley(f, x, background, key=KEY, method=method, num_permutations=8,
                     max_rows=max_rows)
    assert seen and max(seen) <= max_rows
    reference = shapley(lambda r: jnp.tanh(r).sum(1), x, background, key=KEY, method=method,
                        num_permutations=8)
    np.testing.assert_allclose(result.values, reference.values, atol=1e-12)


@pytest.mark.parametrize("g", [2, 10, 17, 70])  # pairwise counts up to 64 players, a sort above
def test_random_ranks_order_the_keys_random_bits_with_the_index_in_the_low_bits(g):
    from jdl.attribution.shapley import _random_ranks

    key = jax.random.key(7)
    ranks = np.asarray(_random_ranks(key, (3, 5, g)))
    bits = np.asarray(jax.random.bits(key, (3, 5, g), jnp.uint32))
    low = (g - 1).bit_length()
    keys = (bits >> low << low) | np.arange(g, dtype=np.uint32)
    assert len(np.unique(keys[0, 0])) == g
    np.testing.assert_array_equal(ranks, np.argsort(np.argsort(keys, -1), -1))
    np.testing.assert_array_equal(np.sort(ranks, -1), np.broadcast_to(np.arange(g), ranks.shape))
