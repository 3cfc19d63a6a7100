"""Tests for jdl.backprop: the notes' delta rule and derivative formulas against autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import backprop, nn
from jdl.backprop import Tie


def _network(sizes, seed=0, ties=None):
    """Weights and biases for layer sizes ``sizes``; tied layers get ``None``."""
    keys = jax.random.split(jax.random.key(seed), 2 * len(sizes))
    weights, biases = [], []
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = jax.random.normal(keys[2 * layer], (n_in, n_out), jnp.float64) / np.sqrt(n_in)
        weights.append(None if ties and layer in ties else w)
        biases.append(0.3 * jax.random.normal(keys[2 * layer + 1], (n_out,), jnp.float64))
    return weights, biases


def _data(batch, n_in, n_out, seed=1):
    kx, kt = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, (batch, n_in), jnp.float64),
            jax.random.normal(kt, (batch, n_out), jnp.float64))


def _assert_grads_equal(ours, reference, atol=1e-10):
    flat_ours, tree_ours = jax.tree_util.tree_flatten(ours)
    flat_ref, tree_ref = jax.tree_util.tree_flatten(reference)
    assert tree_ours == tree_ref
    for a, b in zip(flat_ours, flat_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=atol)


# --- the delta rule against jax.grad --------------------------------------------

SIZES = {1: (4, 3), 2: (4, 6, 3), 3: (5, 8, 6, 2), 4: (3, 7, 7, 5, 2)}


@pytest.mark.parametrize("depth, batch", [(1, 9), (2, 1), (3, 32), (4, 9)])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_gradients_equal_autodiff(depth, activation, batch):
    sizes = SIZES[depth]
    weights, biases = _network(sizes, seed=depth)
    x, t = _data(batch, sizes[0], sizes[-1], seed=batch)
    ours = jax.jit(backprop.mlp_gradients, static_argnums=4)
    reference = jax.jit(jax.value_and_grad(backprop.mse_loss, argnums=(0, 1)), static_argnums=4)
    loss, (d_w, d_b) = ours(weights, biases, x, t, activation)
    ref_loss, ref_grads = reference(weights, biases, x, t, activation)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    _assert_grads_equal((d_w, d_b), ref_grads)


TIED = {
    # an auto-encoder with a transposed decoder: W_1 = W_0^T
    "autoencoder": ((6, 3, 6), {1: Tie(0, transpose=True)}),
    # one square hidden matrix used twice: W_2 = W_1
    "shared_hidden": ((4, 5, 5, 5, 2), {2: 1}),
    # a deep auto-encoder tied in both halves, one of them given as a tuple
    "deep_autoencoder": ((6, 4, 3, 4, 6), {2: (1, True), 3: Tie(0, True)}),
}


@pytest.mark.parametrize("name", sorted(TIED))
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_tied_gradients_equal_autodiff(name, activation):
    sizes, ties = TIED[name]
    weights, biases = _network(sizes, seed=3, ties=ties)
    x, t = _data(11, sizes[0], sizes[-1])
    loss, grads = backprop.mlp_gradients(weights, biases, x, t, activation, ties=ties)
    ref_loss, ref_grads = jax.value_and_grad(backprop.mse_loss, argnums=(0, 1))(
        weights, biases, x, t, activation, ties=ties)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    _assert_grads_equal(grads, ref_grads)
    assert all(grads[0][layer] is None for layer in ties)


@pytest.mark.parametrize("name", sorted(TIED))
def test_shared_weight_gradient_is_sum_over_uses(name):
    # the notes: dE/dv = sum over the uses of v; untie by copying, then add the copies' grads
    sizes, ties = TIED[name]
    weights, biases = _network(sizes, seed=4, ties=ties)
    x, t = _data(7, sizes[0], sizes[-1])
    untied = backprop.effective_weights(weights, ties)
    d_untied, _ = backprop.backward(untied, biases, backprop.forward(untied, biases, x, "tanh"),
                                    t, "tanh")
    d_tied, _ = backprop.mlp_gradients(weights, biases, x, t, "tanh", ties=ties)[1]
    for layer, w in enumerate(weights):
        if w is None:
            continue
        expected = d_untied[layer]
        for use, tie in ties.items():
            tie = Tie(tie) if isinstance(tie, int) else Tie(*tie)
            if tie.source == layer:
                expected = expected + (d_untied[use].T if tie.transpose else d_untied[use])
        np.testing.assert_allclose(d_tied[layer], expected, rtol=1e-12, atol=1e-14)


def test_jit_equals_eager():
    ties = {1: Tie(0, transpose=True)}
    weights, biases = _network((6, 3, 6), seed=5, ties=ties)
    x, t = _data(8, 6, 6)
    step = jax.jit(lambda w, b, x, t: backprop.mlp_gradients(w, b, x, t, "relu", ties=ties))
    _assert_grads_equal(step(weights, biases, x, t),
                        backprop.mlp_gradients(weights, biases, x, t, "relu", ties=ties),
                        atol=1e-13)


# --- the notes' own code, transcribed ------------------------------------------


class _NotesMLP:
    """The notes' forward (per-example loop, ReLU) and backward, in NumPy as written."""

    def __init__(self, weights, biases):
        self.W = [np.asarray(w) for w in weights]
        self.B = [np.asarray(b) for b in biases]

    def _relu_derivative(self, a):
        return (np.asarray(a) > 0).astype(float)

    def forward(self, x):
        self.A = [x]
        batches = x
        Y = []
        for k, w_layer in enumerate(self.W[:len(self.W) - 1]):
            activations = []
            for batch in batches:
                weighted = batch.dot(w_layer) + self.B[k]
                activations.append(np.maximum(0, weighted))
            batches = activations
            self.A.append(np.array(activations))
        for batch in self.A[-1]:
            Y.append(batch.dot(self.W[-1]) + self.B[-1])
        return np.array(Y)

    def backward(self, y, t):
        self.DW, self.DB = [], []
        last_layer_loss = 2 * (y - t) / y.shape[0]
        for i in reversed(range(len(self.W))):
            self.DW.append(np.dot(self.A[i].T, last_layer_loss))
            self.DB.append(np.sum(last_layer_loss, axis=0))
            last_layer_loss = np.dot(last_layer_loss, self.W[i].T) * self._relu_derivative(
                self.A[i])
        self.DW.reverse()
        self.DB.reverse()


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_matches_the_notes_code(depth):
    sizes = SIZES[depth]
    weights, biases = _network(sizes, seed=6)
    x, t = _data(10, sizes[0], sizes[-1])
    notes = _NotesMLP(weights, biases)
    y = notes.forward(np.asarray(x))
    notes.backward(y, np.asarray(t))
    acts = backprop.forward(weights, biases, x, "relu")
    np.testing.assert_allclose(acts[-1], y, rtol=1e-12, atol=1e-14)
    for ours, theirs in zip(acts[:-1], notes.A):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    d_w, d_b = backprop.backward(weights, biases, acts, t, "relu")
    _assert_grads_equal((d_w, d_b), (notes.DW, notes.DB), atol=1e-13)


def test_forward_equals_jdl_nn_model():
    sizes = (5, 8, 6, 2)
    weights, biases = _network(sizes, seed=7)
    model = nn.serial(nn.dense(8), nn.activation("tanh"), nn.dense(6), nn.activation("tanh"),
                      nn.dense(2))
    _, params, _ = model.init(jax.random.key(0), (-1, 5))
    for layer, name in enumerate(["0_dense", "2_dense", "4_dense"]):
        params[name] = {"w": weights[layer], "b": biases[layer]}
    x, t = _data(6, 5, 2)
    y, _ = model.apply(params, x)
    np.testing.assert_allclose(backprop.forward(weights, biases, x, "tanh")[-1], y, rtol=1e-12)
    np.testing.assert_allclose(backprop.mse_loss(weights, biases, x, t, "tanh"),
                               np.sum((np.asarray(y) - np.asarray(t)) ** 2) / 6, rtol=1e-12)


# --- derivatives read from the activation ---------------------------------------

Z_WITH_ZEROS = jnp.array([-1e3, -2.0, -1e-300, 0.0, -0.0, 1e-300, 1e-8, 0.5, 3.0, 1e3])


def test_relu_derivative_from_activation_equals_from_z():
    # relu'(z) read from a = relu(z) as a > 0 equals z > 0 everywhere, z = 0 included;
    # relu'(0) is undefined and both take it as 0, the convention of jax.nn.relu
    from_activation = backprop.activation_derivative("relu", jnp.maximum(Z_WITH_ZEROS, 0))
    from_z = (Z_WITH_ZEROS > 0).astype(jnp.float64)
    autodiff = jax.vmap(jax.grad(jax.nn.relu))(Z_WITH_ZEROS)
    np.testing.assert_array_equal(from_activation, from_z)
    np.testing.assert_array_equal(from_activation, autodiff)


@pytest.mark.parametrize("name, fn", [("tanh", jnp.tanh), ("sigmoid", jax.nn.sigmoid)])
def test_smooth_derivative_from_activation_equals_autodiff(name, fn):
    z = jnp.linspace(-30.0, 30.0, 241)
    np.testing.assert_allclose(backprop.activation_derivative(name, fn(z)),
                               jax.vmap(jax.grad(fn))(z), rtol=1e-9, atol=1e-15)


# --- the notes' derivative formulas ---------------------------------------------

X = jnp.concatenate([jnp.linspace(-40.0, 40.0, 321), jnp.array([-700.0, -100.0, 100.0, 700.0])])


@pytest.mark.parametrize("formula, fn", [
    (backprop.sigmoid_derivative, jax.nn.sigmoid),
    (backprop.tanh_derivative, jnp.tanh),
    (backprop.cosh_derivative, jnp.cosh),
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_derivative_formulas_equal_autodiff(formula, fn, dtype):
    x = X.astype(dtype)
    if fn is jnp.cosh and dtype == jnp.float32:
        x = x[jnp.abs(x) < 80]  # cosh overflows float32 beyond 89
    ours = formula(x)
    assert ours.dtype == dtype and np.all(np.isfinite(ours))
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(ours, jax.vmap(jax.grad(fn))(x), rtol=4 * eps, atol=eps)


def _exact_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@pytest.mark.parametrize("formula, fn, exact_fn, exact_derivative", [
    (backprop.sigmoid_derivative, jax.nn.sigmoid, _exact_sigmoid,
     lambda x: np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))) ** 2),
    (backprop.tanh_derivative, jnp.tanh, np.tanh,
     lambda x: 4 * np.exp(-2 * np.abs(x)) / (1 + np.exp(-2 * np.abs(x))) ** 2),
])
def test_derivative_formulas_absolute_error_within_rounding(formula, fn, exact_fn,
                                                            exact_derivative):
    # "s - s^2" and "1 - tanh^2" cancel for large |x| (documented): their absolute error is
    # at most twice the error of s (or tanh) itself plus rounding, against cancellation-free
    # expressions; for |x| < 2, where the cancellation is mild, the relative error is tiny
    x = np.asarray(X)
    eps = np.finfo(float).eps
    fn_error = np.max(np.abs(np.asarray(fn(x)) - exact_fn(x)))
    np.testing.assert_allclose(formula(x), exact_derivative(x), rtol=0,
                               atol=2 * fn_error + 2 * eps)
    mid = np.abs(x) < 2
    np.testing.assert_allclose(formula(x[mid]), exact_derivative(x[mid]), rtol=1e-13)


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 6)])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_softmax_jacobian_equals_jacfwd(shape, scale):
    z = scale * jax.random.normal(jax.random.key(8), shape, jnp.float64)
    ours = backprop.softmax_jacobian(z)
    assert ours.shape == shape + shape[-1:]
    flat = z.reshape(-1, shape[-1])
    autodiff = jax.vmap(jax.jacfwd(lambda v: jax.nn.softmax(v)))(flat)
    np.testing.assert_allclose(ours.reshape(autodiff.shape), autodiff, rtol=1e-12, atol=1e-15)
    # delta_ij S_i - S_i S_j is symmetric and its rows sum to 0
    np.testing.assert_allclose(ours, jnp.swapaxes(ours, -1, -2), atol=1e-15)
    np.testing.assert_allclose(ours.sum(-1), 0.0, atol=1e-15)


def test_softmax_jacobian_float32_and_jit():
    z = jnp.array([[1.0, 2.0, -3.0], [50.0, -50.0, 0.0]], jnp.float32)
    ours = jax.jit(backprop.softmax_jacobian)(z)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, jax.vmap(jax.jacrev(jax.nn.softmax))(z), atol=1e-7)


# --- bad input -------------------------------------------------------------------


def test_bad_input():
    weights, biases = _network((4, 3, 2))
    x, t = _data(5, 4, 2)
    with pytest.raises(ValueError, match="forward: expected a hidden activation"):
        backprop.forward(weights, biases, x, "gelu")
    with pytest.raises(ValueError, match=r"forward: layer 0 expected weight \(5, out\)"):
        backprop.forward(weights, biases, jnp.ones((5, 5)), "relu")
    with pytest.raises(ValueError, match="forward: expected one bias per layer"):
        backprop.forward(weights, biases[:1], x, "relu")
    with pytest.raises(ValueError, match=r"mlp_gradients: expected targets t .*\(5, 2\).*\(5, 3\)"):
        backprop.mlp_gradients(weights, biases, x, jnp.ones((5, 3)), "relu")
    with pytest.raises(ValueError, match=r"backward: expected 3 activations"):
        backprop.backward(weights, biases, [x, t], t, "relu")
    with pytest.raises(ValueError, match="effective_weights: expected weights\\[1\\] to be None"):
        backprop.forward(weights, biases, x, "relu", ties={1: 0})
    with pytest.raises(ValueError, match="a tie must point to an untied layer"):
        backprop.forward([weights[0], None, None], biases + [biases[1]], x, "relu",
                         ties={1: 2, 2: 0})
    with pytest.raises(ValueError, match=r"tie layer indices in \[0, 2\)"):
        backprop.forward(weights, biases, x, "relu", ties={1: 5})
    with pytest.raises(ValueError, match="softmax_jacobian: expected z"):
        backprop.softmax_jacobian(1.0)
    with pytest.raises(ValueError, match="activation_derivative: expected one of"):
        backprop.activation_derivative("elu", x)
