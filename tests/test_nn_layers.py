"""Every jdl.nn layer: init/apply shapes agree, jit equals eager, finite-difference gradients,
conv output sizes, batch norm and dropout semantics, bad input, and a jitted training step
that compiles once."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jdl import nn

B = 2  # batch size of the generic cases


def _case(name, layer, shape, *, train=False, order=1, distinct=False, extra=None):
    return pytest.param(layer, shape, train, order, distinct, extra or {}, id=name)


def _mask(t):
    m = np.tril(np.ones((t, t), bool))
    m[:, 0] = True
    m[1, 2] = True
    return jnp.asarray(m)


CASES = [
    _case("dense", nn.dense(3), (B, 4), order=2),
    _case("activation_tanh", nn.activation("tanh"), (B, 3)),
    _case("activation_softmax", nn.activation("softmax"), (B, 4)),
    _case("conv2d_same", nn.conv2d(3, 3), (B, 5, 5, 2), order=2),
    _case("conv2d_valid", nn.conv2d(2, (2, 3), padding="VALID"), (B, 5, 6, 2)),
    _case("conv2d_strided_dilated_explicit",
          nn.conv2d(2, (2, 3), strides=2, padding=((1, 0), (2, 1)), dilation=(1, 2),
                    use_bias=False), (B, 6, 7, 3), order=2),
    _case("max_pool", nn.max_pool(2), (B, 4, 4, 2), distinct=True),
    _case("max_pool_same_strided", nn.max_pool(3, strides=2, padding="SAME"), (B, 5, 5, 2),
          distinct=True),
    _case("avg_pool", nn.avg_pool(2), (B, 4, 4, 2)),
    _case("avg_pool_padded", nn.avg_pool((3, 2), strides=1, padding=1), (B, 4, 5, 2),
          order=2),
    _case("flatten", nn.flatten(), (B, 3, 2, 2)),
    _case("batch_norm_train", nn.batch_norm(), (4, 2, 2, 3), train=True, order=2),
    _case("batch_norm_eval", nn.batch_norm(), (4, 3)),
    _case("layer_norm", nn.layer_norm(), (B, 3, 4), order=2),
    _case("dropout_train", nn.dropout(0.5), (B, 6), train=True),
    _case("dropout_eval", nn.dropout(0.5), (B, 6)),
    _case("attention_single_head", nn.self_attention(), (B, 4, 3)),
    _case("attention_causal_bias_mask", nn.self_attention(2, causal=True, use_bias=True),
          (B, 4, 4), order=2, extra={"mask": _mask(4)}),
    _case("attention_weights_head_dim", nn.self_attention(2, head_dim=3, return_weights=True),
          (B, 4, 5)),
    _case("rnn", nn.rnn(3), (B, 4, 2), order=2),
    _case("rnn_last_sigmoid_h0", nn.rnn(3, activation="sigmoid", return_sequences=False),
          (B, 4, 2), extra={"h0": jnp.full((B, 3), 0.3)}),
    _case("lstm", nn.lstm(3), (B, 4, 2), order=2),
    _case("lstm_last_h0", nn.lstm(2, return_sequences=False), (B, 3, 3),
          extra={"h0": (jnp.full((B, 2), 0.2), jnp.full((B, 2), -0.5))}),
    _case("serial_cnn", nn.serial(nn.conv2d(2, 3), nn.batch_norm(), nn.activation("tanh"),
                                  nn.avg_pool(2), nn.flatten(), nn.dense(3)), (4, 4, 4, 1),
          train=True),
    _case("parallel", nn.parallel(nn.dense(2), nn.flatten()), ((B, 3), (B, 2, 2))),
    _case("residual", nn.residual(nn.serial(nn.dense(4), nn.activation("tanh"))), (B, 4)),
    _case("residual_shortcut", nn.residual(nn.dense(3), shortcut=nn.dense(3)), (B, 5)),
]


def _is_shape(s):
    return isinstance(s, tuple) and all(isinstance(v, int) for v in s)


def _input(key, shape, distinct):
    if not _is_shape(shape):
        keys = jax.random.split(key, len(shape))
        return tuple(_input(k, s, distinct) for k, s in zip(keys, shape))
    if distinct:  # values 0.1 apart: no ties, so max_pool is differentiable everywhere checked
        return 0.1 * jax.random.permutation(key, math.prod(shape)).reshape(shape).astype(float)
    return jax.random.normal(key, shape)


def _with_batch(shape, batch):
    if _is_shape(shape):
        return (batch, *shape[1:])
    return tuple(_with_batch(s, batch) for s in shape)


_SETUPS = {}


def _setup(layer, shape, distinct):
    """``(out_shape, params, state, x)`` for a case, computed once per case (init is eager)."""
    if id(layer) not in _SETUPS:
        out_shape, params, state = layer.init(jax.random.key(0), shape)
        _SETUPS[id(layer)] = out_shape, params, state, _input(jax.random.key(1), shape, distinct)
    return _SETUPS[id(layer)]


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


@pytest.mark.parametrize("layer, shape, train, order, distinct, extra", CASES)
def test_init_shape_matches_apply_shape(layer, shape, train, order, distinct, extra):
    out_shape, params, state, x = _setup(layer, shape, distinct)
    y, new_state = jax.eval_shape(
        lambda params, x, state, key, extra: layer.apply(
            params, x, state=state, key=key, train=train, **extra),
        params, x, state, jax.random.key(2), extra)
    assert _shapes(y) == out_shape
    assert _shapes(new_state) == _shapes(state)
    # An unknown batch size (-1) gives the same shapes with -1 in the batch axis.
    out_unknown = []

    def init_unknown_batch(key):
        out, params, _ = layer.init(key, _with_batch(shape, -1))
        out_unknown.append(out)
        return params

    params_unknown = jax.eval_shape(init_unknown_batch, jax.random.key(0))
    assert out_unknown[0] == _with_batch(out_shape, -1)
    assert _shapes(params_unknown) == _shapes(params)


@pytest.mark.parametrize("layer, shape, train, order, distinct, extra", CASES)
def test_jit_equals_eager(layer, shape, train, order, distinct, extra):
    _, params, state, x = _setup(layer, shape, distinct)

    def run(params, x, state, key, extra):
        return layer.apply(params, x, state=state, key=key, train=train, **extra)

    key = jax.random.key(2)
    eager = run(params, x, state, key, extra)
    jitted = jax.jit(run)(params, x, state, key, extra)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
                 eager, jitted)


@pytest.mark.parametrize("layer, shape, train, order, distinct, extra", CASES)
def test_gradients_match_finite_differences(layer, shape, train, order, distinct, extra):
    _, params, state, x = _setup(layer, shape, distinct)
    key = jax.random.key(2)

    def f(params, x):
        return layer.apply(params, x, state=state, key=key, train=train, **extra)[0]

    check_grads(jax.jit(f), (params, x), order=order, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer, shape, train, order, distinct, extra", CASES)
def test_float32_stays_float32(layer, shape, train, order, distinct, extra):
    def run(key, x, extra):
        _, params, state = layer.init(key, shape, jnp.float32)
        return layer.apply(params, x, state=state, key=key, train=train, **extra), (params, state)

    x32 = jax.tree.map(lambda a: a.astype(jnp.float32), _setup(layer, shape, distinct)[3])
    extra32 = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, extra)
    outputs, trees = jax.eval_shape(run, jax.random.key(0), x32, extra32)
    dtypes = {a.dtype for a in jax.tree.leaves((outputs, trees))}
    assert dtypes <= {jnp.dtype(jnp.float32)}, dtypes


# --- dense: the kernel gradient through a materialised transpose ---------------------------

@pytest.mark.parametrize("shape", [(32, 5), (3, 7, 5), (600, 5)])  # barrier path; plain x @ w
def test_dense_matmul_derivatives_equal_plain_matmul(shape):
    from jdl.nn.dense import TRANSPOSED_MAX_ROWS, matmul

    assert (math.prod(shape[:-1]) > TRANSPOSED_MAX_ROWS) == (shape[0] == 600)
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (5, 4))
    v = jax.random.normal(jax.random.key(2), (5, 4))
    ours = lambda w, x: jnp.sum(jnp.tanh(matmul(x, w)) ** 2)  # noqa: E731
    plain = lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2)  # noqa: E731
    batch = jnp.stack([x, 2 * x])
    for derivative, xs in ((jax.grad, x), (lambda f: jax.grad(f, 1), x), (jax.hessian, x),
                           (lambda f: jax.jacfwd(jax.grad(f, 1), 0), x),
                           (lambda f: lambda w, x: jax.jvp(lambda u: jax.grad(f)(u, x), (w,),
                                                           (v,))[1], x),  # forward-over-reverse
                           (lambda f: jax.jit(jax.grad(f)), x),
                           (lambda f: jax.vmap(jax.grad(f), (None, 0)), batch)):
        np.testing.assert_allclose(derivative(ours)(w, xs), derivative(plain)(w, xs),
                                   rtol=1e-12, atol=1e-12)
    ints = jnp.arange(3 * 5).reshape(3, 5)  # integer inputs: no tangent for x
    np.testing.assert_allclose(jax.grad(lambda w: matmul(ints, w).sum())(w),
                               jnp.broadcast_to(ints.sum(0)[:, None], w.shape))


# --- conv2d output sizes -------------------------------------------------------------------

@pytest.mark.parametrize("n, k, s, d", [(7, 3, 1, 1), (8, 3, 2, 1), (9, 2, 3, 1), (10, 3, 2, 2),
                                        (6, 1, 1, 1), (11, 4, 3, 2)])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 1), (0, 3))])
def test_conv2d_output_size_formula(n, k, s, d, padding):
    k_eff = (k - 1) * d + 1
    if padding == "SAME":
        out = -(-n // s)  # ceil(n / s)
        p = max((out - 1) * s + k_eff - n, 0)
        pads = (p, p)
    elif padding == "VALID":
        pads = (0, 0)
    else:
        pads = (sum(padding[0]), sum(padding[1]))
    expected = tuple((n + p - k_eff) // s + 1 for p in pads)
    if padding == "SAME":
        assert expected == (-(-n // s),) * 2
    layer = nn.conv2d(2, k, strides=s, padding=padding, dilation=d)
    init_out = []

    def output_shape(key, x):  # shapes only: traced, never compiled
        out_shape, params, _ = layer.init(key, x.shape)
        init_out.append(out_shape)
        return layer.apply(params, x)[0]

    y = jax.eval_shape(output_shape, jax.random.key(0), jnp.ones((1, n, n, 1)))
    assert init_out[0] == y.shape == (1, *expected, 2)


def test_conv2d_config_normalised():
    layer = nn.conv2d(4, 3, strides=(2, 1), padding=1, dilation=2)
    assert layer.kind == "conv2d"
    assert layer.config == {"features": 4, "kernel_size": (3, 3), "strides": (2, 1),
                            "padding": ((1, 1), (1, 1)), "dilation": (2, 2), "use_bias": True}
    assert nn.conv2d(1, (1, 2), padding="same").config["padding"] == "SAME"
    pool = nn.max_pool((2, 3))
    assert pool.config == {"window": (2, 3), "strides": (2, 3), "padding": "VALID"}


def test_conv2d_promotes_mixed_dtypes():
    layer = nn.conv2d(2, 3)
    _, params, _ = layer.init(jax.random.key(0), (1, 4, 4, 1), jnp.float32)
    y, _ = layer.apply(params, jnp.ones((1, 4, 4, 1), jnp.float32))
    assert y.dtype == jnp.float32


# --- batch norm ----------------------------------------------------------------------------

def _bn_input():
    base = jax.random.normal(jax.random.key(3), (16, 3, 3, 3))
    return base * jnp.array([1.0, 3.0, 0.5]) + jnp.array([2.0, -1.0, 5.0])


def test_batch_norm_train_uses_batch_statistics():
    layer = nn.batch_norm(momentum=0.8, eps=1e-5)
    _, params, state = layer.init(jax.random.key(0), (-1, 3, 3, 3))
    x = _bn_input()
    y, new_state = layer.apply(params, x, state=state, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-10)
    batch_var = x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), batch_var / (batch_var + 1e-5), rtol=1e-10)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, atol=1e-4)
    # running = momentum * running + (1 - momentum) * batch, biased variance
    np.testing.assert_allclose(new_state["mean"], 0.2 * x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(new_state["var"], 0.8 * 1.0 + 0.2 * batch_var, rtol=1e-12)
    # A second step averages again from the new running statistics.
    _, state2 = layer.apply(params, x, state=new_state, train=True)
    np.testing.assert_allclose(state2["mean"], (0.8 * 0.2 + 0.2) * x.mean(axis=(0, 1, 2)),
                               rtol=1e-12)


def test_batch_norm_eval_uses_running_statistics():
    layer = nn.batch_norm(eps=1e-3)
    _, params, _ = layer.init(jax.random.key(0), (-1, 3))
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, 1.0, -1.0])}
    state = {"mean": jnp.array([1.0, -2.0, 0.5]), "var": jnp.array([4.0, 0.25, 1.0])}
    x = jax.random.normal(jax.random.key(4), (5, 3))
    y, new_state = layer.apply(params, x, state=state)
    expected = (x - state["mean"][None]) / jnp.sqrt(state["var"][None] + 1e-3)
    np.testing.assert_allclose(y, expected * params["scale"][None] + params["bias"][None],
                               rtol=1e-12)
    assert new_state is state
    # Each example is normalised on its own in evaluation.
    np.testing.assert_allclose(layer.apply(params, x[:1], state=state)[0], y[:1], rtol=1e-12)


def test_batch_norm_missing_state():
    layer = nn.batch_norm()
    _, params, state = layer.init(jax.random.key(0), (-1, 3))
    x = _bn_input()[:, 0, 0, :]
    with pytest.raises(ValueError, match="batch_norm: evaluation.*state="):
        layer.apply(params, x)
    with pytest.raises(ValueError, match="batch_norm"):
        nn.serial(nn.dense(3), layer).apply(
            {"0_dense": {"w": jnp.eye(3), "b": jnp.zeros(3)}, "1_batch_norm": params}, x)
    # In training a missing state is read as the initial one.
    with_state = layer.apply(params, x, state=state, train=True)
    without = layer.apply(params, x, train=True)
    jax.tree.map(np.testing.assert_array_equal, with_state, without)


@pytest.mark.parametrize("kwargs", [{"momentum": 1.5}, {"momentum": -0.1}, {"eps": 0.0}])
def test_batch_norm_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="batch_norm"):
        nn.batch_norm(**kwargs)


def test_layer_norm_normalises_each_example():
    layer = nn.layer_norm()
    _, params, _ = layer.init(jax.random.key(0), (-1, 4, 6))
    x = 3.0 * jax.random.normal(jax.random.key(5), (2, 4, 6)) + 1.0
    y, _ = layer.apply(params, x)
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(layer.apply(params, x, train=True)[0], y)


# --- dropout -------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_rate_is_drop_probability(rate):
    layer = nn.dropout(rate)
    x = jnp.full((500, 400), 2.0)
    y, _ = layer.apply({}, x, key=jax.random.key(0), train=True)
    dropped = float(jnp.mean(y == 0.0))
    assert abs(dropped - rate) < 0.01
    np.testing.assert_allclose(y[y != 0.0], 2.0 / (1.0 - rate), rtol=1e-12)
    assert abs(float(y.mean()) - 2.0) < 0.05  # expectation preserved


def test_dropout_key_semantics():
    layer = nn.dropout(0.5)
    x = jnp.ones((8, 16))
    with pytest.raises(ValueError, match=r"dropout: train=True needs a PRNG key.*key="):
        layer.apply({}, x, train=True)
    a, _ = layer.apply({}, x, key=jax.random.key(7), train=True)
    b, _ = layer.apply({}, x, key=jax.random.key(7), train=True)
    c, _ = layer.apply({}, x, key=jax.random.key(8), train=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(layer.apply({}, x)[0], x)  # eval: identity, no key needed
    np.testing.assert_array_equal(nn.dropout(0.0).apply({}, x, train=True)[0], x)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_dropout_bad_rate(rate):
    with pytest.raises(ValueError, match="dropout: expected a drop probability"):
        nn.dropout(rate)


# --- bad input -----------------------------------------------------------------------------

BAD_INPUTS = [
    ("conv2d", nn.conv2d(2, 3), (1, 4, 4, 2), [(1, 4, 4), (1, 4, 4, 3)]),
    ("max_pool", nn.max_pool(2), (1, 4, 4, 2), [(1, 4, 4)]),
    ("avg_pool", nn.avg_pool(2), (1, 4, 4, 2), [(4, 4)]),
    ("batch_norm", nn.batch_norm(), (2, 3), [(3,), (2, 4)]),
    ("layer_norm", nn.layer_norm(), (2, 3), [(2, 4)]),
    ("self_attention", nn.self_attention(2), (1, 3, 4), [(3, 4), (1, 3, 5)]),
    ("rnn", nn.rnn(2), (1, 3, 4), [(3, 4), (1, 3, 5)]),
    ("lstm", nn.lstm(2), (1, 3, 4), [(1, 3, 4, 1), (1, 3, 2)]),
    ("dense", nn.dense(2), (1, 3), [(1, 4)]),
]


@pytest.mark.parametrize("name, layer, good, bad_shapes", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_wrong_rank_or_features_raise(name, layer, good, bad_shapes):
    _, params, state = layer.init(jax.random.key(0), good)
    for bad in bad_shapes:
        with pytest.raises(ValueError, match=rf"{name}: expected .*{re.escape(str(bad))}"):
            layer.apply(params, jnp.ones(bad), state=state)


@pytest.mark.parametrize("make, message", [
    (lambda: nn.conv2d(0, 3), "conv2d: expected a positive int for features"),
    (lambda: nn.conv2d(2, (3, 0)), "conv2d: expected a positive int or a pair"),
    (lambda: nn.conv2d(2, 3, padding="FULL"), "conv2d: expected padding"),
    (lambda: nn.conv2d(2, 3, padding=((1, -1), (0, 0))), "conv2d: expected padding"),
    (lambda: nn.max_pool(2, strides=0), "max_pool: expected a positive int"),
    (lambda: nn.self_attention(0), "self_attention: expected a positive int num_heads"),
    (lambda: nn.rnn(0), "rnn: expected a positive int hidden"),
    (lambda: nn.rnn(2, activation="swish"), "activations.get: unknown activation"),
])
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_init_shape_errors():
    with pytest.raises(ValueError, match="conv2d: window .* does not fit"):
        nn.conv2d(2, 5, padding="VALID").init(jax.random.key(0), (1, 3, 3, 1))
    with pytest.raises(ValueError, match="self_attention: features 5 is not divisible"):
        nn.self_attention(2).init(jax.random.key(0), (1, 3, 5))
    with pytest.raises(ValueError, match=r"max_pool: expected an input shape \(batch, height"):
        nn.max_pool(2).init(jax.random.key(0), (1, 4, 4))


def test_attention_mask_and_h0_shapes_checked():
    att = nn.self_attention(1)
    _, params, _ = att.init(jax.random.key(0), (2, 3, 2))
    with pytest.raises(ValueError, match=r"self_attention: expected mask of shape \(3, 3\)"):
        att.apply(params, jnp.ones((2, 3, 2)), mask=jnp.ones((2, 3), bool))
    lstm = nn.lstm(2)
    _, params, _ = lstm.init(jax.random.key(0), (2, 3, 2))
    with pytest.raises(ValueError, match=r"lstm: expected h0 as a tuple \(h0, c0\)"):
        lstm.apply(params, jnp.ones((2, 3, 2)), h0=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"lstm: expected c0 of shape \(batch, hidden\)"):
        lstm.apply(params, jnp.ones((2, 3, 2)), h0=(jnp.zeros((2, 2)), jnp.zeros((2, 3))))


def test_fully_masked_query_gets_zero_weights():
    att = nn.self_attention(1, return_weights=True)
    _, params, _ = att.init(jax.random.key(0), (1, 3, 2))
    mask = jnp.array([[True, True, False], [False, False, False], [True, True, True]])
    (y, w), _ = att.apply(params, jax.random.normal(jax.random.key(1), (1, 3, 2)), mask=mask)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(w[0, 0, 1], 0.0)
    np.testing.assert_allclose(w[0, 0].sum(axis=-1), [1.0, 0.0, 1.0], rtol=1e-12)
    np.testing.assert_array_equal(w[0, 0, 0, 2], 0.0)


# --- a jitted training step compiles once --------------------------------------------------

def test_training_step_does_not_recompile():
    model = nn.serial(nn.dense(16), nn.batch_norm(), nn.activation("relu"), nn.dropout(0.2),
                      nn.dense(3))
    _, params, state = model.init(jax.random.key(0), (-1, 5))
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)
    traces = []

    @jax.jit
    def step(params, state, opt_state, x, labels, key):
        traces.append(1)  # runs only while tracing

        def loss_fn(p):
            logits, new_state = model.apply(p, x, state=state, key=key, train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    losses = []
    for i in range(3):
        kx, ky, kd = jax.random.split(jax.random.key(10 + i), 3)
        x = jax.random.normal(kx, (32, 5))
        labels = jax.random.randint(ky, (32,), 0, 3)
        params, new_state, opt_state, loss = step(params, state, opt_state, x, labels, kd)
        assert not np.allclose(new_state["1_batch_norm"]["mean"], state["1_batch_norm"]["mean"])
        state = new_state
        losses.append(float(loss))
    assert len(traces) == 1
    assert step._cache_size() == 1
    assert np.all(np.isfinite(losses))
