"""Studies of the notes' Back-propagation and Backwards Pass sections.

The delta rule, the weight gradient and the shared-weight rule are checked
against autodiff on digits with :mod:`jdl.backprop`; the derivative formulas
against the complex-step derivative (exact to rounding, independent of the
formula); the counts against the params trees of :mod:`jdl.nn` models; the
decision-boundary recipe on XOR and on a trained net's hidden-unit patterns;
universal approximation by one-hidden-layer tanh nets of growing width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdl import backprop, data, losses, nn, shapes
from jdl import train as jt
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, Finding, study

SECTION = "Back-propagation"
EXACT = 1e-10  # relative error for an identity checked in float64
ACTIVATIONS = ("relu", "tanh", "sigmoid")


def _digits(key, n: int):
    """``n`` digits as ``(n, 64)`` float64 inputs and ``(n, 10)`` one-hot targets."""
    ds = data.load("digits", key=key, split=(1.0, 0.0, 0.0), dtype=jnp.float64)
    x = ds.x_train[:n]
    return x, jax.nn.one_hot(ds.y_train[:n], 10, dtype=x.dtype)


def _mlp(key, sizes, activation, dtype=jnp.float64, bias_std=0.1):
    """Weights and biases (lists) of a jdl dense stack with layer sizes ``sizes``."""
    layers = []
    for width in sizes[1:]:
        layers += [nn.dense(width, b_init=nn.initializers.normal(bias_std)),
                   nn.activation(activation)]
    model = nn.serial(*layers[:-1])
    _, params, _ = model.init(key, (-1, sizes[0]), dtype)
    dense_names = [n for n in model.names if n.endswith("_dense")]
    return [params[n]["w"] for n in dense_names], [params[n]["b"] for n in dense_names]


def _autodiff_deltas(ws, bs, x, t, activation):
    """``dE/da_l`` for every layer output ``a_1 .. a_L`` (``a_L = y``) by autodiff.

    ``E = sum((y - t)^2) / batch`` (:func:`jdl.backprop.mse_loss`); the suffix
    of the network after ``a_l`` is run with :func:`jdl.backprop.forward`.
    """
    acts = backprop.forward(ws, bs, x, activation)
    n = x.shape[0]

    def from_output(y):
        return jnp.sum(jnp.square(y - t)) / n

    deltas = []
    for layer in range(1, len(ws)):
        def suffix(a, layer=layer):
            return from_output(backprop.forward(ws[layer:], bs[layer:], a, activation)[-1])
        deltas.append(jax.grad(suffix)(acts[layer]))
    deltas.append(jax.grad(from_output)(acts[-1]))
    return acts, deltas


def _local_slope(activation, acts, layer, num_layers, include_derivative):
    """``a'_l(z_l)`` of layer output ``l`` (1-based): 1 for the linear output layer."""
    if layer == num_layers or not include_derivative:
        return jnp.ones_like(acts[layer])
    return backprop.activation_derivative(activation, acts[layer])


def _rel(a, b):
    return jnp.linalg.norm(a - b) / jnp.linalg.norm(b)


@jax.jit(static_argnames=("activation", "include_derivative"))
def _rule_errors(ws, bs, x, t, activation, include_derivative):
    """The delta rule and the weight rule against autodiff, and jdl.backprop's backward."""
    acts, deltas = _autodiff_deltas(ws, bs, x, t, activation)
    num_layers = len(ws)
    delta_err, weight_err = [], []
    grads = jax.grad(backprop.mse_loss)(ws, bs, x, t, activation)
    for layer in range(num_layers):  # W[layer] maps a_layer to a_{layer+1}
        local = deltas[layer] * _local_slope(
            activation, acts, layer + 1, num_layers, include_derivative)
        weight_err.append(_rel(acts[layer].T @ local, grads[layer]))
        if layer > 0:  # delta_j = sum_k delta_k a'_k(z_k) w_jk
            delta_err.append(_rel(local @ ws[layer].T, deltas[layer - 1]))
    _, (dw, _) = backprop.mlp_gradients(ws, bs, x, t, activation)
    jdl_err = [_rel(a, b) for a, b in zip(dw, grads)]
    return jnp.max(jnp.stack(delta_err)), jnp.max(jnp.stack(weight_err)), jnp.max(
        jnp.stack(jdl_err))


def _delta_rule_errors(key, n, sizes, include_derivative):
    """Per activation: the delta rule and the weight rule against autodiff (relative errors)."""
    x, t = _digits(key, n)
    out = {}
    for i, activation in enumerate(ACTIVATIONS):
        ws, bs = _mlp(jax.random.fold_in(key, i), sizes, activation)
        errs = _rule_errors(ws, bs, x, t, activation, include_derivative)
        out[activation] = dict(zip(("delta_rule", "weight_rule", "jdl_backprop_weights"),
                                   map(float, errs)))
    return out


@study("bp.delta", SECTION,
       "Error Back-propagation w.r.t a specific neuron: delta_j = dE/da_j = "
       "sum_k dE/da_k da_k/dz_k dz_k/da_j = sum_k delta_k a_k'(z_k) w_jk")
def delta_rule(ctx, include_derivative=True):
    """``delta_j`` from the rule against autodiff's ``dE/da_j``, every hidden layer."""
    n = ctx.pick(64, 512, 1797)
    sizes = (64, 32, 16, 10)
    errors = _delta_rule_errors(ctx.key("bp.delta"), n, sizes, include_derivative)
    worst = max(e["delta_rule"] for e in errors.values())
    ok = worst < EXACT
    return Finding(
        verdict=HOLDS if ok else FAILS,
        summary=f"largest relative error of the delta rule against autodiff {worst:.1e} "
                f"({', '.join(ACTIVATIONS)})",
        method=f"{n} digits, MLP {'-'.join(map(str, sizes))} with each hidden activation, "
               "E = sum((y - t)^2)/N on one-hot targets, float64. dE/da_l by autodiff of the "
               "rest of the network (jdl.backprop.forward); the rule sums delta_k a'_k(z_k) w_jk "
               "over the next layer, a' read from the activation (jdl.backprop), 1 for the "
               "linear output." + ("" if include_derivative else " Test case: a'(z) left out."),
        numbers={"relative_errors": errors, "examples": n, "sizes": list(sizes)},
        threshold=f"holds if every hidden layer's deltas agree to {EXACT:g} (relative)",
        caveat="" if ok else "the rule as computed here disagrees with autodiff")


@study("bp.weight-grad", SECTION,
       "Error Back-propagation w.r.t a specific weight: dE/dw_jk = dE/da_k da_k/dz_k dz_k/dw_jk "
       "= delta_k a_k'(z_k) a_j")
def weight_gradient(ctx, include_derivative=True):
    """``delta_k a'_k(z_k) a_j`` summed over the batch against ``jax.grad`` in the weights."""
    n = ctx.pick(64, 512, 1797)
    sizes = (64, 32, 16, 10)
    errors = _delta_rule_errors(ctx.key("bp.weight-grad"), n, sizes, include_derivative)
    worst = max(e["weight_rule"] for e in errors.values())
    worst_jdl = max(e["jdl_backprop_weights"] for e in errors.values())
    ok = worst < EXACT and worst_jdl < EXACT
    return Finding(
        verdict=HOLDS if ok else FAILS,
        summary=f"largest relative error against jax.grad: formula {worst:.1e}, "
                f"jdl.backprop.backward {worst_jdl:.1e}",
        method=f"{n} digits, MLP {'-'.join(map(str, sizes))} with relu, tanh and sigmoid, "
               "float64: the sum over examples of delta_k a'_k(z_k) a_j (delta_k from autodiff) "
               "and the vectorised delta-rule backward of jdl.backprop, each against jax.grad of "
               "the loss in every weight matrix."
               + ("" if include_derivative else " Test case: a'(z) left out."),
        numbers={"relative_errors": errors, "examples": n},
        threshold=f"holds if both agree with jax.grad to {EXACT:g} (relative) in every layer",
        caveat="" if ok else "the weight formula as computed here disagrees with autodiff")


def _tied_autoencoder_check(x, key):
    """Tied auto-encoder W_dec = W_enc^T: tied backward, autodiff, and the sum of the uses."""
    ws, bs = _mlp(key, (64, 16, 64), "sigmoid")
    return {k: float(v) for k, v in _tied_errors(ws[0], bs, x).items()}


@jax.jit
def _tied_errors(w, bs, x):
    ties = {1: backprop.Tie(0, transpose=True)}
    auto = jax.grad(backprop.mse_loss)([w, None], bs, x, x, "sigmoid", ties=ties)[0]
    _, (d_tied, _) = backprop.mlp_gradients([w, None], bs, x, x, "sigmoid", ties=ties)
    _, (d_uses, _) = backprop.mlp_gradients([w, w.T], bs, x, x, "sigmoid")  # two separate uses
    encoder_use, decoder_use = d_uses[0], d_uses[1].T
    return {"jdl_tied_vs_autodiff": _rel(d_tied[0], auto),
            "sum_of_uses_vs_autodiff": _rel(encoder_use + decoder_use, auto),
            "encoder_use_alone_vs_autodiff": _rel(encoder_use, auto),
            "decoder_use_alone_vs_autodiff": _rel(decoder_use, auto)}


def _entry_sharing_check(x, t, key, uses):
    """One value ``v`` at several entries ``(input, unit)`` of the first weight matrix.

    Returns the autodiff ``dE/dv``, the sum of the uses' gradients (delta rule,
    jdl.backprop) and the notes' factored form ``delta_k * sum(dz_k/dw_use)``
    with ``k`` the unit of the first use.
    """
    ws, bs = _mlp(key, (64, 16, 10), "tanh")
    rows, cols = (np.array(a) for a in zip(*uses))
    v0 = ws[0][rows[0], cols[0]]

    def tie(v):
        return [ws[0].at[rows, cols].set(v)] + ws[1:]

    @jax.jit
    def measure(v0, bs, x, t):
        auto = jax.grad(lambda v: backprop.mse_loss(tie(v), bs, x, t, "tanh"))(v0)
        _, (dw, _) = backprop.mlp_gradients(tie(v0), bs, x, t, "tanh")

        def example_grads(xi, ti):  # per-example dE/dz of the first layer = dB for a batch of 1
            return backprop.mlp_gradients(tie(v0), bs, xi[None], ti[None], "tanh")[1][1][0]

        dz = jax.vmap(example_grads)(x, t) / x.shape[0]
        factored = jnp.sum(dz[:, cols[0]] * jnp.sum(x[:, rows], axis=1))
        return auto, jnp.sum(dw[0][rows, cols]), factored

    auto, sum_of_uses, factored = map(float, measure(v0, bs, x, t))
    return {"autodiff": auto, "sum_of_uses": sum_of_uses, "notes_factored": factored,
            "sum_of_uses_error": abs(sum_of_uses - auto) / abs(auto),
            "notes_factored_error": abs(factored - auto) / abs(auto)}


@study("bp.shared-weight", SECTION,
       "Error Back-propagation w.r.t a specific weight that is shared (v = wij = wkl ...): "
       "dE/dv = dE/da_k da_k/dz_k (dz_k/dw_ij + dz_k/dw_kl ...)")
def shared_weight(ctx, uses=((20, 0), (43, 1))):
    """Sum over uses against autodiff (tied auto-encoder, tied entries); the factored form.

    ``uses``: ``(input pixel, hidden unit)`` entries of the first layer that share one value.
    """
    n = ctx.pick(64, 512, 1797)
    key = ctx.key("bp.shared-weight")
    x, t = _digits(key, n)
    tied = _tied_autoencoder_check(x, key)
    entries = _entry_sharing_check(x, t, jax.random.fold_in(key, 1), tuple(uses))
    sum_ok = max(tied["jdl_tied_vs_autodiff"], tied["sum_of_uses_vs_autodiff"],
                 entries["sum_of_uses_error"]) < EXACT
    factored_ok = entries["notes_factored_error"] < EXACT
    same_unit = len({u[1] for u in uses}) == 1
    verdict = HOLDS if sum_ok and factored_ok else CAVEAT if sum_ok else FAILS
    sum_err = max(tied["sum_of_uses_vs_autodiff"], entries["sum_of_uses_error"])
    one_use = min(tied["encoder_use_alone_vs_autodiff"], tied["decoder_use_alone_vs_autodiff"])
    return Finding(
        verdict=verdict,
        summary=f"sum over uses = autodiff to {sum_err:.1e}; one use alone off by {one_use:.0%}; "
                f"the notes' single-delta form off by {entries['notes_factored_error']:.0%}",
        method=f"{n} digits, float64. (1) A tied auto-encoder 64-16-64 (W_dec = W_enc^T, "
               "sigmoid): "
               "jdl.backprop's tied backward and the sum of the gradients of the two uses "
               "(untied copies) against jax.grad. (2) One value shared by the first-layer "
               f"entries {list(uses)} ((input pixel, hidden unit), "
               f"{'one unit' if same_unit else 'different units'}) of a 64-16-10 tanh MLP: the "
               "sum of the entries' delta-rule gradients, and the notes' form with one "
               "delta_k a'_k(z_k) factored out (k the unit of the first use), against jax.grad.",
        numbers={"tied_autoencoder": tied, "shared_entries": entries,
                 "uses": [list(u) for u in uses]},
        threshold=f"sum over uses within {EXACT:g} (relative) of autodiff; holds if the notes' "
                  "factored form is also exact, caveat if only the sum over uses is",
        caveat="" if verdict == HOLDS else
        "The gradient of a shared weight is the sum over its uses, each with its own delta: "
        "dE/dv = sum_uses delta_k a'_k(z_k) a_j (exact here). The notes factor out one "
        "dE/da_k da_k/dz_k, which is right only when every use feeds the same unit k; for uses "
        "in different units (conv kernels, tied auto-encoders) the factored form is wrong."
        if sum_ok else "the sum over uses disagrees with autodiff")


# --- decision boundaries from hidden-unit combinations ----------------------------------------

XOR_INPUTS = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_TARGETS = np.array([0, 1, 1, 0])
# h1 = relu(x1 + x2) counts the ones, h2 = relu(x1 + x2 - 1) fires only for (1, 1);
# y = h1 - 2 h2 is 0, 1, 1, 0: hidden combinations (0,0), (1,0), (1,0), (2,1).
XOR_BY_HAND = {"0_dense": {"w": np.array([[1.0, 1.0], [1.0, 1.0]]), "b": np.array([0.0, -1.0])},
               "1_activation": {},
               "2_dense": {"w": np.array([[1.0], [-2.0]]), "b": np.array([0.0])}}


def _relu_net(hidden: int, outputs: int = 1):
    return nn.serial(nn.dense(hidden), nn.activation("relu"), nn.dense(outputs))


def _pattern_table(params, x):
    """Each input's hidden on/off pattern and the linear map that pattern gives the output.

    For a one-hidden-layer ReLU net the output on a pattern ``p`` is
    ``((x W1 + b1) * p) W2 + b2``: the table of patterns is the whole decision rule.
    """
    w1, b1 = params["0_dense"]["w"], params["0_dense"]["b"]
    w2, b2 = params["2_dense"]["w"], params["2_dense"]["b"]
    pattern = (x @ w1 + b1 > 0).astype(x.dtype)
    from_table = ((x @ w1 + b1) * pattern) @ w2 + b2
    return np.asarray(pattern, int), np.asarray(from_table)


def _two_feature_net(ctx, key, hidden):
    """A ReLU net on two standardised breast-cancer features, trained with jdl.train.fit."""
    names = ("worst radius", "worst texture")
    ds = data.load("breast_cancer", key=key, dtype=jnp.float64)
    cols = [ds.feature_names.index(n) for n in names]
    scale = data.fit_standardize(ds.x_train[:, cols])
    x_tr, x_te = scale(ds.x_train[:, cols]), scale(ds.x_test[:, cols])
    y_tr, y_te = ds.y_train.astype(x_tr.dtype), ds.y_test
    model = _relu_net(hidden)
    _, params, _ = model.init(key, (-1, 2), x_tr.dtype)

    def loss(p, batch):
        xb, yb = batch
        return losses.binary_cross_entropy(model.apply(p, xb)[0][:, 0], yb, from_logits=True)

    result = jt.fit(loss, params, jt.adam(0.02), (x_tr, y_tr), epochs=ctx.pick(20, 150, 300),
                    batch_size=64, key=key, quiet=True)
    acc = float(jnp.mean((model.apply(result.params, x_te)[0][:, 0] > 0) == (y_te == 1)))
    return model, result.params, x_tr, y_tr, acc, names


@study("bp.decision-boundary", SECTION,
       "To address drawing a decision boundary for a specific function, write down all "
       "combinations of the last hidden layer and the required input in order to achieve that "
       "combination.")
def decision_boundary(ctx, xor_params=None, hidden=4):
    """XOR built by hand from two ReLU units; a trained net's boundary from its pattern table.

    ``xor_params``: params of the 2-2-1 ReLU net for XOR (default: built by hand).
    """
    key = ctx.key("bp.decision-boundary")
    xor_params = jax.tree.map(jnp.asarray, XOR_BY_HAND if xor_params is None else xor_params)
    xor_net = _relu_net(2)
    xs = jnp.asarray(XOR_INPUTS)
    xor_out = np.asarray(xor_net.apply(xor_params, xs)[0][:, 0])
    xor_correct = int(np.sum((xor_out > 0.5) == XOR_TARGETS))
    hidden_combos = np.asarray(jax.nn.relu(xs @ xor_params["0_dense"]["w"]
                                           + xor_params["0_dense"]["b"])).tolist()
    lines = np.asarray(jax.random.normal(key, (20_000, 3)))  # random linear boundaries w.x + b
    linear_correct = int(np.max(np.sum(
        (np.c_[XOR_INPUTS, np.ones(4)] @ lines.T > 0) == XOR_TARGETS[:, None], axis=0)))

    model, params, x_tr, y_tr, test_acc, names = _two_feature_net(ctx, key, hidden)
    lo, hi = np.asarray(x_tr).min(0) - 0.5, np.asarray(x_tr).max(0) + 0.5
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = jnp.asarray(np.c_[g0.ravel(), g1.ravel()])
    logits = np.asarray(model.apply(params, grid)[0][:, 0])
    pattern, from_table = _pattern_table(params, grid)
    table_gap = float(np.abs(from_table[:, 0] - logits).max())
    agreement = float(np.mean((from_table[:, 0] > 0) == (logits > 0)))
    patterns = {tuple(p) for p in pattern}

    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.5, 3.6))
    ax0.scatter(*XOR_INPUTS.T, c=XOR_TARGETS, cmap="coolwarm", s=80, edgecolor="k")
    u = np.linspace(-0.5, 1.5, 200)
    uu, vv = np.meshgrid(u, u)
    yy = np.asarray(xor_net.apply(xor_params, jnp.asarray(np.c_[uu.ravel(), vv.ravel()]))[0])
    ax0.contour(uu, vv, yy.reshape(uu.shape), levels=[0.5], colors="k")
    for (p, q), h in zip(XOR_INPUTS, hidden_combos):
        ax0.annotate(f"h={tuple(round(v) for v in h)}", (p, q), textcoords="offset points",
                     xytext=(5, 8), fontsize=8)
    ax0.set_title("XOR by hand: y = h1 - 2 h2 > 0.5")
    codes = pattern @ (2 ** np.arange(pattern.shape[1]))
    ax1.pcolormesh(g0, g1, codes.reshape(g0.shape), cmap="Pastel1", shading="auto")
    ax1.contour(g0, g1, logits.reshape(g0.shape), levels=[0.0], colors="k")
    ax1.scatter(*np.asarray(x_tr).T, c=np.asarray(y_tr), cmap="coolwarm", s=6)
    ax1.set_xlabel(f"{names[0]} (standardised)")
    ax1.set_ylabel(names[1])
    ax1.set_title(f"trained 2-{hidden}-1 ReLU net: {len(patterns)} hidden patterns", fontsize=9)
    figure = ctx.save_figure(fig, "bp_decision_boundary")

    ok = xor_correct == 4 and agreement == 1.0 and table_gap < 1e-9
    return Finding(
        verdict=HOLDS if ok else FAILS,
        summary=f"XOR by hand: {xor_correct}/4 correct (best of 20000 linear boundaries: "
                f"{linear_correct}/4); "
                f"trained net: its {len(patterns)} hidden patterns reproduce "
                f"{agreement:.0%} of its decisions",
        method="(1) XOR from two hand-set ReLU units (h1 = relu(x1+x2), h2 = relu(x1+x2-1), "
               "y = h1 - 2h2), a jdl.nn 2-2-1 net: the table of hidden combinations per input "
               "and the four outputs; the best of 20000 random linear boundaries, for "
               f"comparison. (2) A 2-{hidden}-1 ReLU net trained (jdl.train.fit, Adam) on two "
               "standardised "
               "breast_cancer features: on a 200x200 grid, each point's on/off pattern of the "
               "hidden units and the linear output map of that pattern, against the net.",
        numbers={"xor_correct": xor_correct, "xor_outputs": xor_out.tolist(),
                 "xor_hidden_combinations": hidden_combos,
                 "best_linear_boundary_correct": linear_correct,
                 "trained_patterns": len(patterns), "table_max_logit_gap": table_gap,
                 "table_decision_agreement": agreement, "trained_test_accuracy": test_acc},
        threshold="holds if the hand-built net gets XOR 4/4 and the pattern table reproduces "
                  "every decision of the trained net (logit gap < 1e-9)",
        caveat="" if ok else "the hand-built hidden combinations do not realise the function",
        figures=[figure])


# --- universal approximation ------------------------------------------------------------------

TARGETS = {
    "smooth": lambda x: jnp.sin(2 * jnp.pi * x) + 0.5 * x,
    "step": lambda x: jnp.where(x > 0, 1.0, 0.0),
}


def _fit_widths(key, target, widths, seeds, steps):
    """One-hidden-layer tanh nets of every width (and seed), trained full-batch in one program.

    Width ``w`` is the widest net with all but ``w`` hidden units masked out
    (masked units get zero gradients, so each is exactly a width-``w`` net);
    every (width, seed) pair is one lane of a ``vmap`` over ``jdl.train.train_step``.
    Returns the sup-norm and RMS errors on a fine test grid, ``(widths, seeds)``.
    """
    f = TARGETS[target]
    x_train = jnp.linspace(-1, 1, 256, dtype=jnp.float32)[:, None]
    x_test = jnp.concatenate([jnp.linspace(-1, 1, 2001, dtype=jnp.float32),
                              jnp.array([-1e-4, 1e-4], jnp.float32)])[:, None]
    widest = max(widths)
    model = nn.serial(nn.dense(widest, w_init=nn.initializers.normal(6.0),
                               b_init=nn.initializers.normal(3.0)),
                      nn.activation("tanh"), nn.dense(1))
    masks = jnp.asarray([[1.0] * w + [0.0] * (widest - w) for w in widths], jnp.float32)

    def masked(params, mask):
        first, last = params["0_dense"], params["2_dense"]
        return {**params, "0_dense": {"w": first["w"] * mask, "b": first["b"] * mask},
                "2_dense": {"w": last["w"] * mask[:, None], "b": last["b"]}}

    def predict(params, mask, x):
        return model.apply(masked(params, mask), x)[0]

    def loss(params, batch):
        x, t, mask = batch
        return losses.mse(predict(params, mask, x), t)

    opt = jt.adam(jt.cosine(0.02, steps, 1e-4))
    step = jt.train_step(loss, opt)

    def run(k, mask):
        params = model.init(k, (-1, 1), jnp.float32)[1]
        batch = (x_train, f(x_train), mask)

        def body(carry, _):
            p, s = carry
            p, s, value = step(p, s, batch)
            return (p, s), value

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        err = predict(params, mask, x_test) - f(x_test)
        return jnp.max(jnp.abs(err)), jnp.sqrt(jnp.mean(err ** 2))

    keys = jax.random.split(key, seeds)
    grid = jax.vmap(lambda m: jax.vmap(lambda k: run(k, m))(keys))
    sup, rms = jax.jit(grid)(masks)
    return np.asarray(sup), np.asarray(rms)


@study("bp.universal-approx", SECTION,
       "The universal approximation theorem It implies that any suitably smooth function can "
       "be approximated with any precision using neural networks.")
def universal_approximation(ctx, target="smooth"):
    """Sup-norm error of trained one-hidden-layer tanh nets as the width grows.

    ``target``: ``"smooth"`` (sin(2 pi x) + x/2 on [-1, 1]) or ``"step"`` (a jump at 0,
    not continuous: no uniform approximation exists).
    """
    widths = ctx.pick((1, 4, 16), (1, 2, 4, 8, 16, 32), (1, 2, 4, 8, 16, 32, 64, 128))
    seeds = ctx.pick(2, 3, 5)
    steps = ctx.pick(1500, 3000, 20000)
    sup, rms = _fit_widths(ctx.key("bp.universal-approx"), target, widths, seeds, steps)
    best_sup, best_rms = sup.min(1), rms.min(1)
    values = np.asarray(TARGETS[target](jnp.linspace(-1, 1, 2001)))
    spread = float(values.max() - values.min())
    shrink = float(best_sup[-1] / best_sup[0])
    small = float(best_sup[-1] / spread)
    shrinks, reaches = shrink < 0.1, small < 0.05
    verdict = HOLDS if shrinks and reaches else CAVEAT if shrinks else FAILS

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.loglog(widths, best_sup, "o-", label="sup |net - f| (best seed)")
    ax.loglog(widths, best_rms, "s--", label="RMS error (best seed)")
    ax.set_xlabel("hidden units (tanh)")
    ax.set_ylabel("error on [-1, 1]")
    ax.set_title(f"{target} target, {steps} Adam steps", fontsize=9)
    ax.legend(fontsize=8)
    figure = ctx.save_figure(fig, f"bp_universal_approx_{target}")
    return Finding(
        verdict=verdict,
        summary=f"sup error {best_sup[0]:.3g} at width {widths[0]} -> {best_sup[-1]:.2g} at "
                f"width {widths[-1]} ({small:.1%} of the range of f)",
        method=f"f = {'sin(2 pi x) + x/2' if target == 'smooth' else 'step at 0'} on 256 points "
               f"of [-1, 1]; one-hidden-layer tanh nets of widths {list(widths)}, {seeds} seeds "
               f"each, {steps} full-batch Adam steps (cosine decay), all in one vmapped program "
               "(jdl.train.train_step); the sup-norm error on 2003 test points (two at +-1e-4).",
        numbers={"widths": list(widths), "sup_error_best": best_sup.tolist(),
                 "rms_error_best": best_rms.tolist(), "sup_error_all": sup.tolist(),
                 "range_of_f": spread, "shrink_factor": shrink},
        threshold="holds if the best sup error shrinks at least 10x from the narrowest to the "
                  "widest net and ends below 5% of the range of f; caveat if it only shrinks",
        caveat="" if verdict == HOLDS else
        "The theorem is about continuous functions on a compact set and only promises that a "
        "wide enough net exists: here the error " +
        ("shrinks with width but training stops short of the precision" if shrinks else
         "does not shrink with width (a discontinuous target cannot be approximated "
         "uniformly by continuous nets)" if target == "step" else "does not shrink with width"),
        figures=[figure])


# --- counting biases and parameters -----------------------------------------------------------

MLP_CASES = (("digits", 64, (32,), 10), ("breast_cancer", 30, (16,), 2), ("wine", 13, (8,), 3),
             ("iris", 4, (5,), 3), ("digits", 64, (32, 16), 10))


def _leaf_counts(params) -> dict[str, int]:
    """Scalars of the params leaves named ``w`` and ``b``, and in total."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    count = {"w": 0, "b": 0}
    for path, leaf in flat:
        count[path[-1].key] = count.get(path[-1].key, 0) + int(np.prod(np.shape(leaf)))
    count["total"] = shapes.count_params(params)
    return count


def _param_shapes(model, key, input_shape):
    """The params tree of ``model.init`` as shapes only (nothing is computed)."""
    return jax.eval_shape(lambda k: model.init(k, input_shape)[1], key)


def _dense_model(hidden, outputs, use_bias=True):
    layers = []
    for width in hidden:
        layers += [nn.dense(width, use_bias=use_bias), nn.activation("relu")]
    return nn.serial(*layers, nn.dense(outputs, use_bias=use_bias))


@study("bp.count-biases", SECTION,
       "Number of biases = number of hidden neurons + number of outputs")
def count_biases(ctx, include_cnn=True):
    """Bias leaves of jdl MLPs (and of a small CNN) against the notes' count."""
    key = ctx.key("bp.count-biases")
    rows = []
    for name, inputs, hidden, outputs in MLP_CASES:
        params = _param_shapes(_dense_model(hidden, outputs), key, (-1, inputs))
        rows.append({"model": f"{name} MLP {inputs}-{'-'.join(map(str, hidden))}-{outputs}",
                     "biases": _leaf_counts(params)["b"],
                     "notes": shapes.mlp_bias_count_notes(sum(hidden), outputs)})
    dense_ok = all(r["biases"] == r["notes"] for r in rows)
    cnn_row = None
    if include_cnn:
        cnn = nn.serial(nn.conv2d(8, 3), nn.activation("relu"), nn.flatten(), nn.dense(10))
        params = _param_shapes(cnn, key, (-1, 8, 8, 1))
        hidden_neurons = 8 * 8 * 8  # one per position and channel of the feature map
        cnn_row = {"model": "digits CNN conv(8, 3x3, SAME)-dense(10)",
                   "biases": _leaf_counts(params)["b"],
                   "notes": shapes.mlp_bias_count_notes(hidden_neurons, 10)}
    cnn_ok = cnn_row is None or cnn_row["biases"] == cnn_row["notes"]
    verdict = HOLDS if dense_ok and cnn_ok else CAVEAT if dense_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"dense nets: {sum(r['biases'] == r['notes'] for r in rows)}/{len(rows)} match"
                + (f"; a conv layer: {cnn_row['biases']} biases, not {cnn_row['notes']}"
                   if cnn_row else ""),
        method="Bias scalars in the params trees of jdl.nn MLPs (one and two hidden layers, "
               "'hidden neurons' summed over hidden layers) against hidden + outputs"
               + ("; and a conv layer on 8x8 digits, whose 512 hidden neurons share 8 biases."
                  if include_cnn else "."),
        numbers={"dense": rows, "cnn": cnn_row},
        threshold="holds if every model matches; caveat if only the dense nets do",
        caveat="" if verdict == HOLDS else
        "True for fully connected layers (one bias per neuron). A conv layer has one bias per "
        "output channel, shared by all positions, so there it is channels + outputs."
        if dense_ok else "the bias count differs for dense nets")


@study("bp.count-params", SECTION,
       "Number of parameters = number of input x number of hidden + number of hidden x number "
       "of output")
def count_parameters(ctx, use_bias=True):
    """All params of one-hidden-layer jdl MLPs against the notes' count (weights only)."""
    key = ctx.key("bp.count-params")
    rows = []
    for name, inputs, hidden, outputs in MLP_CASES:
        if len(hidden) != 1:
            continue
        params = _param_shapes(_dense_model(hidden, outputs, use_bias), key, (-1, inputs))
        counts = _leaf_counts(params)
        rows.append({"model": f"{name} MLP {inputs}-{hidden[0]}-{outputs}", **counts,
                     "notes": shapes.mlp_weight_count_notes(inputs, hidden[0], outputs)})
    weights_ok = all(r["w"] == r["notes"] for r in rows)
    total_ok = all(r["total"] == r["notes"] for r in rows)
    verdict = HOLDS if total_ok else CAVEAT if weights_ok else FAILS
    r0 = rows[0]
    return Finding(
        verdict=verdict,
        summary=f"{r0['model']}: notes {r0['notes']}, weights {r0['w']}, all parameters "
                f"{r0['total']}",
        method="Scalars in the params trees of one-hidden-layer jdl.nn MLPs (weights 'w', "
               f"biases 'b'{'' if use_bias else ': none, use_bias=False'}) against "
               "inputs x hidden + hidden x outputs.",
        numbers={"models": rows},
        threshold="holds if the formula equals the total count of every model; caveat if it "
                  "equals the weight count only",
        caveat="" if verdict == HOLDS else
        "The formula counts the weights only; with biases the total is inputs x hidden + "
        "hidden x outputs + hidden + outputs." if weights_ok else
        "the formula does not even count the weights")


# --- derivative formulas ----------------------------------------------------------------------

COMPLEX_STEP = 1e-30


def _complex_step(fn, x):
    """``f'(x) = Im f(x + i h) / h`` for an analytic ``f``: exact to rounding, no cancellation."""
    return jnp.imag(fn(x.astype(jnp.complex128) + 1j * COMPLEX_STEP)) / COMPLEX_STEP


def _evaluation_points(key):
    """A grid over [-30, 30] and the pre-activations of a dense layer on digits, float64."""
    x, _ = _digits(key, 256)
    w = nn.initializers.lecun_normal(key, (64, 16), jnp.float64)
    return jnp.concatenate([jnp.linspace(-30, 30, 6001), (4 * x @ w).ravel()])


TAIL_POINTS = (5.0, 10.0, 20.0, 30.0)


def _tails(formula, stable) -> dict:
    """Relative error of the formula in float32 and float64 at large x, against a stable form."""
    x = np.asarray(TAIL_POINTS)
    truth = np.asarray(stable(jnp.asarray(x, jnp.float64)))
    out = {"x": list(TAIL_POINTS), "true_value": truth.tolist()}
    for dtype in (jnp.float32, jnp.float64):
        value = np.asarray(formula(jnp.asarray(x, dtype)), np.float64)
        out[f"relative_error_{jnp.dtype(dtype).name}"] = (np.abs(value - truth) / truth).tolist()
    return out


@jax.jit
def _derivative_errors(points, reference, by_formula):
    scale = jnp.max(jnp.abs(reference))
    return jnp.max(jnp.abs(by_formula - reference)) / scale


def _scalar_derivative_finding(ctx, study_id, name, fn, formula, written, stable=None):
    points = _evaluation_points(ctx.key(study_id))
    reference = jax.jit(lambda v: _complex_step(fn, v))(points)
    err = float(_derivative_errors(points, reference, jax.jit(formula)(points)))
    by_autodiff = jax.jit(jax.vmap(jax.grad(lambda v: jnp.real(fn(v)))))(points)
    err_auto = float(_derivative_errors(points, reference, by_autodiff))
    tails = None if stable is None else _tails(formula, stable)
    ok = err < EXACT
    tail_note = "" if tails is None else (
        f"; as written it cancels in the tails: relative error "
        f"{tails['relative_error_float32'][1]:.0e} at x = 10 in float32, "
        f"{tails['relative_error_float64'][2]:.0e} at x = 20 in float64")
    return Finding(
        verdict=HOLDS if ok else FAILS,
        summary=f"{written}: largest error {err:.1e} of max|f'| (autodiff {err_auto:.1e})"
                + tail_note,
        method=f"The formula (jdl.backprop) at {points.size} points, float64 -- a grid over "
               "[-30, 30] and the pre-activations of a dense layer on 256 digits -- against the "
               f"complex-step derivative Im f(x + ih)/h (h = {COMPLEX_STEP:g}, exact to rounding "
               "and independent of the formula) and against jax.grad."
               + ("" if tails is None else " Tails: the formula in float32 and float64 at "
                  f"x = {list(TAIL_POINTS)} against a cancellation-free form."),
        numbers={"max_error_over_max_derivative": err,
                 "autodiff_max_error_over_max_derivative": err_auto,
                 "points": int(points.size), "tails": tails},
        threshold=f"holds if the error is below {EXACT:g} of the largest |f'| (absolute "
                  "accuracy; the relative error of tiny tail values is reported, not judged)",
        caveat="" if ok else f"the formula is not the derivative of {name}")


@study("bp.deriv-cosh", SECTION, "d cosh x / dx = sinh x")
def derivative_cosh(ctx, formula=None):
    """sinh against the complex-step derivative of cosh."""
    return _scalar_derivative_finding(ctx, "bp.deriv-cosh", "cosh", jnp.cosh,
                                      formula or backprop.cosh_derivative, "sinh x")


@study("bp.deriv-sigmoid", SECTION, "d sigmoid(x) / dx = sigmoid(x) - sigmoid(x)^2")
def derivative_sigmoid(ctx, formula=None):
    """sigmoid - sigmoid^2 against the complex-step derivative; tails lose relative precision."""
    return _scalar_derivative_finding(
        ctx, "bp.deriv-sigmoid", "sigmoid", lambda v: 1 / (1 + jnp.exp(-v)),
        formula or backprop.sigmoid_derivative, "sigmoid - sigmoid^2",
        stable=lambda v: jnp.exp(-jnp.abs(v)) / (1 + jnp.exp(-jnp.abs(v))) ** 2)


@study("bp.deriv-tanh", SECTION, "d tanh(x) / dx = 1 - tanh(x)^2")
def derivative_tanh(ctx, formula=None):
    """1 - tanh^2 against the complex-step derivative of tanh."""
    return _scalar_derivative_finding(
        ctx, "bp.deriv-tanh", "tanh", jnp.tanh, formula or backprop.tanh_derivative,
        "1 - tanh^2", stable=lambda v: 1 / jnp.cosh(v) ** 2)


def _softmax(z):
    """The definition exp(z_i) / sum_j exp(z_j), shifted by the real max (complex-safe)."""
    e = jnp.exp(z - jnp.max(jnp.real(z), axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


@jax.jit
def _softmax_errors(z, by_formula):
    """Formula and autodiff against complex-step columns; the reference's asymmetry."""
    columns = jax.vmap(lambda e: jnp.imag(
        _softmax(z.astype(jnp.complex128) + 1j * COMPLEX_STEP * e)) / COMPLEX_STEP)(
        jnp.eye(z.shape[-1]))
    reference = jnp.transpose(columns, (1, 2, 0))  # (batch, i, j)
    auto = jax.vmap(jax.jacobian(jax.nn.softmax))(z)
    return (jnp.max(jnp.abs(by_formula - reference)), jnp.max(jnp.abs(auto - reference)),
            jnp.max(jnp.abs(reference - jnp.transpose(reference, (0, 2, 1)))))


@study("bp.deriv-softmax", SECTION,
       "d Softmax(z_j) / d z_i = delta_ij S(z_i) - S(z_i) S(z_j)")
def derivative_softmax(ctx, jacobian=None):
    """The Jacobian formula against complex-step columns, on logits of digits."""
    key = ctx.key("bp.deriv-softmax")
    x, _ = _digits(key, ctx.pick(64, 512, 1797))
    w = nn.initializers.lecun_normal(key, (64, 10), jnp.float64)
    z = jnp.concatenate([4 * x @ w, 40 * x[:8] @ w])  # ordinary and saturated logits
    by_formula = jax.jit(jacobian or backprop.softmax_jacobian)(z)  # (batch, i, j) = dS_i/dz_j
    err, err_auto, asym = map(float, _softmax_errors(z, by_formula))
    ok = err < EXACT
    return Finding(
        verdict=HOLDS if ok else FAILS,
        summary=f"largest entry error {err:.1e} (autodiff {err_auto:.1e}); the Jacobian is "
                f"symmetric (asymmetry {asym:.0e}), so the index order does not matter",
        method=f"{z.shape[0]} logit vectors z = x W of digits (10 classes, some scaled x10 to "
               "saturate), float64: diag(S) - S S^T (jdl.backprop.softmax_jacobian) against "
               "complex-step columns of the softmax definition and jax.jacobian.",
        numbers={"max_abs_error": err, "autodiff_max_abs_error": err_auto,
                 "asymmetry": asym, "vectors": int(z.shape[0])},
        threshold=f"holds if every entry agrees to {EXACT:g} (entries lie in [-1/4, 1/4])",
        caveat="" if ok else "the formula is not the softmax Jacobian")


# --- the notes' forward/backward code ---------------------------------------------------------


@jax.jit
def _notes_backward_errors(ws, bs, x, t):
    """The notes' backward against autodiff of sum((y-t)^2)/N and of the all-element mean."""
    _, (dw, db) = backprop.mlp_gradients(ws, bs, x, t, "relu")
    sum_over_n = jax.grad(backprop.mse_loss, argnums=(0, 1))(ws, bs, x, t, "relu")
    mean_all = jax.grad(lambda w, b: losses.mse(backprop.forward(w, b, x, "relu")[-1], t),
                        argnums=(0, 1))(ws, bs)

    def flat(g):
        return jnp.concatenate([v.ravel() for v in jax.tree.leaves(g)])

    notes = flat((dw, db))
    return (_rel(notes, flat(sum_over_n)), _rel(notes, flat(mean_all)),
            jnp.linalg.norm(notes) / jnp.linalg.norm(flat(mean_all)))


@study("bp.notes-backward", SECTION,
       "The notes' backward: lastLayerLoss = 2 * (y - t) / y.shape[0] # initialize as MSE "
       "derivative; dloss_dW = A[i].T @ lastLayerLoss; lastLayerLoss = lastLayerLoss @ W[i].T "
       "* relu_derivative(A[i])")
def notes_backward(ctx, dataset="digits"):
    """The notes' backward (jdl.backprop) against autodiff of the losses it could mean.

    ``dataset``: ``"digits"`` (10 one-hot outputs) or ``"diabetes"`` (one output).
    """
    key = ctx.key("bp.notes-backward")
    n = ctx.pick(64, 512, 1000)
    ds = data.load(dataset, key=key, split=(1.0, 0.0, 0.0), dtype=jnp.float64)
    if dataset == "digits":
        x, t = ds.x_train[:n], jax.nn.one_hot(ds.y_train[:n], 10, dtype=jnp.float64)
    else:
        scale = data.fit_standardize(ds.x_train)
        x = scale(ds.x_train)[:n]
        t = ((ds.y_train - ds.y_train.mean()) / ds.y_train.std())[:n, None]
    sizes = (x.shape[1], 32, 16, t.shape[1])  # the notes' Linear-ReLU-...-Linear
    ws, bs = _mlp(key, sizes, "relu")
    err_sum, err_mean, ratio = map(float, _notes_backward_errors(ws, bs, x, t))
    sum_ok, mean_ok = err_sum < EXACT, err_mean < EXACT
    verdict = HOLDS if sum_ok and mean_ok else CAVEAT if sum_ok else FAILS
    outputs = t.shape[1]
    return Finding(
        verdict=verdict,
        summary=f"equals autodiff of sum((y-t)^2)/N to {err_sum:.1e}; against MSELoss "
                f"(mean over all {outputs} outputs too) off by a factor {ratio:.3g}",
        method=f"{dataset}, {n} examples, ReLU MLP {'-'.join(map(str, sizes))}, float64: the "
               "notes' backward (vectorised in jdl.backprop: MSE derivative 2(y-t)/N with N = "
               "y.shape[0] the batch, dW = A.T delta, dB = sum(delta), ReLU derivative from the "
               "stored activation A > 0) against jax.grad of sum((y-t)^2)/N and of "
               "jdl.losses.mse = torch.nn.MSELoss (the loss of the notes' training loop).",
        numbers={"relative_error_sum_over_batch": err_sum,
                 "relative_error_mse_mean": err_mean, "norm_ratio_to_mse_mean": ratio,
                 "outputs": outputs, "examples": n},
        threshold=f"holds if the code's gradients equal both losses' gradients to {EXACT:g}; "
                  "caveat if only sum((y-t)^2)/N",
        caveat="" if verdict == HOLDS else
        f"2(y-t)/y.shape[0] divides by the batch only, so the code differentiates the squared "
        f"error summed over the outputs and averaged over examples; MSELoss (and the notes' "
        f"training loop) also averages over the {outputs} outputs, a gradient {outputs}x "
        "smaller. They agree only for one output." if sum_ok else
        "the code's gradients differ from autodiff")
