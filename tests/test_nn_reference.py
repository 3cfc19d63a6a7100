"""jdl.nn layers against plain loop implementations written like the notes' code (numpy).

Each reference loops over output positions (and heads / time steps) the way the
notes' PyTorch snippets do, with padding, strides and dilation added.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jdl import nn
from jdl.nn.conv import shifted_conv

TOL = 1e-5


def _rng(seed):
    return np.random.default_rng(seed)


def _same_pads(n, k_eff, s):
    """TensorFlow's SAME rule: ceil(n / s) outputs, the odd pad at the end."""
    out = -(-n // s)
    total = max((out - 1) * s + k_eff - n, 0)
    return (total // 2, total - total // 2)


def _pads(spatial, window, strides, padding):
    if padding == "SAME":
        return tuple(_same_pads(n, k, s) for n, k, s in zip(spatial, window, strides))
    if padding == "VALID":
        return ((0, 0), (0, 0))
    return padding


# --- convolution ---------------------------------------------------------------------------

def notes_conv_forward(x, W, b):
    """The notes' convolution layer, single channel, stride 1, no padding (verbatim logic)."""
    k = W.shape[0]
    steps = int((x.shape[1] - k)) + 1
    y = np.empty((1, steps, steps))
    for i in range(steps):
        for j in range(steps):
            y[0, i, j] = (x[0, i:i + k, j:j + k] * W).sum() + b
    return y


def conv2d_loops(x, w, b, strides, padding, dilation):
    """``y[n, i, j, o] = sum x_pad[n, i*sh + a*dh, j*sw + c*dw, :] * w[a, c, :, o] + b[o]``."""
    kh, kw, _, cout = w.shape
    (sh, sw), (dh, dw) = strides, dilation
    keh, kew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    pads = _pads(x.shape[1:3], (keh, kew), strides, padding)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = (xp.shape[1] - keh) // sh + 1, (xp.shape[2] - kew) // sw + 1
    y = np.empty((x.shape[0], oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * sh:i * sh + keh:dh, j * sw:j * sw + kew:dw, :]  # (n, kh, kw, cin)
            for o in range(cout):
                y[:, i, j, o] = (patch * w[..., o]).sum(axis=(1, 2, 3)) + b[o]
    return y


def test_conv2d_matches_notes_code():
    rng = _rng(0)
    x, W, b = rng.normal(size=(1, 6, 6)), rng.normal(size=(3, 3)), 0.7
    layer = nn.conv2d(1, 3, padding="VALID")
    params = {"w": jnp.asarray(W)[:, :, None, None], "b": jnp.array([b])}
    y, _ = layer.apply(params, jnp.asarray(x)[..., None])
    np.testing.assert_allclose(y[..., 0], notes_conv_forward(x, W, b), atol=TOL)


@pytest.mark.parametrize("kernel, strides, padding, dilation", [
    ((3, 3), (1, 1), "VALID", (1, 1)),
    ((3, 3), (1, 1), "SAME", (1, 1)),
    ((2, 3), (2, 1), "SAME", (1, 1)),
    ((3, 2), (2, 2), ((1, 2), (0, 1)), (1, 1)),
    ((3, 3), (1, 2), "SAME", (2, 1)),
    ((2, 2), (3, 2), ((2, 0), (1, 1)), (2, 3)),
])
@pytest.mark.parametrize("channels", [3, 6], ids=["shifted_matmul", "lax_conv"])
def test_conv2d_matches_loops(kernel, strides, padding, dilation, channels):
    rng = _rng(1)
    x = rng.normal(size=(2, 7, 8, channels))
    layer = nn.conv2d(4, kernel, strides=strides, padding=padding, dilation=dilation)
    _, params, _ = layer.init(jax.random.key(0), x.shape)
    params = {"w": params["w"], "b": jnp.asarray(rng.normal(size=4))}
    y, _ = jax.jit(layer.apply)(params, jnp.asarray(x))
    expected = conv2d_loops(x, np.asarray(params["w"]), np.asarray(params["b"]), strides,
                            padding, dilation)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, atol=TOL)


@pytest.mark.parametrize("kernel, strides, pads, dilation", [
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((2, 3), (2, 1), ((0, 1), (2, 0)), (2, 1)),
])
def test_shifted_conv_and_its_gradients_equal_lax_conv(kernel, strides, pads, dilation):
    rng = _rng(2)
    x, w = jnp.asarray(rng.normal(size=(3, 6, 7, 2))), jnp.asarray(rng.normal(size=(*kernel, 2, 5)))
    ours = lambda x, w: shifted_conv(x, w, strides, pads, dilation)       # noqa: E731
    lax_conv = lambda x, w: lax.conv_general_dilated(                      # noqa: E731
        x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(ours(x, w), lax_conv(x, w), atol=TOL)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))               # noqa: E731
    grads = zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(lax_conv), (0, 1))(x, w))
    for g_ours, g_lax in grads:
        np.testing.assert_allclose(g_ours, g_lax, atol=TOL)


# --- pooling -------------------------------------------------------------------------------

def notes_max_pool_forward(x, kernel_size, stride):
    """The notes' max-pooling layer on a 2-D array (verbatim logic)."""
    steps = int((x.shape[0] - kernel_size) / stride) + 1
    y = np.array([x[i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size].max()
                  for i in range(0, steps) for j in range(0, steps)])
    return y.reshape(steps, steps)


def pool_loops(x, window, strides, padding, reduce):
    """Windows over a NaN-padded input; ``reduce`` ignores NaNs (``np.nanmax``/``np.nanmean``)."""
    pads = _pads(x.shape[1:3], window, strides, padding)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=np.nan)
    oh = (xp.shape[1] - window[0]) // strides[0] + 1
    ow = (xp.shape[2] - window[1]) // strides[1] + 1
    y = np.empty((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * strides[0]:i * strides[0] + window[0],
                       j * strides[1]:j * strides[1] + window[1], :]
            y[:, i, j, :] = reduce(patch, axis=(1, 2))
    return y


@pytest.mark.parametrize("k, s", [(2, 2), (3, 1), (3, 2)])
def test_max_pool_matches_notes_code(k, s):
    x = _rng(2).normal(size=(7, 7))
    y, _ = nn.max_pool(k, strides=s).apply({}, jnp.asarray(x)[None, :, :, None])
    np.testing.assert_allclose(y[0, :, :, 0], notes_max_pool_forward(x, k, s), atol=TOL)


POOL_CASES = [
    ((2, 2), (2, 2), "VALID"),
    ((3, 3), (2, 2), "SAME"),
    ((3, 2), (1, 2), ((1, 1), (0, 1))),
    ((2, 3), (3, 1), "SAME"),
]


@pytest.mark.parametrize("window, strides, padding", POOL_CASES)
@pytest.mark.parametrize("kind, reduce", [("max_pool", np.nanmax), ("avg_pool", np.nanmean)])
def test_pooling_matches_loops(kind, reduce, window, strides, padding):
    x = _rng(3).normal(size=(2, 7, 6, 3))
    layer = getattr(nn, kind)(window, strides=strides, padding=padding)
    out_shape, _, _ = layer.init(jax.random.key(0), x.shape)
    y, _ = jax.jit(layer.apply)({}, jnp.asarray(x))
    expected = pool_loops(x, window, strides, padding, reduce)
    assert y.shape == expected.shape == out_shape
    np.testing.assert_allclose(y, expected, atol=TOL)


# --- self-attention ------------------------------------------------------------------------

def _softmax_rows(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def notes_attention_forward(x, y, w_kq):
    """The notes' self-attention layer (verbatim logic, numpy for torch)."""
    K = x @ w_kq
    Q = y @ w_kq
    V = x
    d = (w_kq.shape[1]) ** 0.5
    qk = Q @ (K.T) / d
    attention_weights = _softmax_rows(qk)
    output = attention_weights @ V
    return output, attention_weights


def test_notes_attention_matches_notes_code():
    rng = _rng(4)
    x, q_seq, w = rng.normal(size=(5, 4)), rng.normal(size=(3, 4)), rng.normal(size=(4, 6))
    for query in (x, q_seq):  # self-attention, then queries from another sequence
        out, weights = jax.jit(nn.notes_attention)(x, query, w)
        ref_out, ref_weights = notes_attention_forward(x, query, w)
        np.testing.assert_allclose(out, ref_out, atol=TOL)
        np.testing.assert_allclose(weights, ref_weights, atol=TOL)
    batched_out, batched_w = nn.notes_attention(np.stack([x, 2 * x]), np.stack([x, x]), w)
    np.testing.assert_allclose(batched_out[1], notes_attention_forward(2 * x, x, w)[0], atol=TOL)
    np.testing.assert_allclose(batched_w[1], notes_attention_forward(2 * x, x, w)[1], atol=TOL)


def multi_head_loops(params, x, num_heads, head_dim, causal, mask):
    """Per-batch, per-head, per-query loops: scores q_i . k_j / sqrt(D), masked softmax."""
    batch, t, _ = x.shape
    bias = {n: np.asarray(params.get("b" + n, np.zeros(params["w" + n].shape[1])))
            for n in ("q", "k", "v", "o")}
    out = np.zeros((batch, t, num_heads * head_dim))
    weights = np.zeros((batch, num_heads, t, t))
    for b in range(batch):
        for h in range(num_heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            q, k, v = (x[b] @ np.asarray(params["w" + n])[:, cols] + bias[n][cols]
                       for n in ("q", "k", "v"))
            for i in range(t):
                allowed = [j for j in range(t) if not (causal and j > i) and (
                    mask is None or (mask[i, j] if mask.ndim == 2 else mask[b, i, j]))]
                if not allowed:
                    continue
                scores = np.array([q[i] @ k[j] / np.sqrt(head_dim) for j in allowed])
                p = np.exp(scores - scores.max())
                p /= p.sum()
                for pj, j in zip(p, allowed):
                    weights[b, h, i, j] = pj
                    out[b, i, cols] += pj * v[j]
    return out @ np.asarray(params["wo"]) + bias["o"], weights


@pytest.mark.parametrize("num_heads, head_dim, causal, use_bias, mask_rank", [
    (1, None, False, False, None),
    (2, None, True, False, None),
    (3, 2, False, True, 2),
    (2, 3, True, True, 3),
])
def test_multi_head_attention_matches_per_head_loops(num_heads, head_dim, causal, use_bias,
                                                     mask_rank):
    rng = _rng(5)
    batch, t, features = 2, 5, 6
    x = rng.normal(size=(batch, t, features))
    layer = nn.self_attention(num_heads, head_dim=head_dim, causal=causal, use_bias=use_bias,
                              return_weights=True)
    _, params, _ = layer.init(jax.random.key(1), x.shape)
    params = {name: jnp.asarray(rng.normal(size=p.shape)) for name, p in params.items()}
    mask = None
    if mask_rank is not None:
        mask = rng.random((batch, t, t) if mask_rank == 3 else (t, t)) < 0.6
        mask[..., 0] = True
        if mask_rank == 3:
            mask[1, 2, :] = False  # a query with nothing to attend to
    (y, weights), _ = jax.jit(layer.apply)(params, jnp.asarray(x), mask=mask)
    ref_y, ref_weights = multi_head_loops(params, x, num_heads, head_dim or features // num_heads,
                                          causal, mask)
    np.testing.assert_allclose(weights, ref_weights, atol=TOL)
    np.testing.assert_allclose(y, ref_y, atol=TOL)


def test_single_head_layer_is_the_pure_attention_function():
    rng = _rng(6)
    x = jnp.asarray(rng.normal(size=(2, 4, 3)))
    layer = nn.self_attention(1, return_weights=True)
    _, params, _ = layer.init(jax.random.key(2), x.shape)
    (y, weights), _ = layer.apply(params, x)
    out, ref_weights = nn.attention(x @ params["wq"], x @ params["wk"], x @ params["wv"])
    np.testing.assert_allclose(weights[:, 0], ref_weights, atol=TOL)
    np.testing.assert_allclose(y, out @ params["wo"], atol=TOL)


# --- recurrent cells -----------------------------------------------------------------------

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def rnn_loops(params, x, h0):
    w_x, w_h, b = (np.asarray(params[n]) for n in ("w_x", "w_h", "b"))
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ w_x + h @ w_h + b)
        hs.append(h)
    return np.stack(hs, axis=1)


def lstm_loops(params, x, h0, c0):
    """The notes' LSTM: forget gate f, input gate i, candidate g = tanh, output gate o."""
    w_x, w_h, b = (np.asarray(params[n]) for n in ("w_x", "w_h", "b"))
    hidden = w_h.shape[0]
    h, c, hs, cs = h0, c0, [], []
    for t in range(x.shape[1]):
        z = x[:, t] @ w_x + h @ w_h + b
        i = _sigmoid(z[:, :hidden])
        f = _sigmoid(z[:, hidden:2 * hidden])
        g = np.tanh(z[:, 2 * hidden:3 * hidden])
        o = _sigmoid(z[:, 3 * hidden:])
        c = f * c + i * g  # long-term memory: keep f of it, add i of the candidate
        h = o * np.tanh(c)  # short-term memory: o of the squashed long-term memory
        hs.append(h)
        cs.append(c)
    return np.stack(hs, axis=1), c


def _random_params(layer, shape, seed):
    _, params, _ = layer.init(jax.random.key(seed), shape)
    rng = _rng(seed)
    return {n: jnp.asarray(0.5 * rng.normal(size=p.shape)) for n, p in params.items()}


def test_rnn_matches_loops():
    rng = _rng(7)
    x, h0 = rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 5))
    params = _random_params(nn.rnn(5), x.shape, 7)
    expected = rnn_loops(params, x, h0)
    y, _ = jax.jit(nn.rnn(5).apply)(params, jnp.asarray(x), h0=h0)
    np.testing.assert_allclose(y, expected, atol=TOL)
    last, _ = nn.rnn(5, return_sequences=False).apply(params, jnp.asarray(x), h0=h0)
    np.testing.assert_allclose(last, expected[:, -1], atol=TOL)
    h, out = nn.rnn_cell(params, jnp.asarray(h0), jnp.asarray(x[:, 0]))
    np.testing.assert_allclose(h, expected[:, 0], atol=TOL)
    np.testing.assert_array_equal(h, out)
    zero_start, _ = nn.rnn(5).apply(params, jnp.asarray(x))
    np.testing.assert_allclose(zero_start, rnn_loops(params, x, np.zeros((3, 5))), atol=TOL)


def test_lstm_matches_loops():
    rng = _rng(8)
    x, h0, c0 = rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    params = _random_params(nn.lstm(5), x.shape, 8)
    expected, c_last = lstm_loops(params, x, h0, c0)
    y, _ = jax.jit(nn.lstm(5).apply)(params, jnp.asarray(x), h0=(h0, c0))
    np.testing.assert_allclose(y, expected, atol=TOL)
    last, _ = nn.lstm(5, return_sequences=False).apply(params, jnp.asarray(x), h0=(h0, c0))
    np.testing.assert_allclose(last, expected[:, -1], atol=TOL)
    carry = (jnp.asarray(h0), jnp.asarray(c0))
    for t in range(x.shape[1]):
        carry, out = nn.lstm_cell(params, carry, jnp.asarray(x[:, t]))
    np.testing.assert_allclose(carry[0], expected[:, -1], atol=TOL)
    np.testing.assert_allclose(carry[1], c_last, atol=TOL)
    np.testing.assert_array_equal(out, carry[0])
    zero_start, _ = nn.lstm(5).apply(params, jnp.asarray(x))
    np.testing.assert_allclose(
        zero_start, lstm_loops(params, x, np.zeros((3, 5)), np.zeros((3, 5)))[0], atol=TOL)


def test_lstm_init_forget_bias_and_gate_layout():
    _, params, _ = nn.lstm(3).init(jax.random.key(0), (2, 4, 5))
    assert params["w_x"].shape == (5, 12) and params["w_h"].shape == (3, 12)
    np.testing.assert_array_equal(params["b"], [0.0] * 3 + [1.0] * 3 + [0.0] * 6)
    for gate in range(4):  # each gate's recurrent block is orthogonal
        block = params["w_h"][:, 3 * gate:3 * (gate + 1)]
        np.testing.assert_allclose(block.T @ block, np.eye(3), atol=1e-10)
