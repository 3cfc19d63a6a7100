"""Tests for jdl.losses: known values, stability, finite-difference gradients, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jdl import losses

KEY = jax.random.key(0)


def _normal(seed, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _pm1(seed, shape):
    return jnp.where(jax.random.bernoulli(jax.random.key(seed), 0.5, shape), 1.0, -1.0)


def _log_cosh_reference(z):
    """log cosh in float64 from independent formulas (cosh z = 1 + 2 sinh^2(z/2))."""
    z = np.asarray(z, np.float64)
    a = np.abs(z)
    with np.errstate(over="ignore"):
        near = np.log1p(2 * np.sinh(np.minimum(a, 1) / 2) ** 2)
    return np.where(a < 1, near, a - np.log(2) + np.log1p(np.exp(-2 * a)))


# --- reductions and bad input -------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_known_values(reduction):
    y = jnp.array([[1.0, 2.0], [3.0, 5.0]])
    t = jnp.array([[0.0, 0.0], [3.0, 3.0]])
    per_example = np.array([(1 + 4) / 2, (0 + 4) / 2])
    expected = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}
    np.testing.assert_allclose(losses.mse(y, t, reduction=reduction), expected[reduction])


def _two_arg_losses():
    y = jnp.ones((4, 3))
    return {
        "mse": lambda a, b: losses.mse(a, b),
        "log_cosh": lambda a, b: losses.log_cosh(a, b),
        "logloss": lambda a, b: losses.logloss(a, b),
        "binary_cross_entropy": lambda a, b: losses.binary_cross_entropy(
            a, b, from_logits=True),
        "reconstruction": lambda a, b: losses.reconstruction(a, b),
    }, y


@pytest.mark.parametrize("name", ["mse", "log_cosh", "logloss", "binary_cross_entropy",
                                  "reconstruction"])
def test_shape_mismatch_names_function_and_shapes(name):
    fns, y = _two_arg_losses()
    with pytest.raises(ValueError, match=rf"{name}: .*\(4, 3\).*\(4, 2\)"):
        fns[name](y, jnp.ones((4, 2)))


@pytest.mark.parametrize("fn", [losses.mse, losses.log_cosh, losses.reconstruction])
def test_unknown_reduction(fn):
    with pytest.raises(ValueError, match="reduction"):
        fn(jnp.ones(3), jnp.ones(3), reduction="avg")


def test_scalar_input_rejected():
    with pytest.raises(ValueError, match="mse: .*batch axis"):
        losses.mse(1.0, 2.0)


@pytest.mark.parametrize("fn", [
    lambda y, t: losses.mse(y, t),
    lambda y, t: losses.log_cosh(y, t, 2.0),
    lambda y, t: losses.reconstruction(y, t),
    lambda y, t: losses.binary_cross_entropy(y, (t > 0).astype(y.dtype), from_logits=True),
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_equals_eager_and_dtype_kept(fn, dtype):
    y, t = _normal(1, (6, 3), dtype), _normal(2, (6, 3), dtype)
    eager = fn(y, t)
    jitted = jax.jit(fn)(y, t)
    assert eager.dtype == dtype and jitted.dtype == dtype
    np.testing.assert_allclose(jitted, eager, rtol=1e-6 if dtype == jnp.float32 else 1e-12)


# --- log-cosh -----------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_log_cosh_float32_matches_float64_reference(beta):
    d = np.logspace(-4, 4, 801).astype(np.float32)
    d = np.concatenate([d, -d])[:, None]
    t = np.full_like(d, 0.25)
    y = (d + t).astype(np.float32)
    values = losses.log_cosh(y, t, beta, reduction="none")
    assert values.dtype == jnp.float32
    assert np.all(np.isfinite(values))
    z = beta * (y.astype(np.float64) - t)  # the float32 difference, exactly, in float64
    reference = _log_cosh_reference(z)[:, 0] / beta
    np.testing.assert_allclose(np.asarray(values, np.float64), reference, rtol=1e-6)


def test_log_cosh_float64_precision():
    z = np.concatenate([np.logspace(-6, 4, 500), np.linspace(0.1, 3, 300)])[:, None]
    values = losses.log_cosh(z, np.zeros_like(z), reduction="none")
    np.testing.assert_allclose(values, _log_cosh_reference(z)[:, 0], rtol=1e-13)


@pytest.mark.parametrize("z", [1e-4, 1e-3, 1e-2, 0.1])
def test_log_cosh_small_is_quadratic(z):
    value = float(losses.log_cosh(jnp.array([z]), jnp.array([0.0])))
    # log cosh z = z^2/2 - z^4/12 + O(z^6)
    assert abs(value - z * z / 2) <= 1.01 * z**4 / 12


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_log_cosh_large_is_linear(dtype):
    y = jnp.array([1e4, -1e4, 50.0], dtype)
    values = losses.log_cosh(y, jnp.zeros_like(y), reduction="none")
    np.testing.assert_allclose(values, jnp.abs(y) - np.log(2), rtol=1e-7)


@pytest.mark.parametrize("beta", [0.5, 2.0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_log_cosh_gradient_is_tanh(beta, dtype):
    y = jnp.array([-1e4, -3.0, -1e-3, 0.0, 2e-4, 0.7, 5.0, 1e4], dtype)
    t = jnp.full_like(y, 0.5)
    grad = jax.grad(lambda y: losses.log_cosh(y, t, beta, reduction="sum"))(y)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, jnp.tanh(beta * (y - t)), rtol=1e-6, atol=1e-7)


def test_log_cosh_vmapped_over_beta():
    y, t = _normal(40, (4, 2)), _normal(41, (4, 2))
    betas = jnp.array([0.3, 1.0, 4.0])
    swept = jax.vmap(lambda b: losses.log_cosh(y, t, b))(betas)
    np.testing.assert_allclose(swept, [losses.log_cosh(y, t, float(b)) for b in betas],
                               rtol=1e-13)


@pytest.mark.parametrize("call, match", [
    (lambda: losses.log_cosh(jnp.ones(2), jnp.ones(2), beta=0.0), "log_cosh: expected beta > 0"),
    (lambda: losses.sparse_reconstruction(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 1)),
                                          lam=-0.1), "sparse_reconstruction: expected lam >= 0"),
    (lambda: losses.denoising_loss(lambda p, x: x, None, jnp.ones((2, 3)), KEY, noise=-1.0),
     "denoising_loss: expected noise >= 0"),
    (lambda: losses.weight_restriction({}, 0.1), "weight_restriction: expected at least one"),
    (lambda: losses.sparse_reconstruction(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((3, 1))),
     r"sparse_reconstruction: expected code with batch axis 2, got shape \(3, 1\)"),
])
def test_bad_hyperparameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- logloss and binary cross-entropy -----------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_logloss_large_margins(dtype):
    y = jnp.array([1e4, -1e4, 1e4, -1e4, 30.0, -30.0], dtype)
    t = jnp.array([1.0, -1.0, -1.0, 1.0, 1.0, 1.0], dtype)
    values = losses.logloss(y, t, reduction="none")
    assert values.dtype == dtype and np.all(np.isfinite(values))
    margin = np.asarray(t * y, np.float64)
    expected = np.where(margin > 0, np.log1p(np.exp(-np.abs(margin))),
                        -margin + np.log1p(np.exp(-np.abs(margin))))
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-30)


def test_logloss_known_value():
    np.testing.assert_allclose(losses.logloss(jnp.array([0.0]), jnp.array([1.0])), np.log(2))


def test_logloss_rejects_01_labels_but_not_under_jit():
    y, t = jnp.ones(3), jnp.array([0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"logloss: expected labels t in \{-1, \+1\}"):
        losses.logloss(y, t)
    # under jit the values cannot be checked (documented): no error
    assert np.isfinite(jax.jit(losses.logloss)(y, t))


@pytest.mark.parametrize("shape", [(5,), (4, 3)])
def test_binary_cross_entropy_with_01_labels_equals_logloss(shape):
    y, t = 3 * _normal(3, shape), _pm1(4, shape)
    bce = losses.binary_cross_entropy(y, (t + 1) / 2, from_logits=True, reduction="none")
    np.testing.assert_allclose(bce, losses.logloss(y, t, reduction="none"), rtol=1e-13)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_binary_cross_entropy_gradient_is_sigmoid_minus_target(t):
    """d/dy BCE(y, t) = sigmoid(y) - t, also at y = 0 and at large |y|."""
    y = jnp.array([-800.0, -3.0, 0.0, 2.0, 800.0])
    tt = jnp.full_like(y, t)
    grad = jax.grad(lambda y: losses.binary_cross_entropy(y, tt, from_logits=True,
                                                          reduction="sum"))(y)
    np.testing.assert_allclose(grad, jax.nn.sigmoid(y) - t, rtol=1e-12, atol=1e-300)


def test_binary_cross_entropy_probabilities_equal_logits():
    y, t = _normal(5, (6, 2)), jax.random.uniform(jax.random.key(6), (6, 2), jnp.float64)
    from_probs = losses.binary_cross_entropy(jax.nn.sigmoid(y), t, reduction="none")
    from_logits = losses.binary_cross_entropy(y, t, from_logits=True, reduction="none")
    np.testing.assert_allclose(from_probs, from_logits, rtol=1e-12)
    manual = -(t * jnp.log(jax.nn.sigmoid(y)) + (1 - t) * jnp.log(1 - jax.nn.sigmoid(y)))
    np.testing.assert_allclose(from_probs, manual.mean(axis=1), rtol=1e-12)


def test_binary_cross_entropy_extreme_logits_and_edges():
    y = jnp.array([1e4, -1e4, 1e4], jnp.float32)
    t = jnp.array([1.0, 0.0, 0.0], jnp.float32)
    values = losses.binary_cross_entropy(y, t, from_logits=True, reduction="none")
    np.testing.assert_allclose(values, [0.0, 0.0, 1e4], rtol=1e-7)
    # p = t exactly: 0 log 0 counts as 0
    p = jnp.array([0.0, 1.0])
    np.testing.assert_allclose(losses.binary_cross_entropy(p, p, reduction="none"), [0.0, 0.0])


@pytest.mark.parametrize("p, t, what", [
    (jnp.array([0.5, 1.5]), jnp.array([0.0, 1.0]), "probabilities"),
    (jnp.array([0.5, 0.5]), jnp.array([-1.0, 1.0]), "targets"),
])
def test_binary_cross_entropy_rejects_out_of_range(p, t, what):
    with pytest.raises(ValueError, match=f"binary_cross_entropy: expected {what}"):
        losses.binary_cross_entropy(p, t)


# --- softmax cross-entropy ----------------------------------------------------


@pytest.mark.parametrize("batch, classes", [(1, 2), (7, 5), (16, 10)])
def test_cross_entropy_is_minus_log_softmax_at_label(batch, classes):
    logits = 3 * _normal(7, (batch, classes))
    labels = jax.random.randint(jax.random.key(8), (batch,), 0, classes)
    values = losses.softmax_cross_entropy(logits, labels, reduction="none")
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(values, -np.log(probs[np.arange(batch), labels]), rtol=1e-12)
    one_hot = jax.nn.one_hot(labels, classes, dtype=logits.dtype)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, one_hot, reduction="none"),
                               values, rtol=1e-12)


def test_cross_entropy_soft_labels_and_sequences():
    logits = _normal(9, (3, 4, 5))
    soft = jax.nn.softmax(_normal(10, (3, 4, 5)), axis=-1)
    expected = -(soft * jax.nn.log_softmax(logits, axis=-1)).sum(-1).mean(-1)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, soft, reduction="none"),
                               expected, rtol=1e-12)
    labels = jax.random.randint(jax.random.key(11), (3, 4), 0, 5)
    one_hot = jax.nn.one_hot(labels, 5, dtype=logits.dtype)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels),
                               losses.softmax_cross_entropy(logits, one_hot), rtol=1e-12)


def test_cross_entropy_large_logits_finite():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], jnp.float32)
    values = losses.softmax_cross_entropy(logits, jnp.array([0, 0]), reduction="none")
    np.testing.assert_allclose(values, [0.0, 2e4], rtol=1e-7)


def test_cross_entropy_label_errors():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: .*class labels in \[0, 4\)"):
        losses.softmax_cross_entropy(logits, jnp.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: .*\(3, 4\).*\(3, 2\)"):
        losses.softmax_cross_entropy(logits, jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="softmax_cross_entropy: expected integer class labels"):
        losses.softmax_cross_entropy(logits, jnp.array([0.0, 1.0, 2.0]))


def test_cross_entropy_traced_out_of_range_label_gives_nan():
    logits = _normal(12, (3, 4))
    values = jax.jit(lambda lo, la: losses.softmax_cross_entropy(lo, la, reduction="none"))(
        logits, jnp.array([1, 7, -1]))
    assert np.isfinite(values[0]) and np.isnan(values[1]) and np.isnan(values[2])


# --- weighted losses ----------------------------------------------------------


def test_weighted_known_value_and_normalisation():
    values = jnp.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(losses.weighted(values, jnp.array([1.0, 1.0, 2.0])),
                               (1 + 2 + 8) / 4)
    np.testing.assert_allclose(losses.weighted(values, jnp.ones(3)), values.mean())
    np.testing.assert_allclose(losses.weighted(values, 10 * jnp.array([1.0, 1.0, 2.0])),
                               (1 + 2 + 8) / 4)


def test_weighted_by_source_equals_per_example_weights():
    values = jax.random.uniform(jax.random.key(13), (10,), jnp.float64)
    source_ids = jax.random.randint(jax.random.key(14), (10,), 0, 3)
    source_weights = jnp.array([1.0, 0.3, 0.0])
    by_source = losses.weighted(values, source_ids=source_ids, source_weights=source_weights)
    np.testing.assert_allclose(by_source, losses.weighted(values, source_weights[source_ids]))
    jitted = jax.jit(lambda v, s, w: losses.weighted(v, source_ids=s, source_weights=w))
    np.testing.assert_allclose(jitted(values, source_ids, source_weights), by_source)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "either weights"),
    ({"weights": jnp.ones(3), "source_weights": jnp.ones(2)}, "either weights"),
    ({"source_ids": jnp.array([0, 1, 0])}, "either weights"),
    ({"weights": jnp.ones(2)}, r"weights of shape \(3,\), got \(2,\)"),
    ({"weights": jnp.array([1.0, -1.0, 1.0])}, "non-negative"),
    ({"weights": jnp.zeros(3)}, "positive sum"),
    ({"source_ids": jnp.array([0, 2, 0]), "source_weights": jnp.ones(2)}, r"in \[0, 2\)"),
])
def test_weighted_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=f"weighted: .*{match}"):
        losses.weighted(jnp.ones(3), **kwargs)


# --- expected cost and the Bayes decision -------------------------------------


def test_expected_cost_known_values():
    probs = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = jnp.array([0, 1])
    zero_one = 1 - jnp.eye(3)
    np.testing.assert_allclose(
        losses.expected_cost(probs, labels, zero_one, reduction="none"), [0.3, 0.9])
    cost = jnp.array([[0.0, 1.0, 5.0], [2.0, 0.0, 1.0], [10.0, 3.0, 0.0]])
    np.testing.assert_allclose(
        losses.expected_cost(probs, labels, cost, reduction="none"),
        [0.2 * 1 + 0.1 * 5, 0.1 * 2 + 0.8 * 1])
    logits = jnp.log(probs)
    np.testing.assert_allclose(losses.expected_cost(logits, labels, cost, from_logits=True),
                               losses.expected_cost(probs, labels, cost), rtol=1e-12)


def test_expected_cost_bad_input():
    probs = jnp.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"expected_cost: .*\(2, 3\).*\(2, 2\)"):
        losses.expected_cost(probs, jnp.array([0, 1]), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"expected_cost: expected class labels in \[0, 3\)"):
        losses.expected_cost(probs, jnp.array([0, 3]), jnp.ones((3, 3)))
    with pytest.raises(TypeError, match="expected_cost: expected integer labels"):
        losses.expected_cost(probs, jnp.array([0.0, 1.0]), jnp.ones((3, 3)))


def test_bayes_decision_known_answers():
    # zero-one cost: the most probable class
    probs = jax.nn.softmax(_normal(15, (20, 4)), axis=-1)
    np.testing.assert_array_equal(losses.bayes_decision(probs, 1 - jnp.eye(4)),
                                  jnp.argmax(probs, axis=-1))
    # missing a positive (truth 1, decide 0) costs 10, a false alarm costs 1
    cost = jnp.array([[0.0, 1.0], [10.0, 0.0]])
    # expected costs: deciding 0 -> 3.0 and 0.5; deciding 1 -> 0.7 and 0.95
    p = jnp.array([[0.7, 0.3], [0.95, 0.05]])
    np.testing.assert_array_equal(losses.bayes_decision(p, cost), [1, 0])


def test_bayes_decision_minimises_expected_cost_of_each_decision():
    probs = jax.nn.softmax(_normal(16, (30, 5)), axis=-1)
    cost = jax.random.uniform(jax.random.key(17), (5, 5), jnp.float64)
    decisions = losses.bayes_decision(probs, cost)
    # the expected cost of deciding j is the expected cost of the one-hot prediction j,
    # averaged over the truth drawn from probs
    probs, cost = np.asarray(probs), np.asarray(cost)
    per_decision = np.array([[np.sum(probs[n] * cost[:, j]) for j in range(5)]
                             for n in range(30)])
    np.testing.assert_array_equal(decisions, per_decision.argmin(axis=1))


# --- auto-encoders -------------------------------------------------------------


def _notes_autoencoder(params, x):
    """The notes' encode / decode: z = relu(x V + b), x_rec = z W + a."""
    z = jnp.maximum(x @ params["V"] + params["b"][None, :], 0)
    return z, z @ params["W"] + params["a"][None, :]


def _ae_params(d=6, h=4, seed=20):
    k = jax.random.split(jax.random.key(seed), 4)
    return {"V": jax.random.normal(k[0], (d, h), jnp.float64),
            "b": 0.1 * jax.random.normal(k[1], (h,), jnp.float64),
            "W": jax.random.normal(k[2], (h, d), jnp.float64),
            "a": 0.1 * jax.random.normal(k[3], (d,), jnp.float64)}


def test_sparse_reconstruction_matches_notes_formula():
    params, x = _ae_params(), _normal(21, (5, 6))
    z, x_rec = _notes_autoencoder(params, x)
    notes = (np.sum((np.asarray(x) - np.asarray(x_rec)) ** 2)
             + 0.5 * np.sum(np.abs(np.asarray(z)))) / x.shape[0]
    np.testing.assert_allclose(losses.sparse_reconstruction(x, x_rec, z), notes, rtol=1e-12)
    np.testing.assert_allclose(losses.sparse_reconstruction(x, x_rec, z, lam=0.0),
                               losses.reconstruction(x, x_rec), rtol=1e-12)


def test_reconstruction_is_notes_anomaly_score_per_example():
    x, x_rec = _normal(22, (4, 3, 3)), _normal(23, (4, 3, 3))
    score = ((np.asarray(x_rec) - np.asarray(x)) ** 2).sum(axis=-1).sum(axis=-1)
    np.testing.assert_allclose(losses.reconstruction(x, x_rec, reduction="none"), score)
    np.testing.assert_allclose(losses.reconstruction(x, x_rec), score.mean())


def test_weight_restriction_known_value():
    weights = {"V": jnp.array([[1.0, 2.0]]), "W": jnp.array([[3.0], [0.0]])}
    np.testing.assert_allclose(losses.weight_restriction(weights, 0.1), 0.1 * (1 + 4 + 9))
    with pytest.raises(ValueError, match="weight_restriction: expected lam_w >= 0, got -1.0"):
        losses.weight_restriction(weights, -1.0)


def _ae_apply(params, x):
    return _notes_autoencoder(params, x)[1]


def test_denoising_loss_matches_manual_and_noise_free():
    params, x = _ae_params(), _normal(24, (5, 6))
    np.testing.assert_allclose(losses.denoising_loss(_ae_apply, params, x, KEY, noise=0.0),
                               losses.reconstruction(x, _ae_apply(params, x)), rtol=1e-12)
    noisy = x + 0.3 * jax.random.normal(KEY, x.shape, x.dtype)
    expected = np.sum((np.asarray(x) - np.asarray(_ae_apply(params, noisy))) ** 2) / 5
    np.testing.assert_allclose(losses.denoising_loss(_ae_apply, params, x, KEY, noise=0.3),
                               expected, rtol=1e-12)
    jitted = jax.jit(lambda p, x, k: losses.denoising_loss(_ae_apply, p, x, k, noise=0.3))
    np.testing.assert_allclose(jitted(params, x, KEY), expected, rtol=1e-12)


def test_denoising_loss_of_identity_is_noise_energy():
    # x_rec = x_noisy: the loss is ||noise * eps||^2, expectation noise^2 * features
    x = _normal(25, (4000, 8))
    values = losses.denoising_loss(lambda p, x: x, None, x, KEY, noise=0.2, reduction="none")
    standard_error = float(np.std(values) / np.sqrt(values.shape[0]))
    assert abs(float(values.mean()) - 0.2**2 * 8) < 4 * standard_error


def test_denoising_loss_bad_reconstruction_shape():
    with pytest.raises(ValueError, match=r"denoising_loss: .*\(3, 4\).*\(3, 2\)"):
        losses.denoising_loss(lambda p, x: x[:, :2], None, jnp.ones((3, 4)), KEY)


# --- finite-difference gradient checks (float64) ------------------------------


@functools.cache
def _gradient_cases():
    y, t = _normal(30, (5, 3)), _normal(31, (5, 3))
    pm = _pm1(32, (5, 3))
    labels = jax.random.randint(jax.random.key(33), (5,), 0, 3)
    soft = jax.nn.softmax(_normal(34, (5, 3)), axis=-1)
    t01 = jax.random.uniform(jax.random.key(35), (5, 3), jnp.float64)
    cost = jax.random.uniform(jax.random.key(36), (3, 3), jnp.float64)
    params, x = _ae_params(), _normal(37, (5, 6))
    return {
        "mse": (lambda y: losses.mse(y, t), (y,)),
        "log_cosh": (lambda y: losses.log_cosh(y, t, 1.5), (3 * y,)),
        "logloss": (lambda y: losses.logloss(y, pm), (y,)),
        "bce_logits": (lambda y: losses.binary_cross_entropy(y, t01, from_logits=True), (y,)),
        "bce_probs": (lambda y: losses.binary_cross_entropy(jax.nn.sigmoid(y), t01), (y,)),
        "ce_labels": (lambda y: losses.softmax_cross_entropy(y, labels), (y,)),
        "ce_soft": (lambda y: losses.softmax_cross_entropy(y, soft), (y,)),
        "weighted": (lambda v, w: losses.weighted(v, w),
                     (jnp.abs(y[:, 0]), 1 + jnp.abs(t[:, 0]))),
        "expected_cost": (lambda y: losses.expected_cost(y, labels, cost, from_logits=True),
                          (y,)),
        "reconstruction": (lambda y: losses.reconstruction(y, t), (y,)),
        "sparse_reconstruction": (
            lambda p: losses.sparse_reconstruction(x, *_notes_autoencoder(p, x)[::-1]),
            (params,)),
        "weight_restriction": (lambda p: losses.weight_restriction(p, 0.3), (params,)),
        "denoising": (lambda p: losses.denoising_loss(_ae_apply, p, x, KEY, noise=0.1),
                      (params,)),
    }


@pytest.mark.parametrize("name", sorted(_gradient_cases()))
def test_finite_difference_gradients(name):
    fn, args = _gradient_cases()[name]
    order = 1 if name in ("sparse_reconstruction", "denoising") else 2  # relu kinks
    check_grads(jax.jit(fn), args, order=order, modes=("fwd", "rev"), eps=1e-6, atol=1e-6,
                rtol=1e-6)


def test_hinge_and_mae_known_values_and_gradients():
    y = jnp.array([[2.0, -0.5], [0.3, 1.0]])
    t = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    # margins t*y: 2, 0.5, -0.3, 1 -> hinge 0, 0.5, 1.3, 0 -> per-example means 0.25, 0.65
    np.testing.assert_allclose(losses.hinge(y, t, reduction="none"), [0.25, 0.65])
    np.testing.assert_allclose(losses.mae(y, jnp.zeros_like(y), reduction="none"), [1.25, 0.65])
    g = jax.grad(lambda y: losses.hinge(y, t, reduction="sum"))(y)
    np.testing.assert_allclose(g, jnp.where(t * y < 1, -t / 2, 0.0))
    check_grads(lambda y: losses.mae(y, jnp.zeros_like(y)), (y,), order=1, modes=["rev"])
    with pytest.raises(ValueError, match="hinge: expected labels"):
        losses.hinge(y, jnp.zeros_like(y))
