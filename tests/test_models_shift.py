"""Distribution shift: deep ensembles' uncertainty, gradient reversal and DANN."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jdl import data, nn
from jdl import train as jt
from jdl.models import domain, ensembles

DS = data.load("digits", dtype=jnp.float32)
MLP = nn.serial(nn.dense(32), nn.activation("relu"), nn.dense(10))


def apply_fn(params, x):
    return MLP.apply(params, x)[0]


def ce(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()


# --- ensembles ---------------------------------------------------------------


def _random_probs(shape, seed=0):
    return jax.nn.softmax(3.0 * jax.random.normal(jax.random.key(seed), shape), axis=-1)


def test_uncertainty_formulas():
    probs = _random_probs((4, 7, 5))
    p = np.asarray(probs)
    mean = p.mean(0)
    h = lambda q: -np.sum(q * np.log(q), axis=-1)  # noqa: E731
    u = jax.jit(ensembles.uncertainty)(probs)
    np.testing.assert_allclose(u.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(u.predictive_entropy, h(mean), rtol=1e-10)
    np.testing.assert_allclose(u.expected_entropy, h(p).mean(0), rtol=1e-10)
    kl = np.sum(p * (np.log(p) - np.log(mean)[None]), axis=-1).mean(0)  # mean_m KL(p_m || p̄)
    np.testing.assert_allclose(u.mutual_information, kl, rtol=1e-9)
    assert np.all(u.mutual_information <= np.log(4) + 1e-12)
    votes = p.argmax(-1)
    np.testing.assert_allclose(u.disagreement, (votes != mean.argmax(-1)).mean(0))
    for name in ("predictive_entropy", "expected_entropy", "mutual_information",
                 "disagreement"):
        np.testing.assert_allclose(getattr(ensembles, name)(probs), getattr(u, name))


def test_agreeing_members_have_no_disagreement_and_uniform_has_max_entropy():
    same = jnp.broadcast_to(_random_probs((1, 6, 3)), (5, 6, 3))
    np.testing.assert_allclose(ensembles.mutual_information(same), 0.0, atol=1e-12)
    np.testing.assert_allclose(ensembles.disagreement(same), 0.0)
    # members certain of different classes: MI = log(members) when they all differ
    onehot = jnp.eye(3)[:, None, :]
    np.testing.assert_allclose(ensembles.mutual_information(onehot), np.log(3), rtol=1e-12)
    np.testing.assert_allclose(ensembles.predictive_entropy(jnp.full((2, 1, 4), 0.25)),
                               np.log(4), rtol=1e-12)
    with pytest.raises(ValueError, match="mutual_information: expected member probabilities"):
        ensembles.mutual_information(jnp.ones((3, 4)))


def test_ensemble_members_differ_and_disagree_more_on_shifted_inputs():
    members = 5
    ens = ensembles.fit_ensemble(
        ce, lambda k: MLP.init(k, (-1, 64), jnp.float32)[1], optax.adam(0.01),
        (DS.x_train, DS.y_train), keys=jax.random.split(jax.random.key(0), members), epochs=15,
        batch_size=64, val_data=(DS.x_val, DS.y_val), quiet=True)
    assert jax.tree.leaves(ens.params)[0].shape[0] == members
    assert ens.histories["loss"].shape == (members, 15)
    assert np.all(ens.histories["loss"][:, -1] < 0.3 * ens.histories["loss"][:, 0])
    assert np.ptp(ens.val_losses) > 0  # different initialisations and data orders
    probs = jax.jit(ensembles.member_probabilities, static_argnums=0)
    clean = ensembles.uncertainty(probs(apply_fn, ens.params, DS.x_test))
    assert float(jnp.mean(clean.mean.argmax(-1) == DS.y_test)) > 0.93
    rotated = jnp.rot90(DS.x_test.reshape(-1, 8, 8), axes=(1, 2)).reshape(-1, 64)
    noise = jax.random.uniform(jax.random.key(3), DS.x_test.shape, DS.x_test.dtype)
    turned = ensembles.uncertainty(probs(apply_fn, ens.params, rotated))
    noisy = ensembles.uncertainty(probs(apply_fn, ens.params, noise))
    mi = [float(u.mutual_information.mean()) for u in (clean, turned, noisy)]
    assert mi[1] > mi[0]  # rotated digits: higher, by a small factor
    assert mi[2] > 5 * mi[0]  # uniform noise: far higher
    assert float(noisy.disagreement.mean()) > 5 * float(clean.disagreement.mean())


# --- gradient reversal -------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 0.3, 0.0, -1.0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_gradient_reversal_is_identity_forward_and_flips_the_gradient(scale, dtype):
    x = jax.random.normal(jax.random.key(0), (4, 3), dtype)
    f = lambda x: jnp.sum(jnp.sin(x) * x)  # noqa: E731
    reversed_ = jax.jit(jax.grad(lambda x: f(domain.reverse_gradient(x, scale))))(x)
    np.testing.assert_array_equal(domain.reverse_gradient(x, scale), x)
    np.testing.assert_allclose(reversed_, -scale * jax.grad(f)(x), rtol=1e-6, atol=1e-6)
    assert reversed_.dtype == dtype
    layer = domain.gradient_reversal(scale)
    out_shape, params, state = layer.init(jax.random.key(0), (-1, 3))
    assert (layer.kind, layer.config, out_shape, params, state) == (
        "gradient_reversal", {"scale": scale}, (-1, 3), {}, {})
    via_layer = jax.grad(lambda x: f(layer.apply({}, x)[0]))(x)
    np.testing.assert_allclose(via_layer, reversed_, rtol=1e-6, atol=1e-6)


def test_gradient_reversal_passes_check_grads_where_it_is_the_true_derivative():
    x = jax.random.normal(jax.random.key(1), (5,))
    g = lambda x: jnp.tanh(x) ** 2  # noqa: E731
    # with scale -1 the backward pass is +g: the true derivative of the identity
    check_grads(lambda x: g(domain.reverse_gradient(x, -1.0)), (x,), order=1, modes=["rev"])
    # a scale gets no gradient, even traced
    grad_scale = jax.grad(lambda s: jnp.sum(domain.reverse_gradient(x, s) ** 2))(2.0)
    assert float(grad_scale) == 0.0


# --- DANN --------------------------------------------------------------------


def _dann(scale):
    return domain.dann(nn.serial(nn.dense(8), nn.activation("tanh")), nn.dense(3),
                       nn.serial(nn.dense(6), nn.activation("tanh"), nn.dense(1)), scale=scale)


def test_dann_gradients_split_into_label_and_reversed_domain_parts():
    x_s = jax.random.normal(jax.random.key(0), (10, 4))
    y_s = jnp.arange(10) % 3
    x_t = jax.random.normal(jax.random.key(1), (10, 4)) + 1.0
    params = _dann(1.0).init(jax.random.key(2), (-1, 4))[1]
    assert sorted(params) == ["classifier", "critic", "features"]
    batch = (x_s, y_s, x_t)
    grads = {s: jax.jit(jax.grad(domain.dann_loss(_dann(s))))(params, batch)
             for s in (-1.0, 0.0, 1.0, 2.5)}
    # scale -1 makes the loss an ordinary function: its gradient is exact
    exact = jax.jit(domain.dann_loss(_dann(-1.0)))
    check_grads(lambda p: exact(p, batch), (params,), order=1, modes=["rev"])
    # features: grad(s) = g_label - s g_domain, linear in s; heads do not depend on s
    g0, g1 = grads[0.0]["features"], grads[1.0]["features"]
    g_domain = jax.tree.map(lambda a, b: a - b, g0, g1)
    for s in (-1.0, 2.5):
        jax.tree.map(lambda g, a, d: np.testing.assert_allclose(g, a - s * d, atol=1e-12),
                     grads[s]["features"], g0, g_domain)
        for head in ("classifier", "critic"):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12),
                         grads[s][head], grads[0.0][head])
    assert max(float(jnp.abs(d).max()) for d in jax.tree.leaves(g_domain)) > 1e-4


def test_dann_makes_the_domains_hard_to_tell_apart():
    """Target = source digits with the always-blank pixels lit: the critic loses with reversal."""
    n = DS.x_train.shape[0] // 2
    blank = (DS.x_train.max(0) == 0).astype(DS.x_train.dtype)

    def shift(x, key):
        return x + blank * jax.random.uniform(key, x.shape, x.dtype, 0.5, 1.0)

    train = (DS.x_train[:n], DS.y_train[:n], shift(DS.x_train[n:2 * n], jax.random.key(5)))
    test_target = shift(DS.x_test, jax.random.key(6))
    results = {}
    for scale in (0.0, 1.0):
        model = domain.dann(nn.serial(nn.dense(32), nn.activation("relu")), nn.dense(10),
                            nn.serial(nn.dense(32), nn.activation("relu"), nn.dense(1)),
                            scale=scale)
        params = model.init(jax.random.key(0), (-1, 64), jnp.float32)[1]
        params = jt.fit(domain.dann_loss(model), params, optax.adam(0.005), train, epochs=30,
                        batch_size=64, key=jax.random.key(1), quiet=True).params
        logits = model.apply(params, DS.x_test)[0][0]
        results[scale] = (float(jnp.mean(logits.argmax(-1) == DS.y_test)),
                          float(domain.domain_accuracy(model, params, DS.x_test, test_target)))
    assert results[0.0][1] > 0.9  # without reversal the critic tells the domains apart
    assert results[1.0][1] < results[0.0][1] - 0.15
    assert results[1.0][0] > 0.9  # and the labels are still learned


def test_dann_bad_input():
    with pytest.raises(TypeError, match="dann: expected a jdl Layer for critic"):
        domain.dann(nn.dense(3), nn.dense(2), "critic")
    with pytest.raises(ValueError, match="critic to output"):
        domain.dann(nn.dense(3), nn.dense(2), nn.dense(2)).init(jax.random.key(0), (-1, 4))
    with pytest.raises(TypeError, match="dann_loss: expected a dann model"):
        domain.dann_loss(nn.dense(3))
    with pytest.raises(ValueError, match="x_source, y_source, x_target"):
        model = _dann(1.0)
        domain.dann_loss(model)(model.init(jax.random.key(0), (-1, 4))[1], (jnp.ones((2, 4)),))
