"""jdl.shapes: the notes' size, receptive-field and count formulas against real jdl layers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdl import nn, shapes
from jdl.shapes import LayerGeometry


@given(n=st.integers(1, 64), k=st.integers(1, 9), p=st.integers(0, 8), s=st.integers(1, 5),
       d=st.integers(1, 3))
@settings(max_examples=300, deadline=None)
def test_notes_output_size_equals_floor_formula(n, k, p, s, d):
    if n + p < shapes.effective_kernel(k, d):
        with pytest.raises(ValueError, match="larger than the padded input"):
            shapes.conv_output_size_notes(n, k, p, s, d)
        return
    expected = int(np.floor((n + p - shapes.effective_kernel(k, d)) / s)) + 1
    assert shapes.conv_output_size_notes(n, k, p, s, d) == expected
    assert shapes.conv_output_size(n, k, p, s, d) == expected


CONV_CASES = list(itertools.product([7, 8, 13], [1, 3, 4], [1, 2, 3], [1, 2],
                                    ["VALID", "SAME", ((2, 1), (0, 3))]))


@pytest.mark.parametrize("n,k,s,d,padding", CONV_CASES)
def test_output_size_matches_jdl_conv2d(n, k, s, d, padding):
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = (shapes.same_padding(n, k, s, d), shapes.same_padding(n + 1, k, s, d))
    else:
        pads = padding
    totals = [sum(p) for p in pads]
    if min(n + totals[0], n + 1 + totals[1]) < shapes.effective_kernel(k, d):
        return
    layer = nn.conv2d(2, k, strides=s, padding=padding, dilation=d)
    out_shape, params, _ = layer.init(jax.random.key(0), (1, n, n + 1, 3))
    y, _ = layer.apply(params, jnp.ones((1, n, n + 1, 3)))
    expected = (shapes.conv_output_size_notes(n, k, totals[0], s, d),
                shapes.conv_output_size_notes(n + 1, k, totals[1], s, d))
    assert y.shape[1:3] == expected == tuple(out_shape[1:3])


@given(st.lists(st.tuples(st.integers(1, 7), st.integers(1, 4)), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_receptive_field_recursive_equals_closed(layers):
    geometry = [LayerGeometry(k, s) for k, s in layers]
    assert shapes.receptive_field_recursive(geometry) == shapes.receptive_field_closed(geometry)


def _gradient_support(model, params, size):
    """Rows and columns of input pixels on which the centre output unit depends."""
    x = jax.random.normal(jax.random.key(1), (1, size, size, 1))
    y, _ = model.apply(params, x)
    i, j = y.shape[1] // 2, y.shape[2] // 2
    g = jax.grad(lambda x: model.apply(params, x)[0][0, i, j, 0])(x)
    rows, cols = np.nonzero(np.asarray(g[0, :, :, 0]))
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


STACKS = {
    "conv3-conv3": lambda: nn.serial(nn.conv2d(2, 3), nn.activation("tanh"), nn.conv2d(1, 3)),
    "conv5s2-pool2-conv3": lambda: nn.serial(
        nn.conv2d(2, 5, strides=2), nn.activation("tanh"), nn.avg_pool(2),
        nn.conv2d(1, 3)),
    "dilated": lambda: nn.serial(nn.conv2d(2, 3, dilation=2), nn.activation("tanh"),
                                 nn.conv2d(2, (3, 2), strides=(2, 1)), nn.conv2d(1, 3)),
    "pool-stride3": lambda: nn.serial(nn.conv2d(2, 2), nn.avg_pool(3, strides=3),
                                      nn.conv2d(1, 2, strides=2)),
}


@pytest.mark.parametrize("name", sorted(STACKS))
def test_receptive_field_equals_gradient_support(name):
    model = STACKS[name]()
    size = 41
    _, params, _ = model.init(jax.random.key(0), (1, size, size, 1), jnp.float64)
    geometry = shapes.spatial_geometry(model)
    rf = shapes.receptive_field(model)
    assert rf == tuple(shapes.receptive_field_recursive([g[a] for g in geometry]) for a in (0, 1))
    assert _gradient_support(model, params, size) == rf


def test_spatial_geometry_rejects_dense():
    with pytest.raises(ValueError, match="'dense' layer"):
        shapes.spatial_geometry(nn.serial(nn.conv2d(1, 3), nn.dense(2)))
    with pytest.raises(ValueError, match="'flatten' layer"):
        shapes.spatial_geometry(nn.serial(nn.conv2d(1, 3), nn.flatten()))


@pytest.mark.parametrize("sizes", [(4, 3, 2), (64, 128, 128, 10), (1, 1)])
def test_counts_match_params_tree(sizes):
    model = nn.serial(*[nn.dense(n) for n in sizes[1:]])
    _, params, _ = model.init(jax.random.key(0), (-1, sizes[0]))
    counts = shapes.mlp_counts(sizes)
    assert counts["total"] == shapes.count_params(params)
    assert counts["biases"] == sum(p["b"].size for p in params.values())
    if len(sizes) == 3:
        n_in, hidden, n_out = sizes
        assert shapes.mlp_bias_count_notes(hidden, n_out) == counts["biases"]
        # The notes' "number of parameters" counts the weights only.
        assert shapes.mlp_weight_count_notes(n_in, hidden, n_out) == counts["weights"]
        assert counts["total"] > counts["weights"]


def test_mlp_counts_bad_input():
    with pytest.raises(ValueError, match="mlp_counts"):
        shapes.mlp_counts((3,))
