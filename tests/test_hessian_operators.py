"""jdl.hessian products and dense matrices: analytic Hessians, GGN, data averaging, guards."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jdl import hessian, losses, nn, parallel

MODEL = nn.serial(nn.dense(12), nn.activation("tanh"), nn.dense(3))
_, PARAMS, _ = MODEL.init(jax.random.key(0), (-1, 5))
X = jax.random.normal(jax.random.key(1), (48, 5))
Y = jnp.arange(48) % 3


def mlp_loss(params, batch):
    return losses.softmax_cross_entropy(MODEL.apply(params, batch[0])[0], batch[1])


MLP_SPLIT = hessian.SplitLoss(lambda p, b: MODEL.apply(p, b[0])[0],
                              lambda out, b: losses.softmax_cross_entropy(out, b[1]))


def reference_hessian(loss_fn, params, batch):
    """The dense Hessian by jax.hessian of the flattened loss (independent of jdl)."""
    flat, unravel = ravel_pytree(params)
    return jax.jit(jax.hessian(lambda f, batch: loss_fn(unravel(f), batch)))(flat, batch)


def linear_loss(params, batch):
    x, y = batch
    return losses.mse(x @ params["w"] + params["b"], y)


def logistic_loss(params, batch):
    x, t = batch
    return losses.binary_cross_entropy(x @ params["w"], t, from_logits=True)


def test_hvp_matches_reference_hessian_times_vector():
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), PARAMS)
    product = hessian.hvp(mlp_loss, PARAMS, (X, Y), v)
    expected = reference_hessian(mlp_loss, PARAMS, (X, Y)) @ ravel_pytree(v)[0]
    np.testing.assert_allclose(ravel_pytree(product)[0], expected, rtol=1e-10, atol=1e-12)
    assert jax.tree.structure(product) == jax.tree.structure(PARAMS)


@pytest.mark.parametrize("chunk_size", [None, 7, 10_000])
def test_hessian_matrix_chunks_match_reference(chunk_size):
    matrix = hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y), chunk_size=chunk_size)
    np.testing.assert_allclose(matrix, reference_hessian(mlp_loss, PARAMS, (X, Y)),
                               rtol=1e-10, atol=1e-12)


def test_linear_regression_hessian_is_two_xtx_over_n():
    x = jax.random.normal(jax.random.key(4), (40, 6))
    y = jax.random.normal(jax.random.key(5), (40,))
    params = {"b": jnp.zeros(()), "w": jnp.zeros(6)}
    x1 = jnp.concatenate([jnp.ones((40, 1)), x], axis=1)  # ravel order: b, then w
    expected = 2 * x1.T @ x1 / 40
    np.testing.assert_allclose(hessian.hessian_matrix(linear_loss, params, (x, y)), expected,
                               rtol=1e-12, atol=1e-12)


def test_logistic_regression_hessian():
    x = jax.random.normal(jax.random.key(6), (60, 4))
    t = (jax.random.uniform(jax.random.key(7), (60,)) < 0.5).astype(x.dtype)
    params = {"w": jax.random.normal(jax.random.key(8), (4,))}
    p = jax.nn.sigmoid(x @ params["w"])
    expected = x.T @ (x * (p * (1 - p))[:, None]) / 60
    np.testing.assert_allclose(hessian.hessian_matrix(logistic_loss, params, (x, t)), expected,
                               rtol=1e-12, atol=1e-14)


def test_list_of_batches_is_the_exact_example_weighted_mean():
    full = hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y))
    # Two equal batches (stacked and scanned) and one smaller: weights 20/48, 20/48, 8/48.
    batches = [(X[:20], Y[:20]), (X[20:40], Y[20:40]), (X[40:], Y[40:])]
    np.testing.assert_allclose(hessian.hessian_matrix(mlp_loss, PARAMS, batches), full,
                               rtol=1e-11, atol=1e-13)
    v = jax.tree.map(jnp.ones_like, PARAMS)
    np.testing.assert_allclose(ravel_pytree(hessian.hvp(mlp_loss, PARAMS, batches, v))[0],
                               full @ ravel_pytree(v)[0], rtol=1e-10, atol=1e-12)


def test_ggn_equals_jt_hl_j():
    flat, unravel = ravel_pytree(PARAMS)
    jac = jax.jit(jax.jacfwd(lambda f, b: MLP_SPLIT.output_fn(unravel(f), b)))(flat, (X, Y))
    outputs = MLP_SPLIT.output_fn(PARAMS, (X, Y))  # (48, 3); jac: (48, 3, n)
    h_out = jax.jit(jax.hessian(MLP_SPLIT.output_loss))(outputs, (X, Y))  # (48, 3, 48, 3)
    jac = jac.reshape(-1, flat.shape[0])
    expected = jac.T @ h_out.reshape(jac.shape[0], jac.shape[0]) @ jac
    ggn = hessian.hessian_matrix(MLP_SPLIT, PARAMS, (X, Y), curvature="ggn")
    np.testing.assert_allclose(ggn, expected, rtol=1e-10, atol=1e-13)
    assert np.linalg.eigvalsh(ggn).min() > -1e-12  # positive semi-definite


def test_ggn_equals_hessian_for_linear_model_with_mse():
    x = jax.random.normal(jax.random.key(9), (30, 4))
    y = jax.random.normal(jax.random.key(10), (30, 2))
    params = {"w": jax.random.normal(jax.random.key(11), (4, 2))}
    split = hessian.SplitLoss(lambda p, b: b[0] @ p["w"], lambda out, b: losses.mse(out, b[1]))
    ggn = hessian.hessian_matrix(split, params, (x, y), curvature="ggn")
    np.testing.assert_allclose(ggn, hessian.hessian_matrix(split, params, (x, y)),
                               rtol=1e-12, atol=1e-14)
    eig = hessian.eigenvalues(split, params, (x, y), k=2, key=jax.random.key(0),
                              curvature="ggn", tol=1e-10)
    np.testing.assert_allclose(eig.values, np.linalg.eigvalsh(ggn)[::-1][:2], rtol=1e-9)


class FlaxMLP(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        hidden = jnp.tanh(fnn.Dense(8, param_dtype=jnp.float64, name="hidden")(x))
        return fnn.Dense(3, param_dtype=jnp.float64, name="out")(hidden)


def test_flax_linen_variables():
    model = FlaxMLP()
    variables = model.init(jax.random.key(12), X[:1])

    def loss_fn(variables, batch):
        return losses.softmax_cross_entropy(model.apply(variables, batch[0]), batch[1])

    matrix = hessian.hessian_matrix(loss_fn, variables, (X, Y))
    np.testing.assert_allclose(matrix, reference_hessian(loss_fn, variables, (X, Y)),
                               rtol=1e-10, atol=1e-12)
    eig = hessian.eigenvalues(loss_fn, variables, (X, Y), k=2, key=jax.random.key(0), tol=1e-10)
    np.testing.assert_allclose(eig.values, np.linalg.eigvalsh(matrix)[::-1][:2], rtol=1e-8)
    assert eig.vectors["params"]["hidden"]["kernel"].shape == (2, 5, 8)


def test_block_hessian_is_the_diagonal_block():
    full = np.asarray(hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y)))
    # ravel order: "0_dense" (b, w), "1_activation" (none), "2_dense" (b, w)
    size = PARAMS["0_dense"]["b"].size + PARAMS["0_dense"]["w"].size
    block = hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y), block="2_dense")
    np.testing.assert_allclose(block, full[size:, size:], rtol=1e-10, atol=1e-13)
    v = jax.tree.map(jnp.ones_like, PARAMS["0_dense"])
    product = hessian.hvp(mlp_loss, PARAMS, (X, Y), v, block=("0_dense",))
    np.testing.assert_allclose(ravel_pytree(product)[0], full[:size, :size] @ np.ones(size),
                               rtol=1e-10, atol=1e-12)


class _UnhashableLoss:
    """A loss object with ``__eq__`` and so no hash."""

    def __eq__(self, other):
        return isinstance(other, _UnhashableLoss)

    __hash__ = None

    def __call__(self, params, batch):
        return mlp_loss(params, batch)


def test_repeated_products_do_not_trace_the_loss_again():
    calls = []

    def counted(params, batch):
        calls.append(1)
        return mlp_loss(params, batch)

    v = jax.tree.map(jnp.ones_like, PARAMS)
    for loss in (counted, hessian.SplitLoss(lambda p, b: counted(p, b) * 0 + MODEL.apply(
            p, b[0])[0], MLP_SPLIT.output_loss)):
        first = hessian.hvp(loss, PARAMS, (X, Y), v)
        traced = len(calls)
        again = hessian.hvp(loss, PARAMS, (X, Y), v)
        assert traced >= 2 and len(calls) == traced    # the check and the product: cached
        np.testing.assert_array_equal(ravel_pytree(again)[0], ravel_pytree(first)[0])
    with pytest.raises(ValueError, match="hvp: expected a hashable loss_fn"):
        hessian.hvp(_UnhashableLoss(), PARAMS, (X, Y), v)


def _dot_precisions(jaxpr) -> list:
    """The ``precision`` of every dot_general in a jaxpr and the jaxprs nested in it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(inner, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                    found += _dot_precisions(getattr(inner, "jaxpr", inner))
    return found


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_products_use_full_matmul_precision_unless_the_caller_set_one(curvature):
    # XLA's default on GPUs is TF32 (~1e-3): a float32 eigenvalue test missed 1e-4 on a GPU
    op = hessian.operators.Operator(MLP_SPLIT, curvature)
    data = hessian.operators.prepare_data("test", (X, Y))
    matvec = lambda v: hessian.operators.matvec_fn(op, PARAMS, data)[0](v)  # noqa: E731
    v = jnp.ones(hessian.operators.param_count(PARAMS))
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    precisions = _dot_precisions(jax.make_jaxpr(matvec)(v).jaxpr)
    assert len(precisions) >= 6 and set(precisions) == {highest}
    with jax.default_matmul_precision("bfloat16"):
        chosen = _dot_precisions(jax.make_jaxpr(matvec)(v).jaxpr)
    assert len(chosen) == len(precisions) and highest not in chosen


@pytest.mark.devices(4)
def test_sharded_data_gives_the_same_eigenvalues():
    sharded = parallel.shard_batch((X, Y), parallel.data_mesh(4))
    assert len(sharded[0].sharding.device_set) == 4
    many = hessian.eigenvalues(mlp_loss, PARAMS, sharded, k=2, which="both",
                               key=jax.random.key(1), tol=1e-9)
    exact = np.linalg.eigvalsh(hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y)))
    np.testing.assert_allclose(many.values, [exact[-1], exact[-2], exact[0], exact[1]],
                               rtol=1e-8)


class DropoutLoss:
    """A loss with dropout whose key changes on every call: no well-defined Hessian."""

    def __init__(self):
        self.calls = 0

    def __call__(self, params, batch):
        self.calls += 1
        hidden = jnp.tanh(batch[0] @ params["0_dense"]["w"] + params["0_dense"]["b"])
        keep = jax.random.bernoulli(jax.random.key(self.calls), 0.5, hidden.shape)
        logits = (hidden * keep * 2) @ params["2_dense"]["w"] + params["2_dense"]["b"]
        return losses.softmax_cross_entropy(logits, batch[1])


def test_determinism_guard_catches_dropout():
    dropout_loss = DropoutLoss()
    with pytest.raises(ValueError, match="eigenvalues: the curvature operator is not determin"):
        hessian.eigenvalues(dropout_loss, PARAMS, (X, Y), k=1, key=jax.random.key(0),
                            check_determinism=True)
    with pytest.raises(ValueError, match="trace: the curvature operator is not deterministic"):
        hessian.trace(dropout_loss, PARAMS, (X, Y), key=jax.random.key(0), num_samples=4,
                      check_determinism=True)
    # A pure loss passes the guard.
    result = hessian.lanczos(mlp_loss, PARAMS, (X, Y), num_steps=4, key=jax.random.key(0),
                             check_determinism=True)
    assert result.alphas.shape == (4,)


def test_bad_input_is_a_value_error_naming_function_and_value():
    with pytest.raises(ValueError, match=r"eigenvalues: expected loss_fn.*scalar.*\(48,\)"):
        hessian.eigenvalues(lambda p, b: b[0] @ p["w"], {"w": jnp.ones(5)}, (X, Y),
                            key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"trace: expected float params, got dtype int.*\['n'\]"):
        hessian.trace(lambda p, b: jnp.sum(p["w"] ** 2), {"w": jnp.ones(3), "n": jnp.arange(2)},
                      (X, Y), key=jax.random.key(0))
    n = ravel_pytree(PARAMS)[0].size
    with pytest.raises(ValueError, match=rf"eigenvalues: expected k .*<= {n}.*got k={n + 1}"):
        hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), k=n + 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"eigenvalues: expected k .*2\*k.*got k="):
        hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), k=n // 2 + 1, which="both",
                            key=jax.random.key(0))
    with pytest.raises(ValueError, match="hvp: non-finite Hessian-vector product"):
        hessian.hvp(lambda p, b: jnp.sum(jnp.sqrt(p["w"])), {"w": -jnp.ones(3)}, (X, Y),
                    {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="lanczos: non-finite"):
        hessian.lanczos(lambda p, b: jnp.sum(jnp.sqrt(p["w"])), {"w": -jnp.ones(3)}, (X, Y),
                        num_steps=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="curvature='ggn' needs loss_fn to be a SplitLoss"):
        hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y), curvature="ggn")
    with pytest.raises(ValueError, match="expected which to be one of"):
        hessian.eigenvalues(mlp_loss, PARAMS, (X, Y), which="middle", key=jax.random.key(0))
    with pytest.raises(ValueError, match="share a leading example axis"):
        hessian.hvp(mlp_loss, PARAMS, (X, Y[:3]), PARAMS)
    with pytest.raises(ValueError, match="non-empty list of batches"):
        hessian.trace(mlp_loss, PARAMS, [], key=jax.random.key(0))
    with pytest.raises(ValueError, match="block .*'nope'.* is not a key path"):
        hessian.hessian_matrix(mlp_loss, PARAMS, (X, Y), block="nope")
    with pytest.raises(ValueError, match="lanczos: expected a PRNG key"):
        hessian.lanczos(mlp_loss, PARAMS, (X, Y), num_steps=3, key=None)
