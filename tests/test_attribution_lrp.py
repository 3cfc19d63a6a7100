"""LRP: rules against matrix-form references, LRP-0 = gradient x input, limits, conservation,
batch-norm merging, jit and sharding, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import nn, parallel
from jdl.attribution import (
    by_position, by_type, epsilon, epsilon_gamma_box, gamma, gradient_x_input, layer_names, lrp,
    lrp_0, merge_batch_norm, rules_of, uniform, zbox)
from jdl.attribution.lrp import _winner_relevance


def _mlp(use_bias=True):
    return nn.serial(nn.dense(7, use_bias=use_bias), nn.activation("relu"),
                     nn.dense(6, use_bias=use_bias), nn.activation("relu"),
                     nn.dense(4, use_bias=use_bias))


def _cnn(use_bias=True):
    return nn.serial(
        nn.conv2d(4, 3, use_bias=use_bias), nn.activation("relu"), nn.max_pool(2),
        nn.conv2d(5, 3, use_bias=use_bias), nn.activation("relu"), nn.avg_pool(2),
        nn.flatten(), nn.dense(3, use_bias=use_bias))


def _resnet(use_bias=True):
    block = nn.serial(nn.conv2d(3, 3, use_bias=use_bias), nn.activation("relu"),
                      nn.conv2d(3, 3, use_bias=use_bias))
    return nn.serial(nn.conv2d(3, 3, use_bias=use_bias), nn.activation("relu"),
                     nn.residual(block), nn.activation("relu"), nn.max_pool(2), nn.flatten(),
                     nn.dense(3, use_bias=use_bias))


def _overlapping_pool_cnn(use_bias=True):
    return nn.serial(nn.conv2d(3, 3, use_bias=use_bias), nn.activation("relu"),
                     nn.max_pool(3, strides=2, padding="SAME"), nn.flatten(),
                     nn.dense(3, use_bias=use_bias))


def _init(model, shape, seed=0, bias_scale=0.1):
    _, params, state = model.init(jax.random.key(seed), (-1, *shape))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    # non-zero biases so that bias effects are exercised
    leaves = [leaf + bias_scale * jax.random.normal(k, leaf.shape) if leaf.ndim == 1 else leaf
              for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves), state


def _images(n=4, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, 8, 8, 1))


# ---------------------------------------------------------------- matrix-form references

def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _ref_layer(rule, a, w, b, r):
    """Plain matrix-form LRP for one dense layer: a (n, j), w (j, k), b (k,), r (n, k)."""
    a, w, b, r = (np.asarray(v, np.float64) for v in (a, w, b, r))
    if rule.name in ("0", "epsilon"):
        contrib = a[:, :, None] * w[None]                                  # (n, j, k)
        z = contrib.sum(1) + b[None]
        return (contrib / _stab(z, rule.epsilon)[:, None] * r[:, None]).sum(2)
    if rule.name == "gamma":
        g, wp, wn = rule.gamma, np.maximum(w, 0), np.minimum(w, 0)
        ap, an = np.maximum(a, 0), np.minimum(a, 0)
        z = a @ w + b[None]
        up = ap[:, :, None] * (w + g * wp)[None] + an[:, :, None] * (w + g * wn)[None]
        dn = ap[:, :, None] * (w + g * wn)[None] + an[:, :, None] * (w + g * wp)[None]
        z_up = up.sum(1) + (b + g * np.maximum(b, 0))[None]
        z_dn = dn.sum(1) + (b + g * np.minimum(b, 0))[None]
        r_up = np.where(z > 0, r, 0) / _stab(z_up, rule.epsilon)
        r_dn = np.where(z < 0, r, 0) / _stab(z_dn, rule.epsilon)
        return (up * r_up[:, None]).sum(2) + (dn * r_dn[:, None]).sum(2)
    low = np.broadcast_to(np.asarray(rule.low, np.float64), a.shape)
    high = np.broadcast_to(np.asarray(rule.high, np.float64), a.shape)
    contrib = (a[:, :, None] * w[None] - low[:, :, None] * np.maximum(w, 0)[None]
               - high[:, :, None] * np.minimum(w, 0)[None])
    z = contrib.sum(1)
    return (contrib / _stab(z, rule.epsilon)[:, None] * r[:, None]).sum(2)


def _ref_mlp(params, x, rules, target):
    """Matrix-form LRP through dense-relu-dense-relu-dense."""
    ws = [params[f"{i}_dense"] for i in (0, 2, 4)]
    acts = [np.asarray(x, np.float64)]
    for i, p in enumerate(ws):
        z = acts[-1] @ np.asarray(p["w"]) + np.asarray(p["b"])[None]
        acts.append(np.maximum(z, 0) if i < 2 else z)
    out = acts[-1]
    r = np.zeros_like(out)
    r[np.arange(len(target)), target] = out[np.arange(len(target)), target]
    for i in (2, 1, 0):
        r = _ref_layer(rules[i], acts[i], ws[i]["w"], ws[i]["b"], r)
    return r


RULE_SETS = {
    "lrp0": [lrp_0()] * 3,
    "epsilon": [epsilon(0.3)] * 3,
    "gamma": [gamma(0.5)] * 3,
    "gamma_stab0": [gamma(0.25, 0.0)] * 3,
    "zbox_gamma_eps_0": [zbox(-2.0, 2.0), gamma(0.25), lrp_0()],
    "zbox_arrays": [zbox(-jnp.linspace(1, 2, 5), jnp.linspace(2, 3, 5)), epsilon(0.1),
                    epsilon(1e-6)],
}


@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_rules_match_the_matrix_form(name):
    rules = RULE_SETS[name]
    model = _mlp()
    params, _ = _init(model, (5,))
    x = jax.random.normal(jax.random.key(2), (6, 5))             # inputs of both signs
    target = np.array([0, 1, 2, 3, 0, 1])
    composite = lambda index, count, layer: rules[index]          # noqa: E731
    result = jax.jit(functools.partial(lrp, model, composite=composite))(
        params, x, target=jnp.asarray(target))
    np.testing.assert_allclose(result.relevance, _ref_mlp(params, x, rules, target),
                               rtol=1e-9, atol=1e-12)
    out, _ = model.apply(params, x)
    np.testing.assert_allclose(result.score, out[np.arange(6), target], rtol=1e-12)


@pytest.mark.parametrize("rule", [lrp_0(), epsilon(0.2), gamma(0.3), zbox(0.0, 1.0)],
                         ids=["lrp0", "epsilon", "gamma", "zbox"])
def test_conv_layer_matches_its_dense_matrix(rule):
    conv = nn.conv2d(3, 3, strides=2, padding="SAME")
    _, params, _ = conv.init(jax.random.key(3), (-1, 7, 7, 2))
    params = {"w": params["w"], "b": 0.2 * jax.random.normal(jax.random.key(4), (3,))}
    x = jax.random.uniform(jax.random.key(5), (2, 7, 7, 2))
    out, _ = conv.apply(params, x)
    # the convolution as a dense matrix (in, out) and a tiled bias
    conv_nb = nn.conv2d(3, 3, strides=2, padding="SAME", use_bias=False)
    matrix = jax.jacobian(lambda v: conv_nb.apply({"w": params["w"]}, v.reshape(1, 7, 7, 2))[0]
                          .reshape(-1))(jnp.zeros(98))
    w, b = np.asarray(matrix).T, np.tile(np.asarray(params["b"]), out.shape[1] * out.shape[2])
    target = jnp.array([0, 5])
    model = nn.serial(conv, nn.flatten())
    result = lrp(model, {"0_conv2d": params, "1_flatten": {}}, x, composite=rule, target=target)
    flat_out = np.asarray(out).reshape(2, -1)
    r = np.zeros_like(flat_out)
    r[[0, 1], [0, 5]] = flat_out[[0, 1], [0, 5]]
    expected = _ref_layer(rule, np.asarray(x).reshape(2, -1), w, b, r)
    np.testing.assert_allclose(np.asarray(result.relevance).reshape(2, -1), expected,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("build, shape", [
    (_mlp, (5,)), (_cnn, (8, 8, 1)), (_resnet, (8, 8, 1)), (_overlapping_pool_cnn, (7, 7, 2))],
    ids=["mlp", "cnn", "resnet", "overlapping_pool"])
def test_lrp0_equals_gradient_times_input_on_relu_networks(build, shape):
    model = build()
    params, _ = _init(model, shape)
    x = jax.random.uniform(jax.random.key(6), (3, *shape))
    relevance = lrp(model, params, x, composite=lrp_0(), stabilizer=0.0).relevance
    expected = gradient_x_input(model, params, x)
    np.testing.assert_allclose(relevance, expected, rtol=1e-9, atol=1e-12)


def test_max_pool_relevance_goes_to_the_first_winner_like_the_gradient():
    pool = nn.max_pool((2, 3))
    x = jax.random.randint(jax.random.key(7), (3, 4, 6, 2), 0, 3).astype(jnp.float64)  # ties
    r = jax.random.normal(jax.random.key(8), (3, 2, 2, 2))
    gradient = jax.vjp(lambda a: pool.apply({}, a)[0], x)[1](r)[0]
    np.testing.assert_array_equal(_winner_relevance((2, 3), x, r), gradient)


def test_gamma_zero_is_lrp0_and_epsilon_tends_to_lrp0():
    model = _cnn()
    params, _ = _init(model, (8, 8, 1))
    x = _images()
    ref = lrp(model, params, x, composite=lrp_0(), stabilizer=0.0).relevance
    g0 = lrp(model, params, x, composite=gamma(0.0, stabilizer=0.0), stabilizer=0.0).relevance
    np.testing.assert_allclose(g0, ref, rtol=1e-9, atol=1e-12)
    errors = [float(jnp.abs(lrp(model, params, x, composite=epsilon(e), stabilizer=e).relevance
                            - ref).max()) for e in (1e-1, 1e-3, 1e-5, 1e-7, 1e-9)]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    # once eps is below every |z|, the difference shrinks in proportion to eps
    assert errors[3] < errors[2] / 50 and errors[4] < errors[3] / 50
    assert errors[-1] < 1e-5 * float(jnp.abs(ref).max())


@pytest.mark.parametrize("build, shape", [(_mlp, (5,)), (_cnn, (8, 8, 1)),
                                          (_resnet, (8, 8, 1))], ids=["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("composite", ["lrp0", "gamma", "box_gamma_0"])
def test_relevance_is_conserved_layer_by_layer_without_biases(build, shape, composite):
    model = build(use_bias=False)
    params, _ = _init(model, shape, bias_scale=0.0)
    x = jax.random.uniform(jax.random.key(7), (3, *shape))
    chosen = {"lrp0": lrp_0(), "gamma": gamma(0.25, stabilizer=0.0),
              "box_gamma_0": by_position(input=zbox(0.0, 1.0, stabilizer=0.0),
                                         lower=gamma(0.5, 0.0), middle=gamma(0.1, 0.0),
                                         upper=lrp_0())}[composite]
    result = lrp(model, params, x, composite=chosen, stabilizer=0.0)
    assert result.conservation_gap.shape == (3, len(layer_names(model)))
    scale = float(jnp.abs(result.score).max())
    np.testing.assert_allclose(result.conservation_gap, 0.0, atol=1e-10 * scale)
    np.testing.assert_allclose(result.relevance.reshape(3, -1).sum(1), result.score,
                               rtol=1e-9)


def test_biases_and_epsilon_absorb_relevance():
    model = _mlp()
    params, _ = _init(model, (5,), bias_scale=0.5)
    x = jax.random.normal(jax.random.key(8), (4, 5))
    gaps = lrp(model, params, x, composite=epsilon(0.5)).conservation_gap
    assert float(jnp.abs(gaps[:, [0, 2, 4]]).min()) > 1e-6       # dense layers absorb
    np.testing.assert_allclose(gaps[:, [1, 3]], 0.0)             # relu passes through


@pytest.mark.parametrize("use_bias", [True, False])
def test_merging_batch_norm_leaves_the_function_unchanged(use_bias):
    model = nn.serial(nn.conv2d(4, 3, use_bias=use_bias), nn.batch_norm(), nn.activation("relu"),
                      nn.flatten(), nn.dense(5, use_bias=use_bias), nn.batch_norm(),
                      nn.activation("relu"), nn.dense(3))
    _, params, state = model.init(jax.random.key(9), (-1, 8, 8, 1))
    x = _images(6)
    # make the batch-norm statistics and affine parameters non-trivial
    for i in (1, 5):
        name = f"{i}_batch_norm"
        c = params[name]["scale"].shape[0]
        k = jax.random.split(jax.random.key(i), 4)
        params[name] = {"scale": 1 + 0.5 * jax.random.normal(k[0], (c,)),
                        "bias": jax.random.normal(k[1], (c,))}
        state[name] = {"mean": jax.random.normal(k[2], (c,)),
                       "var": jax.random.uniform(k[3], (c,), minval=0.2, maxval=2.0)}
    merged, m_params, m_state = merge_batch_norm(model, params, state)
    assert [c.kind for c in merged.children].count("batch_norm") == 0
    before, _ = model.apply(params, x, state=state)
    after, _ = merged.apply(m_params, x, state=m_state)
    np.testing.assert_allclose(after, before, rtol=1e-10, atol=1e-12)
    composite = by_type({"conv2d": gamma(), "dense": epsilon(0.01)}, input=zbox(0.0, 1.0))
    r_model = lrp(model, params, x, composite=composite, state=state)
    r_merged = lrp(merged, m_params, x, composite=composite, state=m_state)
    np.testing.assert_allclose(r_model.relevance, r_merged.relevance, rtol=1e-9, atol=1e-12)
    assert len(layer_names(model)) == len(layer_names(merged))


def test_composites_assign_rules_by_position_and_type():
    model = nn.serial(*[layer for _ in range(3) for layer in (nn.dense(4), nn.activation("relu"))],
                      nn.dense(2))
    box = zbox(0.0, 1.0)
    names = [name for name, _ in rules_of(model, by_position(input=box))]
    rules = [rule.name for _, rule in rules_of(model, by_position(input=box))]
    assert names == ["0_dense", "2_dense", "4_dense", "6_dense"]
    assert rules == ["zbox", "gamma", "epsilon", "0"]
    rules = [rule.name for _, rule in rules_of(_cnn(), epsilon_gamma_box(0.0, 1.0))]
    assert rules == ["zbox", "gamma", "epsilon"]
    assert [r.name for _, r in rules_of(_cnn(), uniform(lrp_0()))] == ["0", "0", "0"]


@pytest.mark.devices(4)
def test_jit_and_sharded_batch_give_the_same_relevance():
    model = _cnn()
    params, _ = _init(model, (8, 8, 1))
    x = _images(8)
    explain = jax.jit(functools.partial(lrp, model, composite=epsilon_gamma_box(0.0, 1.0)))
    eager = lrp(model, params, x, composite=epsilon_gamma_box(0.0, 1.0))
    mesh = parallel.data_mesh(4)
    sharded = explain(parallel.replicate(params, mesh), parallel.shard_batch(x, mesh))
    np.testing.assert_allclose(explain(params, x).relevance, eager.relevance, rtol=1e-10)
    np.testing.assert_allclose(sharded.relevance, eager.relevance, rtol=1e-10)
    np.testing.assert_allclose(sharded.conservation_gap, eager.conservation_gap, atol=1e-10)


def test_float32_stays_float32():
    model = _cnn()
    params, _ = _init(model, (8, 8, 1))
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    result = lrp(model, params, _images().astype(jnp.float32),
                 composite=epsilon_gamma_box(0.0, 1.0))
    assert result.relevance.dtype == jnp.float32


def test_bad_input_raises_clear_errors():
    model = nn.serial(nn.dense(3), nn.activation("softmax"))
    _, params, _ = model.init(jax.random.key(0), (-1, 4))
    with pytest.raises(ValueError, match="lrp: layer '1_activation'.*softmax"):
        lrp(model, params, jnp.ones((2, 4)))
    model = nn.serial(nn.dense(3), nn.layer_norm())
    _, params, _ = model.init(jax.random.key(0), (-1, 4))
    with pytest.raises(ValueError, match="lrp: layer '1_layer_norm' of kind 'layer_norm'"):
        lrp(model, params, jnp.ones((2, 4)))
    model = _mlp()
    params, _ = _init(model, (5,))
    with pytest.raises(ValueError, match="lrp: expected target"):
        lrp(model, params, jnp.ones((2, 5)), target=jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="lrp: expected x of shape"):
        lrp(model, params, jnp.ones(5))
    with pytest.raises(ValueError, match="zbox: expected bounds"):
        zbox(None, 1.0)
    with pytest.raises(TypeError, match="lrp: expected a jdl Layer"):
        lrp(lambda v: v, params, jnp.ones((2, 5)))
