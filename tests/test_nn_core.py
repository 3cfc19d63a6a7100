"""The layer protocol and combinators, dense, activations and initialisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import nn
from jdl.nn import activations, initializers


# --- combinators ---------------------------------------------------------------------------

def test_serial_shapes_and_param_names():
    model = nn.serial(nn.conv2d(4, 3), nn.batch_norm(), nn.activation("relu"), nn.max_pool(2),
                      nn.flatten(), nn.dropout(0.1), nn.dense(10))
    out_shape, params, state = model.init(jax.random.key(0), (-1, 8, 8, 1))
    names = ["0_conv2d", "1_batch_norm", "2_activation", "3_max_pool", "4_flatten", "5_dropout",
             "6_dense"]
    assert out_shape == (-1, 10)
    assert list(params) == names == list(model.names)
    assert [c.kind for c in model.children] == [n.split("_", 1)[1] for n in names]
    assert params["0_conv2d"]["w"].shape == (3, 3, 1, 4)
    assert params["6_dense"]["w"].shape == (4 * 4 * 4, 10)
    assert set(state["1_batch_norm"]) == {"mean", "var"}
    assert params["2_activation"] == {} and state["0_conv2d"] == {}
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    y, new_state = model.apply(params, x, state=state, key=jax.random.key(2), train=True)
    assert y.shape == (3, 10)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_serial_composes_in_order():
    a, b = nn.dense(3), nn.activation("tanh")
    model = nn.serial(a, b)
    _, params, _ = model.init(jax.random.key(0), (-1, 2))
    x = jnp.arange(4.0).reshape(2, 2)
    y, _ = model.apply(params, x)
    np.testing.assert_allclose(y, jnp.tanh(x @ params["0_dense"]["w"] + params["0_dense"]["b"]))


def test_parallel_shapes_and_names():
    model = nn.parallel(nn.dense(2), nn.flatten(), nn.activation("relu"))
    out_shape, params, _ = model.init(jax.random.key(0), ((-1, 3), (-1, 2, 2), (-1, 5)))
    assert out_shape == ((-1, 2), (-1, 4), (-1, 5))
    assert list(params) == ["0_dense", "1_flatten", "2_activation"]
    xs = (jnp.ones((4, 3)), jnp.ones((4, 2, 2)), -jnp.ones((4, 5)))
    ys, _ = model.apply(params, xs)
    assert tuple(y.shape for y in ys) == ((4, 2), (4, 4), (4, 5))
    np.testing.assert_array_equal(ys[2], 0.0)
    with pytest.raises(ValueError, match="parallel: expected a tuple of 3 inputs"):
        model.apply(params, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="parallel: expected a tuple of 3 input shapes"):
        model.init(jax.random.key(0), ((-1, 3),))


def test_residual_adds_identity_or_shortcut():
    block = nn.serial(nn.dense(4), nn.activation("tanh"))
    res = nn.residual(block)
    out_shape, params, _ = res.init(jax.random.key(0), (-1, 4))
    assert out_shape == (-1, 4) and list(params) == ["block"] == list(res.names)
    x = jax.random.normal(jax.random.key(1), (3, 4))
    np.testing.assert_allclose(res.apply(params, x)[0], block.apply(params["block"], x)[0] + x)

    proj = nn.residual(nn.dense(2), shortcut=nn.dense(2, use_bias=False))
    out_shape, params, _ = proj.init(jax.random.key(0), (-1, 4))
    assert out_shape == (-1, 2) and list(params) == ["block", "shortcut"]
    expected = x @ params["block"]["w"] + params["block"]["b"][None] + x @ params["shortcut"]["w"]
    np.testing.assert_allclose(proj.apply(params, x)[0], expected)

    with pytest.raises(ValueError, match="residual: block output shape"):
        nn.residual(nn.dense(2)).init(jax.random.key(0), (-1, 4))


def test_residual_conv_block_keeps_shape():
    res = nn.residual(nn.serial(nn.conv2d(3, 3), nn.batch_norm()),
                      shortcut=nn.conv2d(3, 1))
    out_shape, params, state = res.init(jax.random.key(0), (-1, 5, 5, 2))
    assert out_shape == (-1, 5, 5, 3)
    y, new_state = res.apply(params, jnp.ones((2, 5, 5, 2)), state=state, train=True)
    assert y.shape == (2, 5, 5, 3)
    assert set(new_state["block"]["1_batch_norm"]) == {"mean", "var"}


def test_combinator_bad_arguments():
    with pytest.raises(ValueError, match="serial: expected at least one layer"):
        nn.serial()
    with pytest.raises(TypeError, match="serial: expected Layer at position 1, got int"):
        nn.serial(nn.dense(2), 3)
    with pytest.raises(ValueError, match="parallel: expected at least one layer"):
        nn.parallel()


def test_stochastic_layers_get_distinct_keys_in_serial():
    model = nn.serial(nn.dropout(0.5), nn.dropout(0.5))
    _, params, state = model.init(jax.random.key(0), (-1, 2000))
    y, _ = model.apply(params, jnp.ones((1, 2000)), state=state, key=jax.random.key(3),
                       train=True)
    # Independent masks keep about a quarter of the units, each scaled by 4.
    kept = float(jnp.mean(y != 0.0))
    assert abs(kept - 0.25) < 0.04
    np.testing.assert_allclose(y[y != 0.0], 4.0)


# --- dense ---------------------------------------------------------------------------------

def test_dense_formula_and_errors():
    layer = nn.dense(3)
    out_shape, params, _ = layer.init(jax.random.key(0), (-1, 5, 4))
    assert out_shape == (-1, 5, 3)
    assert params["w"].shape == (4, 3) and params["b"].shape == (3,)
    x = jax.random.normal(jax.random.key(1), (2, 5, 4))
    params = {"w": params["w"], "b": jnp.array([1.0, -2.0, 0.5])}
    np.testing.assert_allclose(layer.apply(params, x)[0],
                               np.asarray(x) @ np.asarray(params["w"]) + np.array([1.0, -2.0, 0.5]))
    assert "b" not in nn.dense(3, use_bias=False).init(jax.random.key(0), (-1, 4))[1]
    with pytest.raises(ValueError, match=r"dense: expected input with last axis of size 4"):
        layer.apply(params, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="dense: expected a positive int for features"):
        nn.dense(0)


# --- activations ---------------------------------------------------------------------------

X = np.linspace(-4.0, 4.0, 17)

FORMULAS = {
    "relu": lambda x: np.maximum(0.0, x),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(),
    "log_softmax": lambda x: np.log(np.exp(x) / np.exp(x).sum()),
    "scaled_tanh": lambda x: 1.7159 * np.tanh(2.0 * x / 3.0),
    "identity": lambda x: x,
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_matches_formula(name):
    expected = FORMULAS[name](X)
    np.testing.assert_allclose(activations.get(name)(jnp.asarray(X)), expected, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(getattr(nn, name)(jnp.asarray(X)), expected, rtol=1e-12, atol=1e-12)
    layer = nn.activation(name)
    assert layer.kind == "activation" and layer.config["name"] == name
    y, _ = jax.jit(layer.apply)({}, jnp.asarray(X)[None])
    np.testing.assert_allclose(y[0], expected, rtol=1e-12, atol=1e-12)


def test_scaled_tanh_maps_unit_to_unit():
    np.testing.assert_allclose(nn.scaled_tanh(jnp.array([-1.0, 1.0])), [-1.0, 1.0], atol=1e-3)


def test_softmax_is_stable_for_large_inputs():
    y = nn.softmax(jnp.array([1000.0, 1000.0, -1000.0]))
    np.testing.assert_allclose(y, [0.5, 0.5, 0.0], atol=1e-12)


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match=r"activations.get: unknown activation 'gelu'.*relu"):
        nn.activation("gelu")
    assert activations.get(jnp.sin) is jnp.sin
    assert nn.activation(jnp.sin).config["name"] == "sin"


# --- initialisers --------------------------------------------------------------------------

FAN_IN, FAN_OUT = 300, 200


@pytest.mark.parametrize("name, variance", [
    ("lecun_normal", 1.0 / FAN_IN),
    ("lecun_uniform", 1.0 / FAN_IN),
    ("glorot_normal", 2.0 / (FAN_IN + FAN_OUT)),
    ("glorot_uniform", 2.0 / (FAN_IN + FAN_OUT)),
    ("he_normal", 2.0 / FAN_IN),
    ("he_uniform", 2.0 / FAN_IN),
])
def test_initializer_variance(name, variance):
    w = initializers.get(name)(jax.random.key(0), (FAN_IN, FAN_OUT), jnp.float64)
    assert w.shape == (FAN_IN, FAN_OUT) and w.dtype == jnp.float64
    # 60000 samples: the sample variance has a relative sd of about 0.6%; 3% is 5 sd.
    np.testing.assert_allclose(float(jnp.var(w)), variance, rtol=0.03)
    assert abs(float(jnp.mean(w))) < 4 * np.sqrt(variance / w.size)
    if name.endswith("uniform"):  # U(-a, a) with a = sqrt(3 * variance)
        assert float(jnp.max(jnp.abs(w))) <= np.sqrt(3 * variance) + 1e-12


@pytest.mark.parametrize("shape", [(50, 50), (80, 30)])
def test_orthogonal_initializer(shape):
    w = initializers.get("orthogonal")(jax.random.key(1), shape, jnp.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(shape[1]), atol=1e-10)


def test_zeros_and_constant_initializers():
    np.testing.assert_array_equal(initializers.get("zeros")(jax.random.key(0), (3, 4)), 0.0)
    c = initializers.constant(0.25)(jax.random.key(0), (3, 4), jnp.float32)
    assert c.dtype == jnp.float32
    np.testing.assert_array_equal(c, 0.25)
    # Zero initialisation makes every hidden unit identical (the notes' symmetry warning).
    layer = nn.dense(5, w_init=initializers.constant(0.1))
    _, params, _ = layer.init(jax.random.key(0), (-1, 3))
    y, _ = layer.apply(params, jax.random.normal(jax.random.key(1), (4, 3)))
    np.testing.assert_allclose(y, jnp.broadcast_to(y[:, :1], y.shape))


def test_unknown_initializer_raises():
    with pytest.raises(ValueError, match=r"initializers.get: unknown initialiser 'xavier'"):
        initializers.get("xavier")
    assert initializers.get("kaiming_normal") is initializers.he_normal
