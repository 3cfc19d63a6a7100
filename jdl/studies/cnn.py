"""Studies of the notes' CNN section: shapes, receptive fields, attention, residuals, sharing.

Shapes and receptive fields are checked against what jdl's layers (``lax``)
actually compute on digits; attention with :func:`jdl.nn.attention`,
:func:`jdl.nn.self_attention` and :func:`jdl.nn.notes_attention` on sequences
of digits; residual nets, parameter sharing, transfer and pooling with small
jdl.nn models trained on digits with :mod:`jdl.train`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jdl import backprop, data, losses, metrics, nn, shapes
from jdl import train as jt
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, Finding, study

SECTION = "CNN"
EXACT = 1e-10  # relative error for an identity checked in float64


def _images(key, dtype=jnp.float32):
    """Digits as NHWC images ``(n, 8, 8, 1)`` in [0, 1], split 60/20/20."""
    return data.load("digits", key=key, images=True, dtype=dtype)


def _canvas(x, size: int):
    """Digits ``(n, 8, 8, 1)`` centred on a ``size x size`` zero canvas."""
    before = (size - x.shape[1]) // 2
    after = size - x.shape[1] - before
    return jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))


def _shift(x, dy: int, dx: int):
    """Translate images by ``(dy, dx)`` pixels (a roll: the canvas margin keeps the digit whole)."""
    return jnp.roll(x, (dy, dx), axis=(1, 2))


def _classifier_loss(model):
    def loss(params, batch):
        x, y = batch
        return losses.softmax_cross_entropy(model.apply(params, x)[0], y)
    return loss


def _accuracy_metric(model):
    def metric(params, batch):
        x, y = batch
        return metrics.accuracy(model.apply(params, x)[0], y)
    return metric


def _fit_seeds(loss, metric, init, train, val, keys, *, epochs, batch_size, optimizer):
    """``jdl.train.fit`` once per key (one compilation for all); final params and val accuracy.

    A loop of ``fit`` rather than ``fit_restarts``: the programs are the same
    for every key, so they compile once, and the unbatched initialisation
    reuses the operations already compiled for other studies.
    """
    params, accuracy = [], []
    for k in keys:
        k_init, k_run = jax.random.split(k)
        result = jt.fit(loss, init(k_init), optimizer, train, epochs=epochs,
                        batch_size=batch_size, key=k_run, val_data=val,
                        metrics={"accuracy": metric}, quiet=True)
        params.append(result.params)
        accuracy.append(float(result.history["val_accuracy"][-1]))
    return params, np.asarray(accuracy)


# --- output size and receptive field ----------------------------------------------------------


def _conv_cases(sizes, kernels, strides, pads):
    return [(n, k, s, p) for n in sizes for k in kernels for s in strides for p in pads
            if k <= n + 2 * p]


@study("cnn.output-size", SECTION,
       "Convolution dimension calculation: (input - kernal + padding + stride) / stide")
def output_size(ctx, sizes=(5, 6, 7, 8), kernels=(1, 2, 3, 4, 5), strides=(1, 2, 3),
                pads=(0, 1, 2)):
    """The notes' formula against the output shape of jdl's conv2d (``lax``) on digits.

    ``pads`` is the padding on each side; the notes' ``padding`` is read as the
    total (both sides) and as one side, with and without flooring the division.
    """
    x = _images(ctx.key("cnn.output-size")).x_train[:4]
    cases = _conv_cases(sizes, kernels, strides, pads)
    rows = []
    for n, k, s, p in cases:
        layer = nn.conv2d(1, k, strides=s, padding=((p, p), (p, p)))
        params = jax.eval_shape(lambda key, layer=layer: layer.init(key, x.shape)[1],
                                jax.random.key(0))
        crop = x[:, :n, :n]
        actual = jax.eval_shape(lambda w, c, layer=layer: layer.apply(w, c)[0], params,
                                crop).shape[1]  # lax's own shape rule
        rows.append({"n": n, "k": k, "s": s, "p_side": p, "actual": actual,
                     "notes_total_floor": shapes.conv_output_size_notes(n, k, 2 * p, s),
                     "notes_total_exact": (n - k + 2 * p + s) / s,
                     "notes_one_side_floor": (n - k + p + s) // s})
    total = np.mean([r["notes_total_floor"] == r["actual"] for r in rows])
    one_side = np.mean([r["notes_one_side_floor"] == r["actual"] for r in rows])
    exact = np.mean([r["notes_total_exact"] == r["actual"] for r in rows])
    sample = nn.conv2d(4, 3, strides=2, padding=1)
    _, w, _ = sample.init(ctx.key("cnn.output-size"), x.shape, x.dtype)
    ran = sample.apply(w, x)[0].shape[1]  # one configuration run for real
    verdict = (HOLDS if total == 1 and one_side == 1 and exact == 1
               else CAVEAT if total == 1 else FAILS)
    return Finding(
        verdict=verdict,
        summary=f"with padding = both sides and the division floored: {total:.0%} of "
                f"{len(rows)} configurations; padding = one side: {one_side:.0%}; "
                f"unfloored: {exact:.0%}",
        method=f"{len(rows)} (input n, kernel k, stride s, padding p per side) configurations on "
               f"digits crops (n in {list(sizes)}): the notes' formula against the output size "
               "of jdl.nn.conv2d as lax's shape rule computes it (and one configuration, "
               f"n=8, k=3, s=2, p=1, run on 4 digits: {ran} outputs).",
        numbers={"agreement_total_padding_floored": float(total),
                 "agreement_one_side_padding_floored": float(one_side),
                 "agreement_unfloored": float(exact), "configurations": len(rows),
                 "run_n8_k3_s2_p1": int(ran), "cases": rows},
        threshold="holds if every reading matches; caveat if only padding = total of both "
                  "sides with a floored division does",
        caveat="" if verdict == HOLDS else
        "Right as floor((n - k + p + s) / s) = floor((n + p - k) / s) + 1 with p the TOTAL "
        "padding of the axis (2 x the padding per side) and the division floored; with p per "
        "side or without the floor it is wrong for most strides and paddings."
        if verdict == CAVEAT else "the formula disagrees with the layer")


def _positive(key, shape, dtype):
    """Weights in [0.5, 1.5]: every path through a linear stack adds, none cancels."""
    return jax.random.uniform(key, shape, dtype, 0.5, 1.5)


RF_ARCHITECTURES = {
    "three 3x3 convs": ((3, 1, 1, "conv"), (3, 1, 1, "conv"), (3, 1, 1, "conv")),
    "conv3-pool2-conv3-pool2": ((3, 1, 1, "conv"), (2, 2, 1, "pool"), (3, 1, 1, "conv"),
                                (2, 2, 1, "pool")),
    "strided 5-3-3 (s 2, 2, 1)": ((5, 2, 1, "conv"), (3, 2, 1, "conv"), (3, 1, 1, "conv")),
    "conv3-pool3/2-conv3": ((3, 1, 1, "conv"), (3, 2, 1, "pool"), (3, 1, 1, "conv")),
}
DILATED = {"dilated 3x3 (d 1, 2, 4)": ((3, 1, 1, "conv"), (3, 1, 2, "conv"),
                                       (3, 1, 4, "conv"))}


def _rf_model(layers):
    """A linear VALID conv / average-pool stack: ``(kernel, stride, dilation, kind)`` per layer."""
    return nn.serial(*[
        nn.conv2d(2, k, strides=s, dilation=d, padding="VALID", w_init=_positive)
        if kind == "conv" else nn.avg_pool(k, strides=s) for k, s, d, kind in layers])


def _measured_field(model, key, x):
    """Rows and columns of the input that reach the centre output unit: its gradient support."""
    _, params, _ = model.init(key, x.shape, x.dtype)

    def centre(image):
        y = model.apply(params, image)[0]
        return jnp.sum(y[0, y.shape[1] // 2, y.shape[2] // 2])

    grad = np.abs(np.asarray(jax.jit(jax.grad(centre))(x)))[0, :, :, 0]
    rows, cols = np.nonzero(grad > 0)
    return (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)), grad


def _formula_geometry(model, layers, dilation_as_span):
    """Per-layer row geometry for the formulas: jdl's spatial_geometry, or raw kernel sizes."""
    geometry = [g[0] for g in shapes.spatial_geometry(model)]
    if dilation_as_span:
        return geometry
    return [shapes.LayerGeometry(k, s) for k, s, _, _ in layers]


def _receptive_fields(ctx, study_id, architectures, dilation_as_span):
    key = ctx.key(study_id)
    digits = _images(key, jnp.float64).x_train[:1]
    x = jax.image.resize(digits, (1, 48, 48, 1), "linear")  # a digit at 6x scale
    rows = []
    for name, layers in architectures.items():
        model = _rf_model(layers)
        (measured, measured_cols), grad = _measured_field(model, key, x)
        geometry = _formula_geometry(model, layers, dilation_as_span)
        trace = [1]
        for g in reversed(geometry):  # r_{l-1} = s_l r_l + (k_l - s_l), from r_L = 1 down
            trace.append(g.stride * trace[-1] + g.kernel - g.stride)
        rows.append({"architecture": name, "measured": measured, "measured_cols": measured_cols,
                     "recursive": shapes.receptive_field_recursive(geometry),
                     "closed": shapes.receptive_field_closed(geometry),
                     "recursion_top_down": trace, "gradient": grad})
    return rows


def _rf_finding(ctx, study_id, which, architectures, dilation_as_span, figure_kind):
    rows = _receptive_fields(ctx, study_id, architectures, dilation_as_span)
    matches = [r[which] == r["measured"] == r["measured_cols"] for r in rows]
    ok = all(matches)

    import matplotlib.pyplot as plt

    if figure_kind == "maps":
        fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 2.8))
        for ax, r in zip(np.atleast_1d(axes), rows):
            g = r["gradient"]
            ys, xs = np.nonzero(g > 0)
            half = r[which] // 2
            cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
            r0, c0 = int(cy) - half - 3, int(cx) - half - 3
            ax.imshow(g[r0:r0 + 2 * half + 7, c0:c0 + 2 * half + 7], cmap="viridis")
            ax.add_patch(plt.Rectangle((2.5, 2.5), r[which], r[which], fill=False, ec="r"))
            ax.set_title(f"{r['architecture']}\nRF {r[which]} (measured {r['measured']})",
                         fontsize=7)
            ax.axis("off")
    else:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for r in rows:
            ax.plot(range(len(r["recursion_top_down"])), r["recursion_top_down"], "o-",
                    label=r["architecture"])
        ax.set_xlabel("layers below the output unit")
        ax.set_ylabel("receptive field r_l")
        ax.legend(fontsize=7)
    figure = ctx.save_figure(fig, f"{study_id.replace('.', '_').replace('-', '_')}")
    for r in rows:
        del r["gradient"]
    name = {"recursive": "r_{l-1} = s_l r_l + (k_l - s_l)", "closed": "the closed form"}[which]
    return Finding(
        verdict=HOLDS if ok else FAILS,
        summary=f"{name} equals the measured receptive field in {sum(matches)}/{len(rows)} "
                f"stacks ({', '.join(str(r[which]) for r in rows)} pixels)",
        method="Linear VALID stacks of jdl conv2d (positive weights) and average pools on a "
               "digit upscaled to 48x48 (float64): the measured field is the extent of the "
               "nonzero gradient of the centre output unit with respect to the input; the "
               "formula reads (kernel, stride) per layer from the model (jdl.shapes."
               f"spatial_geometry{'' if dilation_as_span else '; raw kernel sizes'}).",
        numbers={"stacks": rows},
        threshold="holds if the formula equals the measured rows and columns for every stack",
        caveat="" if ok else
        "Mismatch: the formulas need k as the span a kernel covers; a dilated kernel spans "
        "d (k - 1) + 1 inputs." if not dilation_as_span else "the formula disagrees with the "
        "measured field",
        figures=[figure])


@study("cnn.rf-recursive", SECTION,
       "Receptive field calculation from one layer to another: r_{l-1} = s_l * r_l + (k_l - s_l)")
def receptive_field_recursive(ctx, architectures=None, dilation_as_span=True):
    """The recursion from ``r_L = 1`` against the gradient support of one output unit."""
    return _rf_finding(ctx, "cnn.rf-recursive", "recursive", architectures or RF_ARCHITECTURES,
                       dilation_as_span, "trace")


@study("cnn.rf-closed", SECTION,
       "Receptive field calculation using L layers: RF = sum_{l=1}^L ((k_l - 1) prod_{i=1}^{l-1} "
       "S_i) + 1")
def receptive_field_closed(ctx, architectures=None, dilation_as_span=True):
    """The closed form against the gradient support of one output unit (with RF maps)."""
    return _rf_finding(ctx, "cnn.rf-closed", "closed", architectures or RF_ARCHITECTURES,
                       dilation_as_span, "maps")


# --- the notes' layer code --------------------------------------------------------------------


def _notes_conv_forward(x, w, b):
    """The notes' Convolution Layer ``forward``, line for line (numpy for torch)."""
    k = w.shape[0]
    steps = int((x.shape[1] - k)) + 1
    y = np.empty((1, steps, steps))
    for i in range(steps):
        for j in range(steps):
            y[0, i, j] = (x[0, i:i + k, j:j + k] * w).sum() + b
    return y


def _notes_max_pool_forward(x, kernel_size, stride):
    """The notes' Max pooling layer ``forward``, line for line (numpy for torch)."""
    steps = int((x.shape[0] - kernel_size) / stride) + 1
    y = np.array([x[i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size].max()
                  for i in range(0, steps) for j in range(0, steps)])
    return y.reshape(steps, steps)


@study("cnn.layer-code", SECTION,
       "The notes' Convolution Layer (y[0,i,j] = (x[0,i:i+k,j:j+k]*W).sum() + b, steps = "
       "int((x.shape[1]-k))+1) and Max pooling layer (steps = int((x.shape[0]-kernel_size)/"
       "stride)+1) code")
def layer_code(ctx, shape=(6, 8)):
    """The notes' loops against jdl's conv2d (VALID) and max_pool on digits (crops of ``shape``).

    The loops size both axes from one of them; a non-square ``shape`` shows it.
    """
    key = ctx.key("cnn.layer-code")
    images = np.asarray(_images(key, jnp.float64).x_train[:ctx.pick(4, 16, 64)])
    h, w = shape
    w_conv = np.asarray(jax.random.normal(key, (3, 3), jnp.float64))
    bias = 0.3
    conv = nn.conv2d(1, 3, padding="VALID")
    params = {"w": jnp.asarray(w_conv)[:, :, None, None], "b": jnp.asarray([bias])}
    pool = nn.max_pool(2, strides=2)
    square = images[:, :8, :8]
    crop = images[:, :h, :w]

    def compare(x):
        jdl_conv = np.asarray(conv.apply(params, jnp.asarray(x))[0])[..., 0]
        jdl_pool = np.asarray(pool.apply({}, jnp.asarray(x))[0])[..., 0]
        out = {"jdl_shapes": [list(jdl_conv.shape[1:]), list(jdl_pool.shape[1:])]}
        try:
            notes_c = np.stack([_notes_conv_forward(xi[None, :, :, 0], w_conv, bias)[0]
                                for xi in x])
            notes_p = np.stack([_notes_max_pool_forward(xi[:, :, 0], 2, 2) for xi in x])
        except ValueError as e:  # the loops index past the shorter axis
            return {**out, "notes_shapes": None, "shapes_agree": False, "notes_error": str(e)}
        out["notes_shapes"] = [list(notes_c.shape[1:]), list(notes_p.shape[1:])]
        out["shapes_agree"] = out["notes_shapes"] == out["jdl_shapes"]
        if out["shapes_agree"]:
            out["conv_max_error"] = float(np.abs(notes_c - jdl_conv).max())
            out["pool_max_error"] = float(np.abs(notes_p - jdl_pool).max())
        return out

    on_square, on_crop = compare(square), compare(crop)
    flipped = np.asarray(conv.apply({"w": params["w"][::-1, ::-1], "b": params["b"]},
                                    jnp.asarray(square))[0])
    unflipped = np.asarray(conv.apply(params, jnp.asarray(square))[0])
    flip_gap = float(np.abs(flipped - unflipped).max())
    def agrees(r):
        return r["shapes_agree"] and r["conv_max_error"] < EXACT and r["pool_max_error"] == 0

    square_ok, crop_ok = agrees(on_square), agrees(on_crop)
    verdict = HOLDS if square_ok and crop_ok else CAVEAT if square_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"8x8 digits: conv error {on_square.get('conv_max_error', np.nan):.1e}, pool "
                f"error {on_square.get('pool_max_error', np.nan):.1e}; {h}x{w} crops: the "
                f"notes' (conv, pool) shapes {on_crop['notes_shapes']} vs jdl "
                f"{on_crop['jdl_shapes']}",
        method=f"{images.shape[0]} digits, float64: the notes' loops (3x3 kernel, bias 0.3; "
               "2x2 max pool, stride 2) against jdl.nn.conv2d(padding='VALID') and "
               f"jdl.nn.max_pool, on 8x8 images and on {h}x{w} crops. Both compute a "
               "cross-correlation, as every deep-learning library does: flipping the kernel "
               f"(true convolution) changes the output by up to {flip_gap:.2f}.",
        numbers={"square": on_square, "crop": on_crop, "kernel_flip_max_change": flip_gap},
        threshold="holds if the loops equal the jdl layers on square and non-square inputs; "
                  "caveat if only on square ones",
        caveat="" if verdict == HOLDS else
        "The loops size both output axes from one input axis (x.shape[1] for the convolution, "
        "x.shape[0] for the pooling), so they are right for square inputs only; a "
        "non-square input needs steps per axis." if verdict == CAVEAT else
        "the loops disagree with the layers even on square inputs")


# --- attention --------------------------------------------------------------------------------


def _digit_sequences(key, length: int, dtype=jnp.float64):
    """Standardised digits as token sequences ``(sequences, length, 64)``: one digit a token."""
    ds = data.load("digits", key=key, split=(1.0, 0.0, 0.0), dtype=dtype)
    x = data.fit_standardize(ds.x_train)(ds.x_train)
    n = (x.shape[0] // length) * length
    return x[:n].reshape(-1, length, x.shape[1])


@functools.partial(jax.jit, static_argnames=("unit_norm",))
def _scaling_stats(x, wq, wk, unit_norm):
    """Softmax statistics of scaled and unscaled attention of ``x`` with ``(wq, wk)``.

    Per variant: the mean largest weight, mean entropy / log(T), mean Frobenius
    norm of the softmax Jacobian (jdl.backprop.softmax_jacobian) and the std of the scores.
    """
    q, k = x @ wq, x @ wk
    if unit_norm:
        q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
        k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    d, t = q.shape[-1], x.shape[1]
    out = {}
    for name, q_in in (("scaled", q), ("unscaled", q * math.sqrt(d))):  # attention / sqrt(d)
        _, weights = nn.attention(q_in, k, x)
        scores = jnp.einsum("bqd,bkd->bqk", q_in, k) / math.sqrt(d)
        entropy = -jnp.sum(jnp.where(weights > 0, weights * jnp.log(weights), 0.0), -1)
        out[name] = {
            "max_weight": jnp.mean(jnp.max(weights, -1)),
            "entropy_fraction": jnp.mean(entropy) / math.log(t),
            "softmax_jacobian_norm": jnp.mean(jnp.linalg.norm(
                backprop.softmax_jacobian(scores), axis=(-2, -1))),
            "score_std": jnp.std(scores)}
    return out


@study("cnn.attention-scaling", SECTION,
       "multiply the keys and queries with each other in order to get the attention weights, "
       "scale it down so it doesnt explode")
def attention_scaling(ctx, unit_norm=False):
    """Softmax saturation of ``q.k`` against ``q.k / sqrt(d)`` as the key size ``d`` grows.

    ``unit_norm``: normalise queries and keys to unit length (then nothing explodes).
    """
    key = ctx.key("cnn.attention-scaling")
    x = _digit_sequences(key, 16)[:ctx.pick(8, 32, 112)]
    dims = ctx.pick((4, 64, 512), (4, 16, 64, 256, 1024), (4, 16, 64, 256, 1024, 4096))
    scaled, unscaled = [], []
    for i, d in enumerate(dims):
        kq, kk = jax.random.split(jax.random.fold_in(key, i))
        wq = nn.initializers.lecun_normal(kq, (64, d), x.dtype)  # unit-variance components
        wk = nn.initializers.lecun_normal(kk, (64, d), x.dtype)
        stats = jax.tree.map(float, _scaling_stats(x, wq, wk, unit_norm))
        scaled.append(stats["scaled"])
        unscaled.append(stats["unscaled"])
    top = {name: [r["max_weight"] for r in rows]
           for name, rows in (("scaled", scaled), ("unscaled", unscaled))}
    jac = {name: [r["softmax_jacobian_norm"] for r in rows]
           for name, rows in (("scaled", scaled), ("unscaled", unscaled))}
    unscaled_saturates = top["unscaled"][-1] > 0.9
    scaled_stays = max(top["scaled"]) < 0.6
    verdict = (HOLDS if unscaled_saturates and scaled_stays
               else CAVEAT if scaled_stays else FAILS)

    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8, 3))
    for name, style in (("unscaled", "o-"), ("scaled", "s--")):
        ax0.semilogx(dims, top[name], style, label=f"q.k{'' if name == 'unscaled' else '/sqrt(d)'}")
        ax1.loglog(dims, jac[name], style, label=name)
    ax0.set_xlabel("key size d")
    ax0.set_ylabel("mean largest attention weight")
    ax0.axhline(1 / x.shape[1], color="gray", lw=0.8)
    ax0.legend(fontsize=8)
    ax1.set_xlabel("key size d")
    ax1.set_ylabel("|softmax Jacobian| (gradient)")
    figure = ctx.save_figure(fig, "cnn_attention_scaling" + ("_unit_norm" if unit_norm else ""))
    return Finding(
        verdict=verdict,
        summary=f"d = {dims[-1]}: largest weight {top['unscaled'][-1]:.2f} unscaled vs "
                f"{top['scaled'][-1]:.2f} scaled; softmax gradient {jac['unscaled'][-1]:.1e} vs "
                f"{jac['scaled'][-1]:.2f}",
        method=f"{x.shape[0]} sequences of 16 standardised digits (a digit a token); queries and "
               f"keys x W with LeCun-normal W of {list(dims)} columns"
               + (", normalised to unit length" if unit_norm else
                  " (components of about unit variance)")
               + "; jdl.nn.attention with and without the 1/sqrt(d) (queries pre-multiplied by "
               "sqrt(d)): the mean largest weight, the weight entropy and the norm of the softmax "
               "Jacobian (the gradient through the weights).",
        numbers={"dims": list(dims), "scaled": scaled, "unscaled": unscaled},
        threshold="holds if without scaling the mean largest weight exceeds 0.9 at the largest "
                  "d (saturated) while with scaling it stays below 0.6 at every d",
        caveat="" if verdict == HOLDS else
        "With queries and keys of unit length the raw dot products stay in [-1, 1] and do not "
        "explode; the 1/sqrt(d) is needed when their components have unit variance, so q.k "
        "grows like sqrt(d)." if verdict == CAVEAT else
        "the scaled weights saturate as well",
        figures=[figure])


def _mask_measurements(model, params, x, replacement):
    """Future/past Jacobian sizes, the effect of replacing the tokens after position 5, weights.

    Returns max |d out_t / d x_s| over s > t and over s <= t, the largest output
    change before and after position 5 when tokens 6.. are replaced, the
    largest weight above the diagonal and the largest row-sum error.
    """
    def outputs(seq):
        return model.apply(params, seq[None])[0][0][0]  # (time, features)

    jac = jax.vmap(jax.jacrev(outputs))(x)  # (batch, t, f, s, f)
    size = jnp.max(jnp.abs(jac), axis=(2, 4))  # (batch, t, s)
    t = x.shape[1]
    future = jnp.triu(jnp.ones((t, t), bool), 1)
    (out, weights), _ = model.apply(params, x)
    (out_swapped, _), _ = model.apply(params, x.at[:, 6:].set(replacement[:, 6:]))
    change = jnp.max(jnp.abs(out_swapped - out), axis=(0, 2))
    return {"max_future_gradient": jnp.max(jnp.where(future, size, 0)),
            "max_past_gradient": jnp.max(jnp.where(future, 0, size)),
            "change_before_after_swap": jnp.max(change[:6]),
            "change_after_swap": jnp.max(change[6:]),
            "max_weight_above_diagonal": jnp.max(jnp.where(future, weights, 0)),
            "max_row_sum_error": jnp.max(jnp.abs(jnp.sum(weights, -1) - 1))}


@study("cnn.attention-mask", SECTION,
       "if you dont want to look ahead mask the latter words, use softmax to generate "
       "probabilities")
def attention_mask(ctx, causal=True):
    """Gradients and perturbations: does position t see inputs after t? (jdl self_attention)."""
    key = ctx.key("cnn.attention-mask")
    seqs = _digit_sequences(key, 12)
    x = seqs[:ctx.pick(2, 8, 32)]
    model = nn.self_attention(2, head_dim=16, causal=causal, return_weights=True)
    _, params, _ = model.init(key, x.shape, x.dtype)
    numbers = jax.tree.map(float, jax.jit(functools.partial(_mask_measurements, model))(
        params, x, seqs[-x.shape[0]:]))
    leak, past = numbers["max_future_gradient"], numbers["max_past_gradient"]
    change_before, change_after = (numbers["change_before_after_swap"],
                                   numbers["change_after_swap"])
    hidden = leak == 0.0 and change_before == 0.0
    detectable = past > 1e-6 and change_after > 1e-6
    verdict = HOLDS if hidden and detectable else FAILS
    return Finding(
        verdict=verdict,
        summary=f"largest |d out_t / d x_s| for s > t: {leak:.1e} (s <= t: {past:.2f}); "
                f"replacing the tokens after t=5 changes outputs up to t=5 by {change_before:.1e}",
        method=f"{x.shape[0]} sequences of 12 standardised digits, a 2-head jdl.nn.self_attention "
               f"(causal={causal}), float64: the Jacobian of every output position with respect "
               "to every input position; the outputs before and after replacing positions 6..11 "
               "with other digits; the weights above the diagonal and the row sums.",
        numbers=numbers,
        threshold="holds if outputs at t have exactly zero gradient with respect to inputs after "
                  "t and do not change when those inputs are replaced (while earlier inputs "
                  "do change them)",
        caveat="" if verdict == HOLDS else
        "Without the mask every position sees the whole sequence (future gradients "
        f"{leak:.2g}): the look-ahead mask must be applied to the scores before the softmax.")


@study("cnn.attention-shared-kq", SECTION,
       "The notes' Self Attention code: K = x@self.w_kq, Q = y@self.w_kq, V = x, qk = Q@(K.T)/d "
       "with d = sqrt(w_kq.shape[1]), attention_weights = softmax(qk, dim=1), "
       "output = attention_weights@V")
def attention_shared_kq(ctx, separate_keys=True):
    """The notes' attention against jdl's layer; what sharing one matrix for K and Q implies.

    ``separate_keys``: the comparison model has its own key matrix (False: the
    key matrix is the query matrix, as in the notes).
    """
    key = ctx.key("cnn.attention-shared-kq")
    x = _digit_sequences(key, 16)[:ctx.pick(8, 32, 112)]
    k_shared, k_query, k_key = jax.random.split(key, 3)
    w = nn.initializers.lecun_normal(k_shared, (64, 64), x.dtype)
    notes_out, notes_weights = nn.notes_attention(x, x, w)
    layer = nn.self_attention(1, return_weights=True)
    eye = jnp.eye(64, dtype=x.dtype)
    (layer_out, layer_weights), _ = layer.apply({"wq": w, "wk": w, "wv": eye, "wo": eye}, x)
    layer_gap = float(jnp.max(jnp.abs(layer_out - notes_out)))
    scores = jnp.einsum("bqd,bkd->bqk", x @ w, x @ w)
    asymmetry = float(jnp.max(jnp.abs(scores - jnp.swapaxes(scores, 1, 2))))
    smallest_eig = float(jnp.min(jnp.linalg.eigvalsh(scores)) / jnp.max(jnp.abs(scores)))
    wq = nn.initializers.lecun_normal(k_query, (64, 64), x.dtype)
    wk = nn.initializers.lecun_normal(k_key, (64, 64), x.dtype) if separate_keys else wq
    _, separate_weights = nn.attention(x @ wq, x @ wk, x)
    t = x.shape[1]
    self_top = float(jnp.mean(jnp.argmax(notes_weights, -1) == jnp.arange(t)))
    self_top_separate = float(jnp.mean(jnp.argmax(separate_weights, -1) == jnp.arange(t)))
    self_weight = float(jnp.mean(jnp.diagonal(notes_weights, axis1=1, axis2=2)))
    self_weight_separate = float(jnp.mean(jnp.diagonal(separate_weights, axis1=1, axis2=2)))
    in_hull = float(jnp.max(jnp.abs(notes_out - jnp.einsum("bqk,bkf->bqf", notes_weights, x))))
    exact = layer_gap < EXACT and asymmetry < EXACT * float(jnp.max(jnp.abs(scores)))
    restricted = self_top - self_top_separate > 0.2
    verdict = CAVEAT if exact and restricted else HOLDS if exact else FAILS
    return Finding(
        verdict=verdict,
        summary=f"equals jdl's self_attention with W_q = W_k, W_v = W_o = I to {layer_gap:.0e}; "
                f"scores symmetric; tokens attend most to themselves {self_top:.0%} of the time "
                f"(separate W_q, W_k: {self_top_separate:.0%})",
        method=f"{x.shape[0]} sequences of 16 standardised digits (64 features), float64: "
               "jdl.nn.notes_attention (the notes' code, w_kq 64x64 LeCun normal) against "
               "jdl.nn.self_attention with the same matrix for queries and keys and identity "
               "value/output projections; the score matrix x W W^T x^T (symmetry, smallest "
               "eigenvalue); how often each token's largest weight is on itself, against "
               "attention with independent query and key matrices.",
        numbers={"layer_max_gap": layer_gap, "score_asymmetry": asymmetry,
                 "smallest_score_eigenvalue_relative": smallest_eig,
                 "self_top_fraction": self_top, "self_top_fraction_separate": self_top_separate,
                 "mean_self_weight": self_weight, "mean_self_weight_separate": self_weight_separate,
                 "values_are_inputs_gap": in_hull},
        threshold="the code must equal jdl's attention with W_q = W_k and V = x (exact); caveat "
                  "if sharing the matrix raises the self-attention share by more than 20 points "
                  "over separate query and key matrices",
        caveat="" if verdict == HOLDS else
        "The code is a restricted self-attention: one matrix for keys and queries makes the "
        "scores x W W^T x^T symmetric and positive semi-definite, so each token tends to attend "
        f"to itself ({self_top:.0%} vs {self_top_separate:.0%} with separate matrices), and V = x "
        "(no value projection) makes each output a weighted average of the raw inputs. The text's "
        "'turn it into Keys, Values and Query' (separate W_q, W_k, W_v, as in jdl.nn."
        "self_attention) is the general form." if verdict == CAVEAT else
        "the notes' code differs from attention with a shared key/query matrix")


# --- residual networks ------------------------------------------------------------------------


def _deep_net(kind: str, depth: int, activation: str, width: int = 32):
    """``dense-act``, ``depth`` blocks ``dense-act`` (plain or with a skip), ``dense(10)``."""
    body = []
    for _ in range(depth):
        block = nn.serial(nn.dense(width), nn.activation(activation))
        body.append(nn.residual(block) if kind == "residual" else block)
    return nn.serial(nn.dense(width), nn.activation(activation), *body, nn.dense(10))


def _hidden_weights(model, tree):
    """The weight matrices of the hidden layers, input side first (the output layer excluded)."""
    out = []
    for name in model.names[:-1]:
        if name.endswith("_dense"):
            out.append(tree[name]["w"])
        elif name.endswith("_serial"):
            out.append(tree[name]["0_dense"]["w"])
        elif name.endswith("_residual"):
            out.append(tree[name]["block"]["0_dense"]["w"])
    return out


def _layer_gradient_norms(model, params, x, y):
    """``|dE/dW_l|`` for every hidden layer at ``params`` (cross-entropy on a digits batch)."""
    def norms(p):
        grads = jax.grad(lambda q: losses.softmax_cross_entropy(model.apply(q, x)[0], y))(p)
        return jnp.stack([jnp.linalg.norm(w) for w in _hidden_weights(model, grads)])
    return np.asarray(jax.jit(norms)(params))


@functools.lru_cache(maxsize=4)
def _trained_deep_nets(mode: str, seed: int, depth: int, epochs: int, activation: str):
    """Plain and residual nets of ``depth`` blocks trained alike with SGD on digits (cached)."""
    from jdl.studies.registry import Context

    key = Context(mode=mode, seed=seed).key("cnn.resnet")
    ds = _images(key)
    x_tr, x_val = ds.x_train.reshape(-1, 64), ds.x_val.reshape(-1, 64)
    out = {}
    for kind in ("plain", "residual"):
        model = _deep_net(kind, depth, activation)
        _, params, _ = model.init(key, (-1, 64), jnp.float32)
        result = jt.fit(_classifier_loss(model), params, jt.sgd(0.05), (x_tr, ds.y_train),
                        epochs=epochs, batch_size=64, key=key, val_data=(x_val, ds.y_val),
                        metrics={"accuracy": _accuracy_metric(model)}, quiet=True)
        out[kind] = (model, result.params, result.history, x_val)
    return out


@study("cnn.resnet-gradients", SECTION,
       "Resnets allow deeper training of NN because they give shorter paths for gradients to "
       "flow backwards such that they dont become random noise/vanish/explode")
def resnet_gradients(ctx, activations=("sigmoid", "tanh")):
    """Per-layer gradient norms of deep plain and residual nets at init; SGD training on digits."""
    key = ctx.key("cnn.resnet-gradients")
    depth = ctx.pick(6, 32, 64)
    ds = _images(key)
    x, y = ds.x_train[:256].reshape(-1, 64), ds.y_train[:256]
    profiles, ratios = {}, {}
    for act in activations:
        for kind in ("plain", "residual"):
            model = _deep_net(kind, depth, act)
            _, params, _ = model.init(key, (-1, 64), jnp.float32)
            norms = _layer_gradient_norms(model, params, x, y)
            profiles[f"{kind} {act}"] = norms.tolist()
            ratios[f"{kind} {act}"] = float(norms[0] / norms[-1])
    train_depth, epochs = ctx.pick(6, 16, 32), ctx.pick(4, 20, 40)
    nets = _trained_deep_nets(ctx.mode, ctx.seed, train_depth, epochs, "tanh")
    val = {kind: float(nets[kind][2]["val_accuracy"][-1]) for kind in nets}
    plain_vanishes = [a for a in activations if ratios[f"plain {a}"] < 0.01]
    residual_vanishes = [a for a in activations if ratios[f"residual {a}"] < 0.01]
    grad_ok = bool(plain_vanishes) and not residual_vanishes
    train_ok = val["residual"] - val["plain"] > 0.05
    verdict = HOLDS if grad_ok and train_ok else CAVEAT if grad_ok or train_ok else FAILS

    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.3))
    for name, norms in profiles.items():
        ax0.semilogy(range(1, len(norms) + 1), np.maximum(norms, 1e-30), "-" if "residual"
                     in name else "--", label=name)
    ax0.set_xlabel("hidden layer (input side first)")
    ax0.set_ylabel("|dE/dW| at initialisation")
    ax0.set_title(f"depth {depth + 1} hidden layers", fontsize=9)
    ax0.legend(fontsize=7)
    for kind in nets:
        ax1.plot(range(1, epochs + 1), nets[kind][2]["val_accuracy"], label=kind)
    ax1.set_xlabel("epoch (SGD, lr 0.05)")
    ax1.set_ylabel("validation accuracy")
    ax1.set_title(f"tanh, {train_depth + 1} hidden layers, digits", fontsize=9)
    ax1.legend(fontsize=8)
    figure = ctx.save_figure(fig, "cnn_resnet_gradients")
    ratio_text = ", ".join(f"{k} {v:.1e}" for k, v in ratios.items())
    return Finding(
        verdict=verdict,
        summary=f"first/last hidden-layer gradient at init: {ratio_text}; after {epochs} SGD "
                f"epochs: residual {val['residual']:.0%} vs plain {val['plain']:.0%} "
                "validation accuracy",
        method=f"Digits (flattened), width-32 MLPs with {depth + 1} hidden layers, plain or with "
               "identity skips around each hidden block (jdl.nn.residual), LeCun-normal init: "
               "the gradient norm of every hidden weight matrix on 256 examples at "
               f"initialisation, for {', '.join(activations)}. Then tanh nets with "
               f"{train_depth + 1} hidden layers trained alike (jdl.train.fit, SGD 0.05, batch "
               f"64, {epochs} epochs).",
        numbers={"depth": depth + 1, "first_over_last_gradient": ratios,
                 "gradient_profiles": profiles, "train_depth": train_depth + 1,
                 "val_accuracy": val,
                 "val_accuracy_curves": {k: nets[k][2]["val_accuracy"].tolist() for k in nets}},
        threshold="gradients vanish if the first hidden layer's gradient is below 1% of the "
                  "last's; holds if some plain net vanishes and no residual net does, and the "
                  "residual net trains to a validation accuracy 5 points higher; caveat if only "
                  "one of the two",
        caveat="" if verdict == HOLDS else
        ("Plain nets vanish here, but the residual net does not train better in this budget."
         if grad_ok else
         "The residual net trains better, but the plain nets' gradients do not vanish at "
         "initialisation here (LeCun-normal init keeps tanh nets' gradients alive); the "
         "benefit is not only gradient size." if train_ok else
         "Neither a vanishing gradient nor a training gain was seen."),
        figures=[figure])


@study("cnn.resnet-add", SECTION,
       "Resnets ... allows modelling of the data as block such that relevant data is "
       "propagated forward when needed, the model just has to add to it something to make it "
       "what we want to predict")
def resnet_add(ctx, skip=True):
    """A zero branch passes its input exactly; trained branches add small corrections.

    ``skip=False`` judges the same zero block without its skip connection.
    """
    key = ctx.key("cnn.resnet-add")
    x = _images(key, jnp.float64).x_val.reshape(-1, 64)
    plain_block = nn.serial(nn.dense(64, w_init="zeros"), nn.activation("tanh"))
    zero_block = nn.residual(plain_block) if skip else plain_block
    _, zp, _ = zero_block.init(key, x.shape, x.dtype)
    _, pp, _ = plain_block.init(key, x.shape, x.dtype)
    identity_error = float(jnp.max(jnp.abs(zero_block.apply(zp, x)[0] - x)))
    plain_loss = float(jnp.linalg.norm(plain_block.apply(pp, x)[0] - x) / jnp.linalg.norm(x))
    train_depth, epochs = ctx.pick(6, 16, 32), ctx.pick(4, 20, 40)
    model, params, history, x_val = _trained_deep_nets(
        ctx.mode, ctx.seed, train_depth, epochs, "tanh")["residual"]
    h, _ = model.children[1].apply({}, model.children[0].apply(params[model.names[0]],
                                                               x_val)[0])
    ratios = []
    for name, layer in zip(model.names[2:-1], model.children[2:-1]):
        branch, _ = layer.children[0].apply(params[name]["block"], h)
        ratios.append(float(jnp.median(jnp.linalg.norm(branch, axis=-1)
                                       / jnp.linalg.norm(h, axis=-1))))
        h = h + branch
    median = float(np.median(ratios))
    exact = identity_error == 0.0
    adds = median < 1.0
    verdict = HOLDS if exact and adds else CAVEAT if exact else FAILS
    return Finding(
        verdict=verdict,
        summary=f"a zero branch passes its input exactly (error {identity_error:.0e}; the same "
                f"block without the skip loses {plain_loss:.0%} of it); trained branches add "
                f"{median:.2f} x |input| (median over {len(ratios)} blocks)",
        method="A residual block whose dense layer is zero, against the same block without the "
               "skip, on digits (float64). Then the trained residual tanh net of "
               f"cnn.resnet-gradients ({train_depth} blocks, digits, SGD): per block, the "
               "median over validation digits of |branch(h)| / |h|.",
        numbers={"identity_error": identity_error, "plain_block_relative_loss": plain_loss,
                 "branch_over_input": ratios, "median_branch_over_input": median,
                 "final_val_accuracy": float(history["val_accuracy"][-1])},
        threshold="holds if the zero branch is the identity exactly and the trained branches are "
                  "smaller than their inputs (median ratio < 1); caveat if only the first",
        caveat="" if verdict == HOLDS else
        "The skip passes the input exactly, but the trained branches are as large as their "
        "inputs: they rewrite the representation rather than add a small correction."
        if exact else "Without the skip the zero block outputs 0: the input is lost, and the "
        "block has to learn the whole map instead of an addition to it.")


# --- parameter sharing ------------------------------------------------------------------------


def _local_mask(size: int, kernel: int, channels: int, padding: str) -> np.ndarray:
    """``(size^2, out^2 * channels)``: 1 where input pixel ``q`` is in the window of output ``p``.

    The connectivity of a conv layer (kernel ``kernel``, stride 1) without the
    sharing: the weight matrix of a locally connected layer, flattened like
    ``flatten`` flattens the conv's NHWC output.
    """
    offset = (kernel - 1) // 2 if padding == "SAME" else 0
    out = size if padding == "SAME" else size - kernel + 1
    mask = np.zeros((size, size, out, out, channels))
    for i in range(out):
        for j in range(out):
            r0, c0 = i - offset, j - offset
            mask[max(r0, 0):r0 + kernel, max(c0, 0):c0 + kernel, i, j, :] = 1
    return mask.reshape(size * size, out * out * channels)


def _sharing_models(size, channels, kernel, padding):
    """Conv and locally connected feature layers, each + relu, global max pool, dense(10)."""
    out = size if padding == "SAME" else size - kernel + 1
    head = [nn.activation("relu"), nn.max_pool(out), nn.flatten(), nn.dense(10)]
    conv = nn.serial(nn.conv2d(channels, kernel, padding=padding), *head)
    local = nn.serial(nn.flatten(), nn.dense(out * out * channels),
                      nn.reshape((out, out, channels)), *head)
    return conv, local


def _placed(key, x, size):
    """Digits at random positions of a ``size x size`` canvas (whole: within its margin)."""
    margin = (size - x.shape[1]) // 2
    shifts = jax.random.randint(key, (x.shape[0], 2), -margin, margin + 1)
    return jax.vmap(lambda img, s: jnp.roll(img, s, axis=(0, 1)))(_canvas(x, size), shifts)


def _masked(params, mask):
    return {**params, "1_dense": {**params["1_dense"], "w": params["1_dense"]["w"] * mask}}


@study("cnn.sharing-params", SECTION,
       "parameter sharing in convolutional neural nets ... reduces the total number of "
       "parameters, thus reducing overfitting")
def sharing_params(ctx, kernel=3, padding="SAME"):
    """A conv layer against the same connectivity without sharing: counts and overfitting.

    ``kernel`` / ``padding`` of the conv layer on 8x8 digits (a kernel of 8 with
    ``"VALID"`` padding has one position: nothing to share).
    """
    key = ctx.key("cnn.sharing-params")
    channels = ctx.pick(8, 16, 32)
    size = 12
    ds = _images(key)
    n_train = ctx.pick(100, 200, 400)
    k_train, k_val = jax.random.split(key)
    train = (_placed(k_train, ds.x_train[:n_train], size), ds.y_train[:n_train])
    val = (_placed(k_val, ds.x_val, size), ds.y_val)
    conv, local = _sharing_models(size, channels, kernel, padding)
    mask = jnp.asarray(_local_mask(size, kernel, channels, padding), jnp.float32)
    conv_layer = jax.eval_shape(lambda k: conv.init(k, (-1, size, size, 1))[1], key)["0_conv2d"]
    counts = {"conv_layer": shapes.count_params(conv_layer),
              "locally_connected_layer": int(mask.sum()) + int(mask.shape[1]),
              "dense_layer_same_outputs": size * size * int(mask.shape[1]) + int(mask.shape[1])}

    def local_loss(params, batch):
        return _classifier_loss(local)(_masked(params, mask), batch)

    def local_accuracy(params, batch):
        return _accuracy_metric(local)(_masked(params, mask), batch)

    keys = jax.random.split(key, ctx.pick(2, 3, 5))
    epochs = ctx.pick(30, 40, 80)
    ratio = counts["locally_connected_layer"] / counts["conv_layer"]
    fewer = ratio > 2
    optimizer = jt.adam(0.01)
    results = {}
    for name, model, loss, metric in (
            ("shared (conv)", conv, _classifier_loss(conv), _accuracy_metric(conv)),
            ("unshared (locally connected)", local, local_loss, local_accuracy)):
        if not fewer:  # one window position: the two models are the same
            break
        params, val_acc = _fit_seeds(
            loss, metric, lambda k, m=model: m.init(k, (-1, size, size, 1), jnp.float32)[1],
            train, val, keys, epochs=epochs, batch_size=25, optimizer=optimizer)
        train_acc = np.asarray([float(jax.jit(metric)(p, train)) for p in params])
        results[name] = {"train_accuracy": float(np.mean(train_acc)),
                         "val_accuracy": float(np.mean(val_acc)),
                         "gap": float(np.mean(train_acc - val_acc))}
    nan = {"val_accuracy": np.nan, "gap": np.nan}
    shared = results.get("shared (conv)", nan)
    unshared = results.get("unshared (locally connected)", nan)
    generalises = fewer and shared["val_accuracy"] - unshared["val_accuracy"] > 0.01
    verdict = HOLDS if fewer and generalises else CAVEAT if fewer else FAILS
    return Finding(
        verdict=verdict,
        summary=f"conv layer {counts['conv_layer']} parameters vs "
                f"{counts['locally_connected_layer']} without sharing ({ratio:.0f}x); validation "
                f"accuracy {shared['val_accuracy']:.0%} vs {unshared['val_accuracy']:.0%} "
                f"(train-val gap {shared['gap']:.2f} vs {unshared['gap']:.2f})",
        method=f"Digits at random positions of a {size}x{size} canvas. conv2d({channels}, "
               f"{kernel}x{kernel}, {padding}) against the same connectivity without sharing (a "
               "locally connected layer: a dense layer masked to each output's window), each "
               "followed by relu, a global max pool and dense(10); parameter counts of the "
               f"first layer; both trained alike on {n_train} digits (Adam 0.01, {epochs} "
               f"epochs, {len(keys)} seeds, jdl.train.fit), accuracies averaged over seeds.",
        numbers={"counts": counts, "count_ratio": ratio, "results": results,
                 "train_examples": n_train},
        threshold="holds if sharing cuts the first layer's parameters more than 2x and raises "
                  "the mean validation accuracy by more than 1 point; caveat if only the count",
        caveat="" if verdict == HOLDS else
        "Sharing cuts the parameters, but the shared model does not generalise better here."
        if fewer else "With one window position there is nothing to share: the counts are "
        "equal (the claim needs a kernel smaller than the input).")


def _translation_features(model, params, x, shifts, stride):
    """Equivariance error and invariance change of ``model`` for each ``(dy, dx)`` shift."""
    y = model.apply(params, x)[0]
    norm = jnp.linalg.norm(y)
    rows = []
    for dy, dx in shifts:
        y_shifted = model.apply(params, _shift(x, dy, dx))[0]
        row = {"shift": [dy, dx],
               "invariance_change": float(jnp.linalg.norm(y_shifted - y) / norm)}
        if y.ndim == 4:
            if dy % stride or dx % stride:
                moved = None
            else:
                moved = _shift(y, dy // stride, dx // stride)
            row["equivariance_error"] = (None if moved is None else
                                         float(jnp.linalg.norm(y_shifted - moved) / norm))
        rows.append(row)
    return rows


@study("cnn.sharing-translation", SECTION,
       "parameter sharing in convolutional neural nets ... enables for convolutional layers to "
       "be translation invariant")
def sharing_translation(ctx, global_pool=False):
    """Shift a digit on a 16x16 canvas: does the conv layer's output move with it or stay put?

    ``global_pool``: average the feature map over positions (then it stays put).
    """
    key = ctx.key("cnn.sharing-translation")
    x = _canvas(_images(key, jnp.float64).x_test[:ctx.pick(16, 64, 256)], 16)
    shifts = ((0, 1), (1, 0), (2, 2), (3, -2), (-3, 3))
    layers = [nn.conv2d(8, 3, b_init=nn.initializers.normal(0.1)), nn.activation("relu")]
    if global_pool:
        layers += [nn.avg_pool(16), nn.flatten()]
    model = nn.serial(*layers)
    _, params, _ = model.init(key, x.shape, x.dtype)
    rows = _translation_features(model, params, x, shifts, 1)
    strided = nn.serial(nn.conv2d(8, 3, strides=2), nn.activation("relu"))
    _, sp, _ = strided.init(key, x.shape, x.dtype)
    stride_rows = _translation_features(strided, sp, x, ((0, 1), (0, 2), (2, 2)), 2)
    change = min(r["invariance_change"] for r in rows)
    equi = [r["equivariance_error"] for r in rows if r.get("equivariance_error") is not None]
    equivariant = bool(equi) and max(equi) < EXACT
    invariant = max(r["invariance_change"] for r in rows) < 0.01
    verdict = HOLDS if invariant else FAILS
    what = "conv-relu, then global average pool" if global_pool else "conv-relu feature map"
    return Finding(
        verdict=verdict,
        summary=(f"{what}: shifting the digit changes the output by at least {change:.0%}"
                 + (f"; the output moves with it exactly (error {max(equi):.0e}): equivariant"
                    if equivariant else "")),
        method=f"{x.shape[0]} test digits on a 16x16 zero canvas, float64, shifted by "
               f"{[list(s) for s in shifts]} pixels (the 4-pixel margin keeps them whole); a "
               "jdl conv2d(8, 3x3, SAME)-relu"
               + (" followed by a global average pool" if global_pool else "")
               + ": |f(shifted x) - f(x)| / |f(x)| (invariance) and |f(shifted x) - shifted "
               "f(x)| / |f(x)| (equivariance). A stride-2 conv is equivariant only for shifts "
               "that are multiples of 2.",
        numbers={"shifts": rows, "stride_2": stride_rows, "equivariant": equivariant},
        threshold="holds if every shift changes the output by less than 1% (invariance)",
        caveat="" if verdict == HOLDS else
        "Sharing makes a conv layer translation EQUIVARIANT -- shift the input and the feature "
        "map shifts by the same amount, exactly away from the borders -- not invariant: the "
        "output changes completely. Invariance needs pooling over positions (global pooling "
        "gives it exactly); with stride s only shifts by multiples of s commute."
        if equivariant else
        "The layer is neither invariant nor equivariant to these shifts.")


def _transfer_verdict(acc: dict) -> tuple[str, float, float]:
    """Frozen pretrained filters against the better baseline (scratch, frozen random filters).

    ``acc`` maps each arm to its per-seed accuracies. The margin is 3 points or
    twice the standard error of the difference, whichever is larger.
    Returns ``(verdict, gain, margin)``.
    """
    base = max(("scratch", "frozen random filters"), key=lambda k: np.mean(acc[k]))
    diff = np.asarray(acc["frozen pretrained filters"]) - np.asarray(acc[base])
    gain = float(np.mean(diff))
    se = float(np.std(diff, ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
    margin = max(0.03, 2 * se)
    verdict = HOLDS if gain > margin else FAILS if gain < -margin else CAVEAT
    return verdict, gain, margin


@study("cnn.sharing-transfer", SECTION,
       "parameter sharing in convolutional neural nets ... allows parameters trained for one "
       "task to be shared even for a different image-related tasks")
def sharing_transfer(ctx, per_class=None):
    """Conv filters trained on digits 0-4 reused for 5-9 from a few examples.

    Four arms on the same few examples: the CNN from scratch, a new head on
    frozen random filters, on frozen pretrained filters, and the pretrained
    CNN fine-tuned. ``per_class``: training examples per new class.
    """
    key = ctx.key("cnn.sharing-transfer")
    ds = _images(key)
    features = nn.serial(nn.conv2d(8, 3), nn.activation("relu"), nn.max_pool(2),
                         nn.conv2d(16, 3), nn.activation("relu"), nn.flatten())
    head = nn.dense(5)
    full = nn.serial(features, head)
    full_loss, full_metric = _classifier_loss(full), _accuracy_metric(full)
    head_loss, head_metric = _classifier_loss(head), _accuracy_metric(head)
    optimizer = jt.adam(0.01)
    source = ds.y_train < 5
    pre_epochs = ctx.pick(5, 15, 30)
    _, random_params, _ = full.init(key, (-1, 8, 8, 1), jnp.float32)
    pretrained = jt.fit(full_loss, random_params, optimizer,
                        (ds.x_train[source], ds.y_train[source]), epochs=pre_epochs,
                        batch_size=32, key=key, quiet=True).params["0_serial"]
    per_class = per_class or ctx.pick(5, 5, 10)
    y_tr = np.asarray(ds.y_train)
    few = np.concatenate([np.nonzero(y_tr == c)[0][:per_class] for c in range(5, 10)])
    x_few, y_few = ds.x_train[few], ds.y_train[few] - 5
    x_eval = jnp.concatenate([ds.x_val, ds.x_test])
    y_eval = jnp.concatenate([ds.y_val, ds.y_test])
    target = y_eval >= 5
    x_eval, y_eval = x_eval[target], y_eval[target] - 5
    keys = jax.random.split(jax.random.fold_in(key, 1), ctx.pick(2, 4, 8))
    epochs = ctx.pick(40, 100, 200)

    def head_init(k):
        return head.init(k, (-1, 256), jnp.float32)[1]

    def run(loss, init, train, val, metric):
        return _fit_seeds(loss, metric, init, train, val, keys, epochs=epochs,
                          batch_size=per_class * 5, optimizer=optimizer)[1]

    def frozen(filters):
        train = (features.apply(filters, x_few)[0], y_few)
        return run(head_loss, head_init, train, (features.apply(filters, x_eval)[0], y_eval),
                   head_metric)

    acc = {
        "scratch": run(full_loss, lambda k: full.init(k, (-1, 8, 8, 1), jnp.float32)[1],
                       (x_few, y_few), (x_eval, y_eval), full_metric),
        "frozen random filters": frozen(random_params["0_serial"]),
        "frozen pretrained filters": frozen(pretrained),
        "fine-tuned pretrained": run(
            full_loss, lambda k: {"0_serial": pretrained, "1_dense": head_init(k)},
            (x_few, y_few), (x_eval, y_eval), full_metric),
    }
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    verdict, gain, margin = _transfer_verdict(acc)
    return Finding(
        verdict=verdict,
        summary=f"digits 5-9 from {per_class} examples per class: frozen pretrained filters "
                f"{mean['frozen pretrained filters']:.0%}, frozen random filters "
                f"{mean['frozen random filters']:.0%}, fine-tuned "
                f"{mean['fine-tuned pretrained']:.0%}, from scratch {mean['scratch']:.0%}",
        method="A CNN conv(8)-relu-maxpool-conv(16)-relu-dense, its filters pretrained on "
               f"digits 0-4 ({pre_epochs} epochs, Adam) and reused for digits 5-9 with a new "
               f"5-way head trained on {per_class} examples per class (Adam 0.01, {epochs} "
               f"epochs, {len(keys)} seeds, jdl.train.fit): frozen or fine-tuned, "
               "against frozen random (untrained) filters and the CNN from scratch; accuracy "
               f"on the {int(x_eval.shape[0])} held-out 5-9 digits, averaged over seeds.",
        numbers={"mean_accuracy": mean, "accuracy_per_seed": {k: v.tolist()
                                                              for k, v in acc.items()},
                 "gain_over_best_baseline": gain, "margin": margin,
                 "examples_per_class": per_class},
        threshold="holds if the frozen pretrained filters beat the better of from-scratch "
                  "training and frozen random filters (same seeds) by more than the margin, "
                  "max(3 points, 2 standard errors); caveat within it; does not hold if worse",
        caveat="" if verdict == HOLDS else
        f"Reusing the filters works (the model runs on the new task), but on 8x8 digits the "
        f"pretrained filters are no better than random ones or training from scratch "
        f"({gain:+.0%}); the benefit needs larger images and models whose features generalise."
        if verdict == CAVEAT else
        f"The pretrained filters do worse than the baselines here ({gain:+.0%}).")


# --- pooling ----------------------------------------------------------------------------------

POOLS = {
    "no pooling": lambda: [],
    "max pool 2x2": lambda: [nn.max_pool(2)],
    "two conv-pool stages": lambda: [nn.max_pool(2), nn.conv2d(16, 3), nn.activation("relu"),
                                     nn.max_pool(2)],
    "global max pool": lambda: [nn.max_pool(16)],
}


def _pool_model(name):
    return nn.serial(nn.conv2d(8, 3), nn.activation("relu"), *POOLS[name](), nn.flatten())


@study("cnn.pooling-invariance", SECTION,
       "Pooling layers are what makes CNNs translation invariance")
def pooling_invariance(ctx, pool="max pool 2x2", train_classifiers=True):
    """Feature change and trained accuracy under 1-3 pixel shifts, with and without pooling.

    ``pool``: the pooling judged, a key of :data:`POOLS` (``"global max pool"``
    pools over every position). ``train_classifiers``: also train and test
    classifiers on shifted digits (the verdict reads the feature change only).
    """
    key = ctx.key("cnn.pooling-invariance")
    ds = _images(key)
    x_tr, x_te = _canvas(ds.x_train, 16), _canvas(ds.x_test, 16)
    shifts = (0, 1, 2, 3)
    epochs = ctx.pick(4, 12, 30)
    change, accuracy = {}, {}
    for name in POOLS:
        features = _pool_model(name)
        out_shape, params, _ = features.init(key, x_tr.shape, jnp.float32)
        f0 = features.apply(params, x_te)[0]
        change[name] = [float(jnp.mean(jnp.linalg.norm(
            features.apply(params, _shift(x_te, s, s))[0] - f0, axis=-1)
            / jnp.linalg.norm(f0, axis=-1))) for s in shifts[1:]]
        if name == "two conv-pool stages" or not train_classifiers:
            continue
        model = nn.serial(features, nn.dense(10))
        _, mp, _ = model.init(key, x_tr.shape, jnp.float32)
        trained = jt.fit(_classifier_loss(model), mp, jt.adam(0.01), (x_tr, ds.y_train),
                         epochs=epochs, batch_size=64, key=key, quiet=True).params
        accuracy[name] = [float(metrics.accuracy(model.apply(trained, _shift(x_te, s, s))[0],
                                          ds.y_test)) for s in shifts]
    judged = change[pool]
    helps = judged[0] < 0.8 * change["no pooling"][0]
    invariant = max(judged) < 0.05
    verdict = HOLDS if invariant else CAVEAT if helps else FAILS

    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name in POOLS:
        ax0.plot(shifts[1:], change[name], "o-", label=name)
    for name in accuracy:
        ax1.plot(shifts, accuracy[name], "o-", label=name)
    ax0.set_xticks(shifts[1:])
    ax1.set_xticks(shifts)
    ax0.set_xlabel("diagonal shift (pixels)")
    ax0.set_ylabel("relative feature change")
    ax0.legend(fontsize=7)
    ax1.set_xlabel("diagonal shift of test digits (pixels)")
    ax1.set_ylabel("test accuracy")
    if accuracy:
        ax1.legend(fontsize=7)
    figure = ctx.save_figure(fig, "cnn_pooling_invariance")
    return Finding(
        verdict=verdict,
        summary=f"{pool}: features change by {', '.join(f'{c:.2f}' for c in judged)} for shifts "
                f"of 1, 2, 3 pixels (no pooling: "
                f"{', '.join(f'{c:.2f}' for c in change['no pooling'])}; global max pool: "
                f"{', '.join(f'{c:.2f}' for c in change['global max pool'])})"
                + (f"; trained, its test accuracy goes from {accuracy[pool][0]:.0%} to "
                   f"{accuracy[pool][-1]:.0%} at 3 pixels" if pool in accuracy else ""),
        method="Digits on a 16x16 zero canvas, shifted diagonally by 1-3 pixels. Random-init "
               "conv(8, 3x3)-relu feature extractors with no pooling, one or two 2x2 max pools, "
               "or a global max pool: the mean relative change of the flattened features. Then "
               f"each (but the two-stage one) + dense(10) trained on centred digits ({epochs} "
               "epochs, Adam, jdl.train.fit) and tested on shifted test digits.",
        numbers={"shifts": list(shifts), "feature_change": change, "test_accuracy": accuracy},
        threshold=f"holds if the '{pool}' features change by less than 5% for every shift; "
                  "caveat if pooling at least cuts the 1-pixel change by 20% against no pooling",
        caveat="" if verdict == HOLDS else
        "Local pooling gives invariance only to shifts smaller than its window, and only "
        "partly; beyond that the pooled map shifts too (the conv layers are equivariant). "
        "Only pooling over all positions (global pooling) makes the features invariant -- "
        "and then the model has no notion of where things are." if verdict == CAVEAT else
        "pooling does not reduce the effect of shifts here",
        figures=[figure])
