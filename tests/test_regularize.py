"""Regularisers: weight decay in both forms, the notes' norms, spectral norm, Lipschitz bound."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jdl import data, nn, regularize
from jdl import train as jt


def _matrix(shape, seed=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("shape", [(30, 20), (5, 40), (3, 3, 4, 6), (1, 7)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_spectral_norm_matches_svd(shape, dtype):
    w = _matrix(shape, seed=len(shape), dtype=dtype)
    result = jax.jit(lambda w: regularize.spectral_norm(w, num_iters=500))(w)
    u_svd, s, vt = np.linalg.svd(np.asarray(w, np.float64).reshape(-1, shape[-1]))
    assert result.sigma.dtype == dtype and result.u.dtype == dtype
    rtol = 1e-5 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(result.sigma, s[0], rtol=rtol)
    # the vectors are the top singular pair (up to a common sign); in float32 they are
    # accurate to about sqrt(eps) only, sigma (a Rayleigh quotient) to about eps
    sign = np.sign(np.dot(result.v, vt[0]))
    atol = 1e-2 if dtype == jnp.float32 else 1e-7
    np.testing.assert_allclose(result.v * sign, vt[0], atol=atol)
    np.testing.assert_allclose(result.u * sign, u_svd[:, 0], atol=atol)


def test_spectral_norm_warm_start_and_tolerance():
    w = _matrix((40, 30), seed=3)
    cold = regularize.spectral_norm(w, num_iters=1000, tol=1e-13)
    assert 1 < int(cold.iterations) < 1000  # the tolerance stopped it
    warm = regularize.spectral_norm(w, num_iters=1000, tol=1e-13, u=cold.u)
    assert int(warm.iterations) < int(cold.iterations)
    one_step = regularize.spectral_norm(w, num_iters=1, u=cold.u)
    assert int(one_step.iterations) == 1
    np.testing.assert_allclose(one_step.sigma, np.linalg.norm(np.asarray(w), 2), rtol=1e-10)
    # a few cold iterations underestimate sigma: power iteration approaches from below
    assert regularize.spectral_norm(w, num_iters=2).sigma < cold.sigma


def test_spectral_norm_gradient():
    w = _matrix((6, 4), seed=5)
    sigma = lambda w: regularize.spectral_norm(w, num_iters=2000).sigma  # noqa: E731
    check_grads(sigma, (w,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    u, _, vt = np.linalg.svd(np.asarray(w))
    np.testing.assert_allclose(jax.grad(sigma)(w), np.outer(u[:, 0], vt[0]), atol=1e-7)


@pytest.mark.parametrize("bad", [jnp.ones(3), jnp.ones((2, 2), jnp.int32)])
def test_spectral_norm_bad_input(bad):
    with pytest.raises((ValueError, TypeError), match="spectral_norm"):
        regularize.spectral_norm(bad)
    with pytest.raises(ValueError, match="u of shape"):
        regularize.spectral_norm(jnp.ones((3, 2)), u=jnp.ones(2))


@pytest.mark.parametrize("shape", [(4, 7), (9, 3), (1, 5)])
def test_notes_norms_against_formulas_and_inequality(shape):
    m = np.asarray(_matrix(shape, seed=shape[0]))
    frob = float(regularize.frobenius_norm(m))
    np.testing.assert_allclose(frob, np.sqrt(sum(abs(v) ** 2 for v in m.ravel())), rtol=1e-12)
    np.testing.assert_allclose(frob, np.linalg.norm(m, "fro"), rtol=1e-12)
    for inner in (0, 1):
        rows = m if inner == 1 else m.T  # rows i, entries j summed
        expected = np.sqrt(sum(sum(abs(v) for v in row) ** 2 for row in rows))
        np.testing.assert_allclose(regularize.mixed_norm(m, inner_axis=inner), expected,
                                   rtol=1e-12)
        # the notes' inequality (sum_j |v_ij|)^2 <= h sum_j |v_ij|^2, row by row and summed
        h = rows.shape[1]
        assert np.all(np.abs(rows).sum(1) ** 2 <= h * (rows ** 2).sum(1) * (1 + 1e-12))
        assert float(regularize.mixed_norm(m, inner_axis=inner)) ** 2 <= h * frob ** 2 * (
            1 + 1e-12)
    # Frobenius bounds the spectral norm; the mixed norm bounds ||W^T x||_2 / ||x||_inf
    assert np.linalg.norm(m, 2) <= frob * (1 + 1e-12)
    x = np.sign(np.asarray(_matrix((200, shape[0]), seed=9)))  # vertices of the inf-ball
    assert np.max(np.linalg.norm(x @ m, axis=1)) <= float(regularize.mixed_norm(m)) * (1 + 1e-12)


def test_inequality_is_tight_for_equal_magnitudes():
    m = jnp.array([[1.0, -1.0, 1.0], [2.0, 2.0, -2.0]])
    np.testing.assert_allclose(regularize.mixed_norm(m, inner_axis=1) ** 2,
                               3 * regularize.frobenius_norm(m) ** 2, rtol=1e-12)


MODEL = nn.serial(nn.dense(5), nn.activation("tanh"), nn.dense(3))
PARAMS = jax.tree.map(lambda a: a + 0.1, MODEL.init(jax.random.key(0), (-1, 4))[1])
X = jax.random.normal(jax.random.key(1), (16, 4))
Y = jnp.arange(16) % 3


def ce_loss(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(MODEL.apply(params, x)[0], y).mean()


@pytest.mark.parametrize("mask", [None, regularize.kernel_mask])
def test_weight_decay_transform_equals_loss_term_under_sgd(mask):
    rate, lr = 0.1, 0.5
    tx = optax.chain(regularize.weight_decay(rate, mask=mask), optax.sgd(lr))
    penalised = regularize.add_penalty(ce_loss, lambda p: regularize.l2_penalty(p, rate, mask=mask))
    step_tx = jax.jit(jt.train_step(ce_loss, tx))
    step_term = jax.jit(jt.train_step(penalised, optax.sgd(lr)))
    p1, s1, p2, s2 = PARAMS, tx.init(PARAMS), PARAMS, optax.sgd(lr).init(PARAMS)
    for _ in range(3):
        p1, s1, _ = step_tx(p1, s1, (X, Y))
        p2, s2, _ = step_term(p2, s2, (X, Y))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), p1, p2)
    if mask is not None:  # biases are not decayed: they differ from a fully decayed run
        full = optax.chain(regularize.weight_decay(rate), optax.sgd(lr))
        p3 = jt.train_step(ce_loss, full)(PARAMS, full.init(PARAMS), (X, Y))[0]
        p4 = jt.train_step(ce_loss, tx)(PARAMS, tx.init(PARAMS), (X, Y))[0]
        np.testing.assert_allclose(p3["0_dense"]["w"], p4["0_dense"]["w"], rtol=1e-12)
        assert not np.allclose(p3["2_dense"]["b"], p4["2_dense"]["b"])


def test_l2_penalty_value_and_bad_input():
    expected = 0.5 * 0.3 * sum(float(jnp.sum(PARAMS[k]["w"] ** 2)) for k in ("0_dense", "2_dense"))
    np.testing.assert_allclose(regularize.l2_penalty(PARAMS, 0.3, mask=regularize.kernel_mask),
                               expected, rtol=1e-12)
    with pytest.raises(ValueError, match="weight_decay: expected rate >= 0"):
        regularize.weight_decay(-1e-3)
    with pytest.raises(ValueError, match="l2_penalty: expected rate >= 0"):
        regularize.l2_penalty(PARAMS, -1.0)
    with pytest.raises(ValueError, match="one bool per params leaf"):
        regularize.l2_penalty(PARAMS, 1.0, mask=[True])


def test_add_penalty_keeps_the_stateful_form():
    model = nn.serial(nn.dense(5), nn.dropout(0.5), nn.dense(3))
    params = model.init(jax.random.key(0), (-1, 4))[1]
    loss = jt.model_loss(model, lambda o, t: optax.softmax_cross_entropy_with_integer_labels(
        o, t).mean())
    penalised = regularize.add_penalty(loss, lambda p: regularize.l2_penalty(p, 2.0))
    assert isinstance(penalised, jt.StatefulLoss)
    a, _ = loss(params, {}, (X, Y), None, False)
    b, _ = penalised(params, {}, (X, Y), None, False)
    np.testing.assert_allclose(b - a, regularize.l2_penalty(params, 2.0), rtol=1e-12)
    assert regularize.dropout is nn.dropout


def test_spectral_penalty_value_gradient_and_effect():
    value, vectors = regularize.spectral_penalty(PARAMS, 0.2, num_iters=500)
    sigmas = [np.linalg.norm(np.asarray(PARAMS[k]["w"]), 2) for k in ("0_dense", "2_dense")]
    np.testing.assert_allclose(value, 0.1 * sum(s ** 2 for s in sigmas), rtol=1e-10)
    assert [v.shape for v in vectors] == [(4,), (5,)]
    warm, _ = regularize.spectral_penalty(PARAMS, 0.2, num_iters=1, vectors=vectors)
    np.testing.assert_allclose(warm, value, rtol=1e-10)
    check_grads(lambda p: regularize.spectral_penalty(p, 0.2, num_iters=2000)[0], (PARAMS,),
                order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="expected 2 vectors"):
        regularize.spectral_penalty(PARAMS, 0.2, vectors=vectors[:1])
    with pytest.raises(ValueError, match="at least one kernel"):
        regularize.spectral_penalty({"b": jnp.ones(3)}, 0.2)
    # full-batch training with the penalty gives a smaller Lipschitz bound than without
    ds = data.load("wine", dtype=jnp.float64)
    batch = (data.fit_standardize(ds.x_train)(ds.x_train), ds.y_train)
    model = nn.serial(nn.dense(16), nn.activation("tanh"), nn.dense(3))
    params = model.init(jax.random.key(2), (-1, 13))[1]

    def loss(p, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x)[0], y).mean()

    @jax.jit
    def train(rate, batch):
        reg = regularize.add_penalty(loss, lambda p: regularize.spectral_penalty(
            p, rate, num_iters=10)[0])
        step = jt.train_step(reg, optax.adam(0.05))
        carry = (params, optax.adam(0.05).init(params))
        (fitted, _), _ = jax.lax.scan(lambda c, _: (step(*c, batch)[:2], None), carry, None, length=150)
        return regularize.lipschitz_bound(model, fitted), loss(fitted, batch)

    (free, free_loss), (penalised, penalised_loss) = train(0.0, batch), train(0.05, batch)
    assert penalised < 0.7 * free
    assert free_loss < penalised_loss < np.log(3)  # it still learns


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "scaled_tanh"])
def test_lipschitz_bound_dominates_input_gradients(activation):
    model = nn.serial(nn.dense(12), nn.activation(activation), nn.residual(
        nn.serial(nn.dense(12), nn.activation(activation))), nn.dropout(0.2), nn.dense(3))
    params = model.init(jax.random.key(3), (-1, 6))[1]
    x = 3.0 * jax.random.normal(jax.random.key(4), (256, 6))

    @jax.jit
    def norms(params, x):
        jac = jax.vmap(jax.jacrev(lambda x: model.apply(params, x[None])[0][0]))(x)
        empirical = jnp.max(jnp.linalg.svd(jac, compute_uv=False)[:, 0])
        return (empirical, regularize.lipschitz_bound(model, params),
                regularize.lipschitz_bound(model, params, norm="frobenius"))

    empirical, spectral, frobenius = norms(params, x)
    assert 0 < empirical <= spectral <= frobenius
    with_softmax = nn.serial(model, nn.activation("softmax"))
    np.testing.assert_allclose(regularize.lipschitz_bound(with_softmax, {"0_serial": params, "1_activation": {}}),
                               spectral, rtol=1e-10)


def test_lipschitz_bound_is_exact_for_a_linear_map():
    model = nn.serial(nn.dense(4), nn.activation("identity"))
    params = model.init(jax.random.key(0), (-1, 7))[1]
    np.testing.assert_allclose(regularize.lipschitz_bound(model, params),
                               np.linalg.norm(np.asarray(params["0_dense"]["w"]), 2), rtol=1e-10)


def test_lipschitz_bound_rejects_unknown_layers():
    conv = nn.serial(nn.conv2d(2, (3, 3)), nn.flatten())
    params = conv.init(jax.random.key(0), (-1, 5, 5, 1))[1]
    with pytest.raises(ValueError, match="unsupported layer kind 'conv2d'"):
        regularize.lipschitz_bound(conv, params)
    mlp = nn.serial(nn.dense(3), nn.activation("log_softmax"))
    with pytest.raises(ValueError, match="no Lipschitz constant for activation 'log_softmax'"):
        regularize.lipschitz_bound(mlp, mlp.init(jax.random.key(0), (-1, 2))[1])
    with pytest.raises(ValueError, match="norm 'spectral' or 'frobenius'"):
        regularize.lipschitz_bound(MODEL, PARAMS, norm="mixed")


def test_weight_decay_after_adam_scaling_is_adamw():
    grads = jax.tree.map(lambda a: 0.1 * jnp.cos(a), PARAMS)
    decoupled = optax.chain(optax.scale_by_adam(), regularize.weight_decay(0.1),
                            optax.scale(-0.01))
    adamw = optax.adamw(0.01, weight_decay=0.1)
    mine = decoupled.update(grads, decoupled.init(PARAMS), PARAMS)[0]
    theirs = adamw.update(grads, adamw.init(PARAMS), PARAMS)[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), mine, theirs)
