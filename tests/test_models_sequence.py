"""jdl.models.sequence: the notes' BPTT by hand equals autodiff through lax.scan; the h0
strategies; RNN and LSTM learn digits read row by row; the LSTM's dh_t/dh_0 outlives the RNN's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jdl import data, models, nn
from jdl import train as jt
from jdl.nn.recurrent import lstm_cell

F, T, H = 3, 5, 4   # features, time steps, hidden units of the small cases


def _x(seed=0, batch=2, time=T, features=F):
    return jax.random.normal(jax.random.key(seed), (batch, time, features))


def _init(model, seed=0, time=T):
    return model.init(jax.random.key(seed), (-1, time, F))


@pytest.mark.parametrize("cell,h0", [("rnn", "zeros"), ("rnn", "random"), ("lstm", "learned"),
                                     ("lstm", "warmup")])
def test_gradients_through_sequence_models(cell, h0):
    model = models.sequence_model(cell, H, 2, h0=h0, h0_scale=0.5)
    out_shape, params, state = _init(model)
    assert out_shape == (-1, 2)
    key = jax.random.key(3) if h0 == "random" else None
    x = _x()

    def f(params, x):
        return model.apply(params, x, state=state, key=key, train=True)[0]

    f = jax.jit(f)
    assert f(params, x).shape == (2, 2)
    check_grads(f, (params, x), order=1, modes=["rev"])


@pytest.mark.parametrize("activation,loss_on", [
    ("tanh", "last"), ("tanh", "all"), ("sigmoid", "last"), ("relu", "all"), ("identity", "all")])
def test_hand_written_bptt_equals_autodiff_through_scan(activation, loss_on):
    layer = nn.rnn(H, activation=activation)
    _, params, _ = layer.init(jax.random.key(1), (-1, T, F))
    x, h0 = _x(2, batch=3), jax.random.normal(jax.random.key(3), (3, H))
    target = jax.random.normal(jax.random.key(4), (3, T, H))
    weight = jnp.zeros(T).at[-1].set(1.0) if loss_on == "last" else jnp.linspace(0.5, 1.5, T)

    def loss(params, h0):   # E = sum_t w_t * sum (h_t - target_t)^2 / 2
        hs, _ = layer.apply(params, x, h0=h0)
        return 0.5 * jnp.sum(weight[None, :, None] * (hs - target) ** 2)

    hs, _ = layer.apply(params, x, h0=h0)
    grad_h = weight[None, :, None] * (hs - target)   # dE+/dh_t, the direct part only
    grads, grad_h0 = jax.jit(models.rnn_bptt, static_argnames="activation")(
        params, x, h0, grad_h, activation=activation)
    auto, auto_h0 = jax.grad(loss, argnums=(0, 1))(params, h0)
    for name in ("w_x", "w_h", "b"):
        np.testing.assert_allclose(grads[name], auto[name], rtol=1e-10, atol=1e-12)
        assert np.abs(auto[name]).max() > 1e-3   # not a trivially zero comparison
    np.testing.assert_allclose(grad_h0, auto_h0, rtol=1e-10, atol=1e-12)


def test_zero_h0_is_the_layer_default_and_jit_compiles_once():
    model = models.sequence_model("rnn", H, 2)
    _, params, state = _init(model)
    x = _x()
    h_last, _ = nn.rnn(H, return_sequences=False).apply(params["recurrent"], x)
    expected = h_last @ params["head"]["w"] + params["head"]["b"]
    f = jax.jit(lambda p, x: model.apply(p, x)[0])
    np.testing.assert_allclose(f(params, x), expected, rtol=1e-12)
    f(params, _x(5))
    assert f._cache_size() == 1


@pytest.mark.parametrize("cell", models.CELLS)
def test_random_h0_is_fresh_noise_from_the_key(cell):
    model = models.sequence_model(cell, H, 2, h0="random")
    zeros = models.sequence_model(cell, H, 2)
    _, params, _ = _init(model)
    x = jnp.repeat(_x(1, batch=1), 2, axis=0)   # two copies of one sequence
    y1, _ = model.apply(params, x, key=jax.random.key(1), train=True)
    y1_again, _ = model.apply(params, x, key=jax.random.key(1), train=True)
    y2, _ = model.apply(params, x, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(y1, y1_again)
    assert np.abs(y1 - y2).min() > 1e-6
    assert np.abs(y1[0] - y1[1]).min() > 1e-6   # a fresh h0 per sequence
    # evaluation without a key starts from the noise's mean, zero
    np.testing.assert_allclose(model.apply(params, x)[0], zeros.apply(params, x)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="sequence_model: h0='random' with train=True needs"):
        model.apply(params, x, train=True)


@pytest.mark.parametrize("cell", models.CELLS)
def test_learned_h0_is_a_trained_parameter(cell):
    model = models.sequence_model(cell, H, 2, h0="learned")
    _, params, _ = _init(model)
    names = ("h0", "c0") if cell == "lstm" else ("h0",)
    assert all(params[n].shape == (H,) for n in names)
    x = _x()
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x)[0] ** 2))(params)
    assert all(np.abs(grads[n]).max() > 1e-6 for n in names)
    moved = {**params, "h0": params["h0"] + 0.3}
    assert np.abs(model.apply(moved, x)[0] - model.apply(params, x)[0]).max() > 1e-4
    with pytest.raises(ValueError, match=r"sequence_model: h0='learned' needs"):
        model.apply({k: v for k, v in params.items() if k != "h0"}, x)


def test_warm_up_h0_reuses_the_final_state_of_a_run_from_random():
    x_warm = _x(7, batch=3)
    for cell in models.CELLS:
        model = models.sequence_model(cell, H, 2, h0="warmup", h0_scale=0.7)
        _, params, state = _init(model)
        assert np.abs(state["h0"]).max() > 0   # the random start
        new = jax.jit(lambda p, s, x: models.warm_up_h0(model, p, s, x))(params, state, x_warm)
        rec = params["recurrent"]
        # reference: a Python loop over the sequences one after another, step by step
        h = state["h0"][None]
        c = state["c0"][None] if cell == "lstm" else None
        for seq in x_warm:
            for x_t in seq:
                if cell == "lstm":
                    (h, c), _ = lstm_cell(rec, (h, c), x_t[None])
                else:
                    h = jnp.tanh(x_t[None] @ rec["w_x"] + h @ rec["w_h"] + rec["b"])
        np.testing.assert_allclose(new["h0"], h[0], rtol=1e-12)
        if cell == "lstm":
            np.testing.assert_allclose(new["c0"], c[0], rtol=1e-12)
        # every sequence then starts from the warmed-up state
        x = _x(8)
        carry = (jnp.broadcast_to(new["h0"], (2, H)), jnp.broadcast_to(new["c0"], (2, H))) \
            if cell == "lstm" else jnp.broadcast_to(new["h0"], (2, H))
        h_last, _ = model.children[0].apply(rec, x, h0=carry)
        np.testing.assert_allclose(model.apply(params, x, state=new)[0],
                                   h_last @ params["head"]["w"] + params["head"]["b"], rtol=1e-12)
    with pytest.raises(ValueError, match="warm_up_h0: expected a sequence_model with h0='warmup'"):
        models.warm_up_h0(models.sequence_model("rnn", H, 2), params, state, x_warm)
    with pytest.raises(ValueError, match=r"sequence_model: h0='warmup' needs .* state"):
        model.apply(params, x)


@pytest.mark.parametrize("cell,h0", [("rnn", "warmup"), ("lstm", "random")])
def test_rnn_and_lstm_learn_digits_read_row_by_row(cell, h0):
    ds = data.load("digits", images=True, key=jax.random.key(0))
    x_train, x_test = models.rows_as_sequence(ds.x_train), models.rows_as_sequence(ds.x_test)
    assert x_train.shape[1:] == (8, 8)   # 8 time steps of 8 pixels
    model = models.sequence_model(cell, 32, 10, h0=h0, h0_scale=0.3)
    _, params, state = model.init(jax.random.key(1), (-1, 8, 8), jnp.float32)
    if h0 == "warmup":
        state = models.warm_up_h0(model, params, state, x_train[:4])
    loss = jt.model_loss(model, lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(
        logits, y).mean())
    result = jt.fit(loss, params, optax.adam(1e-2), (x_train, ds.y_train), epochs=4,
                    batch_size=64, key=jax.random.key(2), model_state=state, quiet=True)
    logits, _ = model.apply(result.params, x_test, state=result.model_state)
    assert logits.dtype == jnp.float32
    accuracy = float(jnp.mean(logits.argmax(-1) == ds.y_test))
    assert accuracy > 0.6, f"{cell} accuracy {accuracy:.3f} on 10 classes"


@pytest.mark.parametrize("cell", models.CELLS)
def test_hidden_gradient_norms_equal_the_jacobian(cell):
    layer = nn.rnn(H) if cell == "rnn" else nn.lstm(H)
    _, params, _ = layer.init(jax.random.key(0), (-1, T, F))
    x = _x(1, batch=2)
    s0 = 0.3 * jax.random.normal(jax.random.key(2), (2, 2 * H if cell == "lstm" else H))
    h0 = (s0[:, :H], s0[:, H:]) if cell == "lstm" else s0
    norms = jax.jit(models.hidden_gradient_norms, static_argnums=0)(cell, params, x, h0=h0)
    assert norms.shape == (T,)

    def states(s):   # all hidden states of the whole batch, from the nn layer
        carry = (s[:, :H], s[:, H:]) if cell == "lstm" else s
        return layer.apply(params, x, h0=carry)[0]    # (batch, time, hidden)

    jac = jax.jacrev(states)(s0)   # (batch, time, hidden, batch, state)
    expected = [np.mean([np.linalg.norm(jac[b, t, :, b]) for b in range(2)]) for t in range(T)]
    np.testing.assert_allclose(norms, expected, rtol=1e-10)


def test_lstm_keeps_dh_dh0_larger_than_the_rnn_over_long_sequences():
    # standard-normal inputs, both with jdl's default initialisation (orthogonal w_h,
    # forget bias 1); the RNN's ||dh_t/dh_0|| decays faster through tanh saturation
    time = 40
    x = jax.random.normal(jax.random.key(0), (8, time, 8))
    norms = {}
    for cell, layer in (("rnn", nn.rnn(16)), ("lstm", nn.lstm(16))):
        fn = jax.jit(lambda p, x: models.hidden_gradient_norms(cell, p, x))
        seeds = [fn(layer.init(jax.random.key(seed), (-1, time, 8))[1], x) for seed in range(3)]
        norms[cell] = np.array(seeds)
    assert np.all(np.diff(np.log(norms["rnn"]), axis=1).mean(1) < 0)   # it does vanish
    assert np.all(norms["rnn"][:, 0] > norms["lstm"][:, 0])   # not so at the first step
    for t in (10, 20, 39):
        assert norms["lstm"][:, t].min() > norms["rnn"][:, t].max(), (t, norms)
    ratio = norms["lstm"].mean(0) / norms["rnn"].mean(0)
    assert ratio[39] > 1e3 * ratio[10]   # the gap grows with the sequence length


@pytest.mark.parametrize("fn_name,call", [
    ("sequence_model", lambda p, x: models.sequence_model("rnn", H, 2).apply(p, x)),
    ("hidden_gradient_norms", lambda p, x: models.hidden_gradient_norms("rnn", p["recurrent"], x)),
    ("rnn_bptt", lambda p, x: models.rnn_bptt(p["recurrent"], x, jnp.zeros((2, H)),
                                              jnp.zeros((2, T, H)))),
])
@pytest.mark.parametrize("shape,what", [((2, T), "rank 3"), ((2, T, F, 1), "rank 3"),
                                        ((2, T, F + 1), f"last axis of size {F}")])
def test_wrong_sequence_shapes_name_the_function(fn_name, call, shape, what):
    _, params, _ = _init(models.sequence_model("rnn", H, 2))
    with pytest.raises(ValueError, match=f"{fn_name}: expected .*{what}"):
        call(params, jnp.ones(shape))


def test_bad_arguments():
    with pytest.raises(ValueError, match="sequence_model: expected cell 'rnn' or 'lstm'"):
        models.sequence_model("gru", H, 2)
    with pytest.raises(ValueError, match="sequence_model: expected h0 in"):
        models.sequence_model("rnn", H, 2, h0="ones")
    with pytest.raises(ValueError, match="sequence_model: expected an input shape"):
        models.sequence_model("rnn", H, 2).init(jax.random.key(0), (-1, 64))
    with pytest.raises(ValueError, match="rnn_bptt: expected activation in"):
        models.rnn_bptt({}, _x(), jnp.zeros((2, H)), jnp.zeros((2, T, H)), activation="softmax")
    with pytest.raises(ValueError, match="rows_as_sequence: expected images"):
        models.rows_as_sequence(jnp.ones((2, 64)))
    assert models.rows_as_sequence(jnp.ones((2, 8, 8, 3))).shape == (2, 8, 24)
