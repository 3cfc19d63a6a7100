"""Studies of the notes' Explainable-AI section: activation maximisation, Shapley values, LRP.

One small CNN (conv8-relu-maxpool-conv16-relu-dense10) is trained on the
digits images once per ``(mode, seed)`` and shared (cached) by the LRP and
activation-maximisation studies; an MLP on standardised breast_cancer is
shared by the Shapley studies. Attributions come from :mod:`jdl.attribution`
(``shapley``, ``lrp`` with its rules and composites, ``gradient_x_input``,
``activation_maximization`` with its priors), training from :func:`jdl.train.fit`.

Heatmap measures (per image; rule against rule they are compared paired over
the same digits, see :func:`_exceeds`):

* sparsity: the Gini index of ``|R|`` over the digit's (non-zero) pixels;
* noise: the fraction of the heatmap's spectral energy above half the Nyquist
  frequency (the sign alternation between neighbours is reported too);
* positive fraction ``sum R+ / sum |R|``, and coverage: the share of the
  digit's pixels with ``R > 0`` (how densely it is highlighted);
* faithfulness: pixel flipping (Samek et al. 2017): pixels are set to 0 (the
  digits background) in order of decreasing relevance and the AOPC, the mean
  drop of the explained logit, is compared with orders that need no
  explanation (random, and by input intensity).
"""

from __future__ import annotations

import functools
import itertools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from jdl import attribution as at
from jdl import data, losses, metrics, nn
from jdl import train as jt
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, Context, Finding, study

SECTION = "Explainable AI"
F32 = jnp.float32
EXACT = 1e-8  # relative error of an identity (float64 game values)
T_SIGNIFICANT = 3.0  # paired t statistic over the explained digits for "measurably different"
MIN_EFFECT = 0.01  # ... and a mean difference of at least 1% of the measure's level


# --- shared models ----------------------------------------------------------------------------


CNN = nn.serial(nn.conv2d(8, 3), nn.activation("relu"), nn.max_pool(2),
                nn.conv2d(16, 3), nn.activation("relu"), nn.flatten(), nn.dense(10))
ADAM = optax.adam(0.01)  # one object, so jdl.train.fit reuses its compiled loop across models
CNN_NAME = "CNN conv3x3(8)-relu-maxpool2-conv3x3(16)-relu-dense(10)"


def _cnn_loss(params, batch):
    return losses.softmax_cross_entropy(CNN.apply(params, batch[0])[0], batch[1])


def _accuracy(model, params, x, y) -> float:
    return float(metrics.accuracy(model.apply(params, x)[0], y))


@functools.lru_cache(maxsize=4)
def _digits(seed: int):
    """The digits images ``(n, 8, 8, 1)`` in [0, 1], float32, split 60/20/20."""
    return data.load("digits", key=Context(seed=seed).key("xai.digits"), images=True, dtype=F32)


def _epochs(mode: str) -> int:
    return {"tiny": 3, "quick": 10, "full": 40}[mode]


@functools.lru_cache(maxsize=16)
def _digits_cnn(mode: str, seed: int, variant: str = "trained"):
    """The shared digits CNN: ``(params, test accuracy)``, cached per ``(mode, seed, variant)``.

    ``variant``: ``"trained"`` (Adam 0.01, batch 32), ``"retrained"`` (the
    same with another initialisation and data order), ``"shuffled"`` (trained
    alike on permuted labels) or ``"untrained"`` (the initialisation).
    """
    ds = _digits(seed)
    salt = "trained" if variant in ("trained", "untrained") else variant
    k_init, k_fit, k_perm = jax.random.split(Context(mode=mode, seed=seed).key(f"xai.{salt}"), 3)
    _, params, _ = CNN.init(k_init, (-1, 8, 8, 1), F32)
    if variant != "untrained":
        y = ds.y_train if variant != "shuffled" else jax.random.permutation(k_perm, ds.y_train)
        params = jt.fit(_cnn_loss, params, ADAM, (ds.x_train, y),
                        epochs=_epochs(mode), batch_size=32, key=k_fit, quiet=True).params
    return params, _accuracy(CNN, params, ds.x_test, ds.y_test)


def _explained(ctx, n_tiny: int, n_quick: int, n_full: int):
    """Test digits the trained CNN gets right (at most ``ctx.pick`` of them), and their labels."""
    ds = _digits(ctx.seed)
    params, _ = _digits_cnn(ctx.mode, ctx.seed)
    right = np.flatnonzero(np.asarray(jnp.argmax(CNN.apply(params, ds.x_test)[0], 1) == ds.y_test))
    keep = right[:ctx.pick(n_tiny, n_quick, n_full)]
    return ds.x_test[keep], ds.y_test[keep]


def _relevance(params, x, target, composite) -> np.ndarray:
    """LRP heatmaps ``(n, 8, 8)`` of the CNN's logit ``target`` (eager: rules share op caches)."""
    return np.asarray(at.lrp(CNN, params, x, composite=composite, target=target).relevance[..., 0],
                      np.float64)


# --- heatmap measures -------------------------------------------------------------------------


def _gini(heat: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """Gini index of ``|heat|`` over each image's ink pixels ``(n,)``: 0 uniform, -> 1 one pixel.

    Background pixels (input 0) get no relevance under any rule (``R = a * c``),
    so they are left out: the index measures how the digit's relevance is spread.
    """
    out = []
    for h, m in zip(heat, ink):
        s = np.sort(np.abs(h[m]))
        k = np.arange(1, len(s) + 1)
        out.append(((2 * k - len(s) - 1) * s).sum() / (len(s) * max(s.sum(), 1e-300)))
    return np.array(out)


def _high_frequency(heat: np.ndarray) -> np.ndarray:
    """Fraction of each map's spectral energy above half the Nyquist frequency ``(n,)``."""
    h, w = heat.shape[1:]
    energy = np.abs(np.fft.fft2(heat)) ** 2
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    return energy[:, radius > 0.25].sum(1) / np.maximum(energy.reshape(len(heat), -1).sum(1),
                                                          1e-300)


def _sign_alternation(heat: np.ndarray) -> np.ndarray:
    """Fraction of adjacent pairs of non-zero pixels with opposite signs ``(n,)``."""
    opposite = both = 0
    for a, b in ((heat[:, 1:], heat[:, :-1]), (heat[:, :, 1:], heat[:, :, :-1])):
        opposite = opposite + ((a * b) < 0).sum((1, 2))
        both = both + ((a != 0) & (b != 0)).sum((1, 2))
    return opposite / np.maximum(both, 1)


def _measures(heat: np.ndarray, x) -> dict:
    """Per-image measures of heatmaps ``(n, h, w)`` of the digits ``x`` ``(n, h, w, 1)``."""
    ink = np.asarray(x[..., 0]) > 0
    total = np.maximum(np.abs(heat).sum((1, 2)), 1e-300)
    return {"gini": _gini(heat, ink),
            "high_frequency": _high_frequency(heat),
            "sign_alternation": _sign_alternation(heat),
            "positive_fraction": np.clip(heat, 0, None).sum((1, 2)) / total,
            "coverage": ((heat > 0) & ink).sum((1, 2)) / np.maximum(ink.sum((1, 2)), 1)}


def _means(measures: dict) -> dict:
    return {k: float(np.mean(v)) for k, v in measures.items()}


def _paired_t(a: np.ndarray, b: np.ndarray) -> float:
    """t statistic of the per-image differences ``a - b`` (+-inf: constant shift, 0: none)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    if se > 0:
        return float(d.mean() / se)
    return float(np.sign(d.mean()) * np.inf) if d.mean() != 0 else 0.0


def _exceeds(a: np.ndarray, b: np.ndarray) -> bool:
    """Per-image ``a`` measurably above ``b``: paired t above :data:`T_SIGNIFICANT` and the mean
    difference above :data:`MIN_EFFECT` of the mean level (a tiny consistent shift is no effect)."""
    shift = float(np.mean(a) - np.mean(b))
    level = max(abs(float(np.mean(a))), abs(float(np.mean(b))), 1e-12)
    return _paired_t(a, b) > T_SIGNIFICANT and shift > MIN_EFFECT * level


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-map Pearson correlation of two stacks of maps ``(n, ...)``."""
    a = a.reshape(a.shape[0], -1) - a.reshape(a.shape[0], -1).mean(1, keepdims=True)
    b = b.reshape(b.shape[0], -1) - b.reshape(b.shape[0], -1).mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return float(np.mean((a * b).sum(1) / np.maximum(den, 1e-300)))


def _aopc(params, x, target, heat, steps: int = 16) -> float:
    """Pixel flipping (Samek et al. 2017): the area over the perturbation curve, logit units.

    Pixels are set to 0 (the digits background) in order of decreasing
    ``heat``, in ``steps`` equal steps; AOPC = mean over the ``steps + 1``
    points and the images of ``f(x) - f(x_k)`` for the CNN with ``params`` and
    its logit ``target``. Higher = the order finds the evidence faster.
    """
    n = x.shape[0]
    ranks = np.argsort(np.argsort(-heat.reshape(n, -1), axis=1, kind="stable"), axis=1)
    counts = np.round(np.linspace(0, ranks.shape[1], steps + 1)).astype(int)
    keep = ranks[None] >= counts[:, None, None]                       # (steps + 1, n, pixels)
    flipped = jnp.where(keep, x.reshape(1, n, -1), 0).reshape(-1, *x.shape[1:]).astype(x.dtype)
    logits = CNN.apply(params, flipped)[0].reshape(steps + 1, n, -1)
    f = np.asarray(jnp.take_along_axis(logits, jnp.asarray(target)[None, :, None], 2)[..., 0],
                   np.float64)
    return float(np.mean(f[0] - f))


def _random_heat(key, shape) -> np.ndarray:
    return np.asarray(jax.random.uniform(key, shape))


def _heat_figure(ctx, name: str, images, maps: dict, title: str):
    """Rows of signed heatmaps (bwr) under the input digits."""
    import matplotlib.pyplot as plt

    n = min(6, images.shape[0])
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, n, figsize=(1.1 * n + 1.6, 1.15 * rows), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(np.asarray(images[j, ..., 0]), cmap="gray_r", vmin=0, vmax=1)
        for i, heat in enumerate(maps.values(), start=1):
            limit = max(float(np.abs(heat[j]).max()), 1e-12)
            axes[i, j].imshow(heat[j], cmap="bwr", vmin=-limit, vmax=limit)
    for i, label in enumerate(["input", *maps]):
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return ctx.save_figure(fig, name)


# --- activation maximisation ------------------------------------------------------------------


def _realism(images, classes, ds, k: int = 5) -> dict:
    """How much maximising inputs ``(c, 8, 8, 1)`` look like real digits of their class.

    Distances are in units of what real test digits show (so 1 = as close as a
    typical real digit); the k-nearest-neighbour vote is a classifier that has
    no gradients to exploit.
    """
    flat = np.asarray(images, np.float64).reshape(len(classes), -1)
    x_train = np.asarray(ds.x_train, np.float64).reshape(-1, 64)
    y_train = np.asarray(ds.y_train)
    x_test = np.asarray(ds.x_test, np.float64).reshape(-1, 64)
    y_test = np.asarray(ds.y_test)
    means = np.stack([x_train[y_train == c].mean(0) for c in range(10)])

    def nearest(rows, c):       # distance to the nearest training digit of class c
        return np.sqrt(((rows[:, None] - x_train[y_train == c][None]) ** 2).sum(-1)).min(1)

    typical_mean = np.array([np.linalg.norm(x_test[y_test == c] - means[c], axis=1).mean()
                             for c in classes])
    typical_nearest = np.array([nearest(x_test[y_test == c], c).mean() for c in classes])
    d_all = ((flat[:, None] - x_train[None]) ** 2).sum(-1)
    votes = y_train[np.argsort(d_all, axis=1)[:, :k]] == np.asarray(classes)[:, None]
    gauss = at.gaussian_prior(x_train, weight=1.0)
    return {"distance_to_class_mean": float(np.mean(
                np.linalg.norm(flat - means[classes], axis=1) / typical_mean)),
            "distance_to_nearest_digit": float(np.mean(
                np.array([nearest(flat[i:i + 1], c)[0] for i, c in enumerate(classes)])
                / typical_nearest)),
            "knn_vote": float(votes.mean()),
            "gaussian_log_density": float(np.mean([float(gauss(jnp.asarray(r))) for r in flat]))}


@functools.lru_cache(maxsize=4)
def _maximum_without_prior(mode: str, seed: int, steps: int):
    """``argmax_x log p(c|x)`` for the 10 digits, no prior: ``(inputs, p(c|x))`` (cached)."""
    ds = _digits(seed)
    params, _ = _digits_cnn(mode, seed)
    best = at.activation_maximization(
        CNN, params, jnp.arange(10), input_shape=(8, 8, 1),
        key=Context(mode=mode, seed=seed).key("xai.activation-max"), steps=steps,
        bounds=(0.0, 1.0), init=jnp.asarray(np.asarray(ds.x_train).mean(0)))
    return np.asarray(best.inputs), np.exp(np.asarray(best.score, np.float64))


@study("xai.activation-max", SECTION,
       "Generate the datapoints from the distribution of points that is most likely to activate "
       "the neurons that give us the highest probability of the class we want: "
       "argmax_x log(p(w_c|x)) + log(p(x))")
def activation_max(ctx, prior_data: str = "digits", gaussian_weight: float = 0.05,
                   tv_weight: float = 0.005):
    """Maximise log p(c|x) of the digits CNN with and without a log p(x) prior; judge realism.

    ``prior_data="noise"`` fits the Gaussian prior to uniform noise images
    instead of the digits: a prior that does not describe the data.
    """
    if prior_data not in ("digits", "noise"):
        raise ValueError(f"activation_max: expected prior_data 'digits' or 'noise', got "
                         f"{prior_data!r}")
    key = ctx.key("xai.activation-max")
    ds = _digits(ctx.seed)
    params, acc = _digits_cnn(ctx.mode, ctx.seed)
    fitted = ds.x_train if prior_data == "digits" else jax.random.uniform(key, ds.x_train.shape)
    prior = [at.gaussian_prior(fitted, weight=gaussian_weight), at.total_variation_prior(tv_weight)]
    classes = np.arange(10)
    start = jnp.asarray(np.asarray(ds.x_train).mean(0))
    steps = ctx.pick(60, 250, 600)
    best = at.activation_maximization(CNN, params, jnp.asarray(classes), input_shape=(8, 8, 1),
                                      key=key, steps=steps, prior=prior, bounds=(0.0, 1.0),
                                      init=start)
    runs = {"without prior": _maximum_without_prior(ctx.mode, ctx.seed, steps),
            "with prior": (np.asarray(best.inputs), np.exp(np.asarray(best.score, np.float64)))}
    scores = {label: {**_realism(inputs, classes, ds), "cnn_probability": float(p.mean())}
              for label, (inputs, p) in runs.items()}
    off, on = scores["without prior"], scores["with prior"]
    checks = {"closer to the class mean": on["distance_to_class_mean"]
              < off["distance_to_class_mean"],
              "closer to the nearest real digit of the class": on["distance_to_nearest_digit"]
              < off["distance_to_nearest_digit"],
              "5-nearest-neighbour vote for the class not lower (by 0.1)": on["knn_vote"]
              >= off["knn_vote"] - 0.1}
    passed = sum(checks.values())
    verdict = HOLDS if passed == len(checks) else CAVEAT if passed else FAILS

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 10, figsize=(11, 2.7))
    for row, (label, (inputs, p)) in enumerate(runs.items()):
        for c in classes:
            axes[row, c].imshow(inputs[c, ..., 0], cmap="gray_r", vmin=0, vmax=1)
            axes[row, c].set_title(f"{c}: p={p[c]:.2f}", fontsize=7)
            axes[row, c].set_xticks([])
            axes[row, c].set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"argmax_x log p(c|x) [+ log p(x), p fitted to {prior_data}], digits CNN "
                 f"({steps} Adam steps)", fontsize=9)
    fig.tight_layout()
    figure = ctx.save_figure(fig, "xai_activation_max")
    return Finding(
        verdict=verdict,
        summary=f"with the prior: distance to the class mean {off['distance_to_class_mean']:.2f} "
                f"-> {on['distance_to_class_mean']:.2f}, to the nearest real digit "
                f"{off['distance_to_nearest_digit']:.2f} -> {on['distance_to_nearest_digit']:.2f} "
                f"(1 = a real test digit), 5-NN vote {off['knn_vote']:.2f} -> "
                f"{on['knn_vote']:.2f}; "
                f"CNN p(c) {off['cnn_probability']:.2f} -> {on['cnn_probability']:.2f}",
        method=f"{CNN_NAME} trained on digits (test accuracy {acc:.3f}); jdl.attribution."
               f"activation_maximization of log p(c|x) for the 10 classes, {steps} Adam steps "
               f"from the mean training digit, pixels clipped to [0, 1], without a prior and with "
               f"log p(x) = Gaussian fitted to {prior_data} (jdl gaussian_prior, weight "
               f"{gaussian_weight}) + total variation (weight {tv_weight}). Realism against the "
               f"training digits: distance to the class's mean digit and to its nearest training "
               f"digit of the class (each in units of a real test digit's), and the 5-nearest-"
               f"neighbour vote for the class; the data Gaussian's log density is reported but "
               f"is (part of) the prior itself.",
        numbers={"without_prior": off, "with_prior": on, "checks": checks,
                 "cnn_test_accuracy": acc, "steps": steps, "prior_data": prior_data},
        threshold="holds if with the prior the inputs are closer to the class mean, closer to "
                  "the nearest real digit of the class, and voted the class by 5-NN at most 0.1 "
                  "less often; caveat if one or two of these; does not hold if none",
        caveat="" if verdict == HOLDS else
        "The prior helps only as far as it describes the data; not observed here: "
        + "; ".join(k for k, ok in checks.items() if not ok)
        + (f" (p(x) fitted to {prior_data}, not to the digits)." if prior_data != "digits"
           else "."),
        figures=[figure])


# --- Shapley values ---------------------------------------------------------------------------


CANCER_MLP = nn.serial(nn.dense(16), nn.activation("tanh"), nn.dense(2))


def _cancer_loss(params, batch):
    return losses.softmax_cross_entropy(CANCER_MLP.apply(params, batch[0])[0], batch[1])


def _log_odds(params, rows):
    logits = CANCER_MLP.apply(params, rows)[0]
    return logits[:, 1] - logits[:, 0]


@functools.lru_cache(maxsize=4)
def _cancer_mlp(mode: str, seed: int):
    """An MLP on standardised breast_cancer (float64): ``(params, x_train, x_test, accuracy)``."""
    key = Context(mode=mode, seed=seed).key("xai.cancer")
    ds = data.load("breast_cancer", key=key, dtype=jnp.float64)
    scale = data.fit_standardize(ds.x_train)
    x_train, x_test = scale(ds.x_train), scale(ds.x_test)
    _, params, _ = CANCER_MLP.init(key, (-1, 30), jnp.float64)
    params = jt.fit(_cancer_loss, params, ADAM, (x_train, ds.y_train),
                    epochs=_epochs(mode) * 3, batch_size=32, key=key, quiet=True).params
    return params, x_train, x_test, _accuracy(CANCER_MLP, params, x_test, ds.y_test)


def _measurement_groups(num_groups: int) -> np.ndarray:
    """breast_cancer players: feature ``j`` measures quantity ``j % 10`` (mean, error, worst)."""
    return (np.arange(30) % 10) * num_groups // 10


@study("xai.shapley-sampling", SECTION,
       "To sample t times for the set of all possible subsets S (sampled Shapley values "
       "converge to the exact ones)")
def shapley_sampling(ctx, sampled_game: str = "background"):
    """Permutation-sampled Shapley values against the exact ones, error against permutations.

    ``sampled_game="mean"`` samples the game of a single reference (the
    background mean) while the exact values use the background set: a
    different game, whose sampled values cannot converge to these exact ones.
    """
    if sampled_game not in ("background", "mean"):
        raise ValueError(f"shapley_sampling: expected sampled_game 'background' or 'mean', got "
                         f"{sampled_game!r}")
    key = ctx.key("xai.shapley-sampling")
    params, x_train, x_test, acc = _cancer_mlp(ctx.mode, ctx.seed)
    groups = _measurement_groups(10)
    n, m, reps = ctx.pick(4, 12, 32), ctx.pick(8, 24, 64), ctx.pick(16, 64, 256)
    x = x_test[:n]
    background = x_train[jax.random.permutation(key, x_train.shape[0])[:m]]
    f = Partial(_log_odds, params)
    exact = np.asarray(at.shapley(f, x, background, method="exact", groups=groups).values)
    sampled_bg = background if sampled_game == "background" else \
        jnp.broadcast_to(background.mean(0), background.shape)     # one mean reference, as m rows
    tiled = jnp.tile(x, (reps, 1))          # each copy draws its own permutations
    errors, draws = {}, {}
    for antithetic in (False, True):
        label = "antithetic" if antithetic else "plain"
        values = at.shapley(f, tiled, sampled_bg, key=jax.random.fold_in(key, antithetic),
                            num_permutations=2, antithetic=antithetic, groups=groups).values
        draws[label] = np.asarray(values).reshape(reps, n, -1)
    scale = float(np.sqrt(np.mean(exact ** 2)))
    blocks = [2 ** i for i in range(int(math.log2(reps)) + 1)]
    permutations = [2 * b for b in blocks]
    for label, v in draws.items():
        errors[label] = [float(np.sqrt(np.mean(
            (v.reshape(reps // b, b, n, -1).mean(1) - exact[None]) ** 2)) / scale) for b in blocks]
    slopes = {label: float(np.polyfit(np.log(permutations), np.log(e), 1)[0])
              for label, e in errors.items()}
    shrink = {label: e[-1] / e[0] for label, e in errors.items()}
    expected = 1 / math.sqrt(permutations[-1] / permutations[0])
    converges = all(-0.7 <= s <= -0.3 for s in slopes.values()) and all(
        r < 3 * expected for r in shrink.values())
    ratio = float(np.mean(np.array(errors["antithetic"]) / np.array(errors["plain"])))

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.3))
    for label, e in errors.items():
        ax.loglog(permutations, e, "o-", label=f"{label} (slope {slopes[label]:.2f})")
    ax.loglog(permutations, errors["plain"][0] * np.sqrt(permutations[0] / np.array(permutations)),
              "k--", lw=0.8, label="1/sqrt(M)")
    ax.set_xlabel("permutations M")
    ax.set_ylabel("relative RMS error vs exact")
    ax.set_title("breast_cancer MLP, 10 players", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure = ctx.save_figure(fig, "xai_shapley_sampling")
    verdict = HOLDS if converges else FAILS
    return Finding(
        verdict=verdict,
        summary=f"relative RMS error {errors['plain'][0]:.3f} at M={permutations[0]} -> "
                f"{errors['plain'][-1]:.4f} at M={permutations[-1]}, log-log slope "
                f"{slopes['plain']:.2f} (antithetic {slopes['antithetic']:.2f}, "
                f"{ratio:.2f}x the plain error)",
        method=f"MLP 30-16-2 (tanh) on standardised breast_cancer (test accuracy {acc:.3f}), "
               f"log-odds explained; 10 players = the 10 measured quantities (mean, error and "
               f"worst of each); {n} test rows against {m} background rows. Exact values: "
               f"jdl.attribution.shapley(method='exact'), 1024 coalitions. Sampled: "
               f"{reps} independent runs of 2 permutations each (plain, or one antithetic pair), "
               f"averaged in disjoint blocks to M permutations; error = RMS over blocks, rows and "
               f"players, relative to the RMS exact value. What is sampled are orderings of the "
               f"players, not subsets S as the notes write (see xai.shapley-formula).",
        numbers={"permutations": permutations, "relative_rms_error": errors, "slopes": slopes,
                 "error_shrink": shrink, "antithetic_over_plain": ratio,
                 "test_accuracy": acc, "sampled_game": sampled_game},
        threshold=f"holds if both log-log slopes lie in [-0.7, -0.3] (Monte Carlo: -1/2) and the "
                  f"error shrinks from M={permutations[0]} to M={permutations[-1]} to under 3x "
                  f"the 1/sqrt(M) factor ({expected:.3f})",
        caveat="" if verdict == HOLDS else
        "The sampled values do not converge to these exact values: "
        + ("they sample a different game (one mean reference instead of the background set), "
           "so the error stalls at the gap between the two games' values."
           if sampled_game != "background" else "the error does not fall as 1/sqrt(M)."),
        figures=[figure])


def _coalition_values(f, x, background, groups, num_groups) -> np.ndarray:
    """``v(S)`` for every coalition bitmask ``S`` ``(n, 2**g)``: mean over background rows."""
    masks = ((np.arange(2 ** num_groups)[:, None] >> np.arange(num_groups)) & 1).astype(bool)
    features = masks[:, groups]                                       # (coalitions, d)
    rows = jnp.where(features[None, :, None], x[:, None, None], background[None, None])
    out = f(rows.reshape(-1, x.shape[1])).reshape(x.shape[0], len(masks), background.shape[0])
    return np.asarray(out.mean(-1), np.float64)


def _bit(i: int) -> int:
    return 1 << i


def _ordering_form(v: np.ndarray, num_groups: int, keep_after: bool) -> np.ndarray:
    """``(1/d!) sum over orderings`` of the marginal contribution of each player ``(n, g)``.

    ``keep_after=False``: ``v(Pre(i) + i) - v(Pre(i))`` (players before ``i``);
    ``True``: the notes' ``f(x_afterEqual) - f(x_after)``, players at or after ``i``.
    """
    phi = np.zeros((v.shape[0], num_groups))
    for order in itertools.permutations(range(num_groups)):
        order = order[::-1] if keep_after else order
        coalition = 0
        for i in order:
            phi[:, i] += v[:, coalition | _bit(i)] - v[:, coalition]
            coalition |= _bit(i)
    return phi / math.factorial(num_groups)


def _subset_form(v: np.ndarray, num_groups: int, weight) -> np.ndarray:
    """``sum over S not containing i`` of ``weight(|S|) (v(S + i) - v(S))`` ``(n, g)``."""
    phi = np.zeros((v.shape[0], num_groups))
    for s in range(2 ** num_groups):
        size = bin(s).count("1")
        for i in range(num_groups):
            if not s & _bit(i):
                phi[:, i] += weight(size) * (v[:, s | _bit(i)] - v[:, s])
    return phi


@study("xai.shapley-formula", SECTION,
       "Use the rewritten shapley value formula phi_i = (!/d!) sum [f(x_afterEqual(S,i)) - "
       "f(x_After(S,i))]")
def shapley_formula(ctx, num_groups: int = 6):
    """The notes' garbled formula, its correct ordering form and a subset reading, against exact."""
    key = ctx.key("xai.shapley-formula")
    params, x_train, x_test, acc = _cancer_mlp(ctx.mode, ctx.seed)
    groups = _measurement_groups(num_groups)
    x = x_test[:ctx.pick(2, 6, 16)]
    background = x_train[jax.random.permutation(key, x_train.shape[0])[:ctx.pick(8, 16, 32)]]
    f = functools.partial(_log_odds, params)
    exact = np.asarray(at.shapley(Partial(_log_odds, params), x, background, method="exact",
                                  groups=groups).values, np.float64)
    v = _coalition_values(f, x, background, groups, num_groups)
    d_fact = math.factorial(num_groups)
    forms = {
        "orderings, players before i (1/d!)": _ordering_form(v, num_groups, keep_after=False),
        "orderings, notes' afterEqual/after (1/d!)": _ordering_form(v, num_groups, True),
        "subsets S, literal 1/d! weight": _subset_form(v, num_groups, lambda s: 1 / d_fact),
        "subsets S, uniform 1/2^(d-1) (Banzhaf)": _subset_form(
            v, num_groups, lambda s: 1 / 2 ** (num_groups - 1)),
    }
    scale = float(np.abs(exact).max())
    errors = {k: float(np.abs(phi - exact).max() / scale) for k, phi in forms.items()}
    efficiency = float(np.abs(exact.sum(1) - (v[:, -1] - v[:, 0])).max() / scale)
    ordering_ok = all(e < EXACT for k, e in errors.items() if k.startswith("orderings"))
    literal_ok = errors["subsets S, literal 1/d! weight"] < EXACT
    verdict = HOLDS if ordering_ok and literal_ok else CAVEAT if ordering_ok else FAILS
    return Finding(
        verdict=verdict,
        summary=f"1/d! sum over the d! orderings: error "
                f"{max(v for k, v in errors.items() if k.startswith('orderings')):.1e}; sum over "
                f"subsets S with 1/d!: error {errors['subsets S, literal 1/d! weight']:.2f} "
                f"(d={num_groups})",
        method=f"MLP 30-16-2 (tanh) on standardised breast_cancer (test accuracy {acc:.3f}), "
               f"log-odds; {num_groups} players (groups of the 10 measured quantities); "
               f"{x.shape[0]} test rows, {background.shape[0]} background rows, float64. Every "
               f"coalition value v(S) (mean over the background) is enumerated, the formulas are "
               f"summed exactly (all {d_fact} orderings) and compared with jdl.attribution.shapley"
               f"(method='exact') (subset weights |S|!(d-|S|-1)!/d!).",
        numbers={"max_relative_error": errors, "efficiency_error": efficiency,
                 "players": num_groups, "orderings": d_fact},
        threshold=f"holds if the notes' formula read literally (sum over subsets S, factor "
                  f"1/d!) and the ordering forms all match the exact values to {EXACT:g}; caveat "
                  f"if only the ordering forms do",
        caveat="" if verdict == HOLDS else
        "The notes' formula is garbled: the factor is 1/d! and S runs over the d! ORDERINGS "
        "(permutations) pi of the players, not over subsets: phi_i = (1/d!) sum_pi "
        "[v(Pre_pi(i) + {i}) - v(Pre_pi(i))], equivalently the notes' afterEqual/after form "
        "(players at or after i in pi kept from x). Summed over subsets it needs the weights "
        "|S|!(d-|S|-1)!/d!; with 1/d! (or uniformly, the Banzhaf value) it is wrong for d > 2. "
        "Sampling 't times' must sample orderings (see xai.shapley-sampling).",
    )


# --- LRP --------------------------------------------------------------------------------------

COMPOSITE_NAME = "composite (gamma, eps, 0)"


def _composite():
    """The notes' composite: LRP-gamma 0.25 (conv 1), LRP-eps 0.25 (conv 2), LRP-0 (dense)."""
    return at.by_position()


def _rule_maps(ctx, rules: dict):
    params, acc = _digits_cnn(ctx.mode, ctx.seed)
    x, y = _explained(ctx, 16, 128, 360)
    return params, acc, x, y, {name: _relevance(params, x, y, rule) for name, rule in rules.items()}


@study("xai.lrp-rules", SECTION,
       "LRP-0: makes a weighted normalized sum of all activations times their contribution; "
       "LRP-epsilon ... absorb[s] some relevance making smaller contributions irrelevant and only "
       "bigger ones important; LRP-gamma: We make it focus on the positively affecting weights "
       "(... densly highlighted)")
def lrp_rules(ctx, eps: float = 0.25, gamma_value: float = 0.25):
    """Noise, sparsity, positive fraction and coverage of LRP-0, -eps and -gamma heatmaps."""
    rules = {"LRP-0": at.lrp_0(), f"LRP-eps {eps:g}": at.epsilon(eps),
             f"LRP-gamma {gamma_value:g}": at.gamma(gamma_value)}
    params, acc, x, y, maps = _rule_maps(ctx, rules)
    m = {name: _measures(h, x) for name, h in maps.items()}
    k0, ke, kg = rules
    pairs = {"eps less noisy than LRP-0 (high-frequency energy)":
             (m[k0]["high_frequency"], m[ke]["high_frequency"]),
             "eps sparser than LRP-0 (Gini over the digit)": (m[ke]["gini"], m[k0]["gini"]),
             "gamma more positive than LRP-0 (sum R+ / sum |R|)":
             (m[kg]["positive_fraction"], m[k0]["positive_fraction"]),
             "gamma highlights more of the digit than eps (coverage)":
             (m[kg]["coverage"], m[ke]["coverage"])}
    t = {k: _paired_t(a, b) for k, (a, b) in pairs.items()}
    checks = {k: _exceeds(a, b) for k, (a, b) in pairs.items()}
    passed = sum(checks.values())
    verdict = HOLDS if passed == len(checks) else CAVEAT if passed >= 2 else FAILS
    stats = {name: _means(v) for name, v in m.items()}
    figure = _heat_figure(ctx, "xai_lrp_rules", x, maps,
                          f"LRP rules, digits CNN (test accuracy {acc:.3f}), true class")
    return Finding(
        verdict=verdict,
        summary="; ".join(f"{k}: HF {s['high_frequency']:.2f}, Gini {s['gini']:.2f}, positive "
                          f"{s['positive_fraction']:.2f}, coverage {s['coverage']:.2f}"
                          for k, s in stats.items()),
        method=f"{CNN_NAME} trained on digits (test accuracy {acc:.3f}); jdl.attribution.lrp with "
               f"one rule for every conv/dense layer, explaining the true-class logit of "
               f"{x.shape[0]} correctly classified test digits. Per heatmap: spectral energy "
               f"above half Nyquist (noise; sign alternation between neighbours also reported), "
               f"Gini of |R| over the digit's pixels (sparsity), sum R+ / sum |R| (positive "
               f"fraction), share of the digit's pixels with R > 0 (coverage: how densely it is "
               f"highlighted). Differences are paired over the digits.",
        numbers={"means": stats, "paired_t": t, "checks": checks, "test_accuracy": acc,
                 "eps": eps, "gamma": gamma_value, "digits": int(x.shape[0])},
        threshold=f"four checks, each a paired t statistic above {T_SIGNIFICANT:g} with a mean "
                  f"difference above {100 * MIN_EFFECT:g}% of the level: eps less noisy and "
                  f"sparser than LRP-0, gamma more positive than LRP-0 and covering more of the "
                  f"digit than eps; holds if all pass, caveat if 2-3, does not hold otherwise",
        caveat="" if verdict == HOLDS else
        "Not observed here: " + "; ".join(k for k, ok in checks.items() if not ok) + ".",
        figures=[figure])


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if np.std(ra) and np.std(rb) else 0.0


@study("xai.lrp-epsilon-absorbs", SECTION,
       "LRP-epsilon is the same but it has an epsilon to absorb some relevance making smaller "
       "contributions irrelevant and only bigger ones important")
def lrp_epsilon_absorbs(ctx, epsilons=(0.0, 0.01, 0.1, 0.3, 1.0, 3.0)):
    """Relevance absorbed (the conservation gap) and heatmap sparsity against eps, digits CNN."""
    params, acc = _digits_cnn(ctx.mode, ctx.seed)
    x, y = _explained(ctx, 16, 128, 360)
    ink = np.asarray(x[..., 0]) > 0
    absorbed, gini = [], []
    for eps in epsilons:
        result = at.lrp(CNN, params, x, composite=at.epsilon(eps) if eps > 0 else at.lrp_0(),
                        target=y)
        gap = np.asarray(result.conservation_gap.sum(1) / result.score, np.float64)
        absorbed.append(float(-gap.mean()))            # sum(R_in) - f = summed layer gaps
        gini.append(float(_gini(np.asarray(result.relevance[..., 0], np.float64), ink).mean()))
    # the order among eps > 0 (eps = 0 is LRP-0, whose gap is the biases' alone: at
    # eps = 0.01 eps absorbs less than that gap moves from digit set to digit set)
    positive = [i for i, e in enumerate(epsilons) if e > 0]
    rho_absorbed = _spearman([epsilons[i] for i in positive], [absorbed[i] for i in positive])
    rho_gini = _spearman(epsilons, gini)
    grows = rho_absorbed > 0.9 and absorbed[-1] - absorbed[0] > 0.05
    sparser = rho_gini > 0.7 and gini[-1] > (1 + MIN_EFFECT) * gini[0]
    verdict = HOLDS if grows and sparser else CAVEAT if grows or sparser else FAILS

    import matplotlib.pyplot as plt

    shown = [e if e > 0 else min(v for v in epsilons if v > 0) / 10 for e in epsilons]
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.semilogx(shown, absorbed, "o-", label="relevance absorbed (1 - sum R / f)")
    ax.semilogx(shown, gini, "s-", label="Gini of |R| over the digit")
    ax.set_xlabel("epsilon (eps = 0 plotted at the left end)")
    ax.set_title("LRP-eps on the digits CNN", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figure = ctx.save_figure(fig, "xai_lrp_epsilon")
    return Finding(
        verdict=verdict,
        summary=f"absorbed relevance {absorbed[0]:.2f} -> {absorbed[-1]:.2f} of the logit and Gini "
                f"{gini[0]:.3f} -> {gini[-1]:.3f} as eps goes {epsilons[0]:g} -> {epsilons[-1]:g} "
                f"(Spearman {rho_absorbed:.2f}, {rho_gini:.2f})",
        method=f"{CNN_NAME} on digits (test accuracy {acc:.3f}); LRP-eps on every layer "
               f"(jdl.attribution.epsilon; eps = 0 is LRP-0) explaining the true-class logit f of "
               f"{x.shape[0]} correctly classified test digits; absorbed = -(summed "
               f"LRPResult.conservation_gap) / f = 1 - sum(R_input) / f (biases absorb or add "
               f"some even at eps = 0); sparsity = Gini of |R| over the digit's pixels.",
        numbers={"epsilons": list(epsilons), "absorbed_fraction": absorbed, "gini": gini,
                 "spearman_absorbed": rho_absorbed, "spearman_gini": rho_gini,
                 "test_accuracy": acc},
        threshold="absorption grows if its Spearman correlation with eps (eps > 0) exceeds 0.9 "
                  "and it rises from LRP-0's "
                  "by more than 5% of the logit; sparser if the Gini's Spearman exceeds 0.7 and "
                  f"it ends more than {100 * MIN_EFFECT:g}% higher; holds if both, caveat if one",
        caveat="" if verdict == HOLDS else
        ("eps absorbs relevance, but the heatmaps do not get sparser." if grows else
         "the heatmaps get sparser, but the absorbed relevance does not grow clearly."
         if sparser else "over these eps values neither the absorbed relevance nor the sparsity "
         "changes clearly (eps too small next to the pre-activations)."),
        figures=[figure])


def _faithfulness(params, x, y, heat, key) -> dict:
    """AOPC of a heatmap's order, and its ratios to random and input-intensity orders."""
    aopc = _aopc(params, x, y, heat)
    random = np.mean([_aopc(params, x, y, _random_heat(k, heat.shape))
                      for k in jax.random.split(key, 3)])
    intensity = _aopc(params, x, y, np.asarray(x[..., 0], np.float64))
    return {"aopc": aopc, "over_random": float(aopc / random),
            "over_intensity": float(aopc / intensity)}


@study("xai.lrp-composite", SECTION,
       "Composite LRP: Use LRP-0 at top layers cause its more accurate but least understandable; "
       "Use LRP-epsilon at middle layers because ... it removes a lot of the noise; use LRP-gamma "
       "at bottom layers because its most understandable to humans and densly highlighted")
def lrp_composite(ctx, composite=None, label: str = COMPOSITE_NAME):
    """The notes' composite against each rule alone (and the reversed order): flipping, noise,
    coverage. ``composite`` replaces the notes' composite (a test feeds a bad one)."""
    key = ctx.key("xai.lrp-composite")
    composite = _composite() if composite is None else composite
    reversed_name = "reversed (0, eps, gamma)"
    rules = {label: composite, "LRP-0": at.lrp_0(), "LRP-eps 0.25": at.epsilon(0.25),
             "LRP-gamma 0.25": at.gamma(0.25),
             reversed_name: at.by_position(lower=at.lrp_0(), upper=at.gamma(0.25))}
    params, acc, x, y, maps = _rule_maps(ctx, rules)
    layers = [f"{n}: {r.name}" for n, r in at.rules_of(CNN, composite)]
    faith = {k: _faithfulness(params, x, y, h, key) for k, h in maps.items()}
    m = {k: _measures(h, x) for k, h in maps.items()}
    singles = ["LRP-0", "LRP-eps 0.25", "LRP-gamma 0.25"]
    best = max(singles, key=lambda k: faith[k]["aopc"])
    comp = faith[label]["aopc"]
    checks = {f"AOPC at least 95% of the best single rule's ({best})":
              comp >= 0.95 * faith[best]["aopc"],
              "less noisy than LRP-0 (high-frequency energy)":
              _exceeds(m["LRP-0"]["high_frequency"], m[label]["high_frequency"]),
              "highlights more of the digit than LRP-0 (coverage)":
              _exceeds(m[label]["coverage"], m["LRP-0"]["coverage"])}
    passed = sum(checks.values())
    verdict = HOLDS if passed == len(checks) else CAVEAT if passed else FAILS
    stats = {k: _means(v) for k, v in m.items()}

    import matplotlib.pyplot as plt

    heat_fig = _heat_figure(ctx, "xai_lrp_composite", x, maps,
                            f"composite vs single rules, digits CNN (test accuracy {acc:.3f})")
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.9))
    names = list(rules)
    colors = ["C3"] + ["C0"] * 3 + ["C7"]
    for ax, values, title in (
            (axes[0], [faith[k]["aopc"] for k in names], "pixel flipping AOPC (higher = faithful)"),
            (axes[1], [stats[k]["high_frequency"] for k in names], "high-frequency energy (noise)"),
            (axes[2], [stats[k]["coverage"] for k in names], "coverage of the digit")):
        ax.bar(np.arange(len(names)), values, color=colors)
        ax.set_xticks(np.arange(len(names)), names, fontsize=6, rotation=30, ha="right")
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    bar_fig = ctx.save_figure(fig, "xai_lrp_composite_measures")
    return Finding(
        verdict=verdict,
        summary=f"AOPC composite {comp:.2f} vs best single rule {best} {faith[best]['aopc']:.2f} "
                f"(reversed order {faith[reversed_name]['aopc']:.2f}); high-frequency energy "
                f"{stats[label]['high_frequency']:.3f} vs LRP-0 "
                f"{stats['LRP-0']['high_frequency']:.3f}; coverage {stats[label]['coverage']:.2f} "
                f"vs LRP-0 {stats['LRP-0']['coverage']:.2f}",
        method=f"{CNN_NAME} on digits (test accuracy {acc:.3f}); the composite "
               f"(jdl.attribution.by_position: {', '.join(layers)}), each rule on every layer, and "
               f"the reversed composite (LRP-0 bottom, eps middle, gamma top), explaining the "
               f"true-class logit of {x.shape[0]} correctly classified test digits. "
               f"Faithfulness: pixel flipping (pixels set to 0 by decreasing relevance in 16 "
               f"steps; "
               f"AOPC = mean logit drop), also relative to random and input-intensity orders; "
               f"noise and coverage as in xai.lrp-rules, paired over the digits.",
        numbers={"faithfulness": faith, "means": stats, "checks": checks,
                 "rules_by_layer": layers, "test_accuracy": acc},
        threshold=f"three checks: AOPC at least 95% of the best single rule's; less noisy and "
                  f"covering more of the digit than LRP-0 (paired t > {T_SIGNIFICANT:g}, mean "
                  f"difference > {100 * MIN_EFFECT:g}%); holds if all pass, caveat if some, does "
                  f"not hold if none",
        caveat="" if verdict == HOLDS else
        "Not observed for this composite: " + "; ".join(k for k, ok in checks.items() if not ok)
        + ".",
        figures=[heat_fig, bar_fig])


def _flat_logits(params, rows):
    return CNN.apply(params, rows.reshape(-1, 8, 8, 1))[0]


@functools.lru_cache(maxsize=1)
def _timed_functions():
    """Jitted forward pass, gradient x input, LRP-eps and the composite (compiled once per run)."""
    return (jax.jit(lambda p, z: CNN.apply(p, z)[0]),
            jax.jit(functools.partial(at.gradient_x_input, CNN)),
            jax.jit(functools.partial(at.lrp, CNN, composite=at.epsilon(0.25))),
            jax.jit(functools.partial(at.lrp, CNN, composite=_composite())))


def _median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())                      # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@study("xai.lrp-fast", SECTION,
       "Pros: ... fast (Use LRP formulas to propagate the contribution in one backwards pass)")
def lrp_fast(ctx, max_ratio: float = 5.0):
    """Median times of a forward pass, a gradient pass, LRP and Shapley on one batch, all jitted."""
    key = ctx.key("xai.lrp-fast")
    params, acc = _digits_cnn(ctx.mode, ctx.seed)
    x = _digits(ctx.seed).x_test[:ctx.pick(64, 256, 256)]
    y = jnp.argmax(CNN.apply(params, x)[0], 1)
    repeats = ctx.pick(5, 15, 30)
    forward, gradient, lrp_eps, lrp_comp = _timed_functions()
    flat = x.reshape(x.shape[0], -1)
    num_permutations = ctx.pick(2, 8, 16)
    f = Partial(_flat_logits, params)    # all 10 logits: the same model rows as one

    def shap():
        return at.shapley(f, flat, jnp.zeros(64, F32), key=key, num_permutations=num_permutations,
                          groups=at.patch_groups(8, 8, 2)).values

    shap_name = f"Shapley, 16 patches, {num_permutations} permutations"
    seconds = {
        "forward": _median_seconds(lambda: forward(params, x), repeats),
        "gradient x input": _median_seconds(lambda: gradient(params, x, target=y), repeats),
        "LRP-eps": _median_seconds(lambda: lrp_eps(params, x, target=y).relevance, repeats),
        COMPOSITE_NAME: _median_seconds(lambda: lrp_comp(params, x, target=y).relevance, repeats),
        shap_name: _median_seconds(shap, max(3, repeats // 3)),
    }
    grad = seconds["gradient x input"]
    ratios = {k: v / grad for k, v in seconds.items()}
    lrp_ratio = max(ratios["LRP-eps"], ratios[COMPOSITE_NAME])
    verdict = HOLDS if lrp_ratio <= max_ratio else FAILS
    return Finding(
        verdict=verdict,
        summary=f"LRP {ratios['LRP-eps']:.1f}x (eps) and {ratios[COMPOSITE_NAME]:.1f}x (composite) "
                f"the time of a gradient pass; Shapley {ratios[shap_name]:.0f}x",
        method=f"{CNN_NAME} (digits, test accuracy {acc:.3f}), a batch of {x.shape[0]} test "
               f"digits, every method under jax.jit, median of {repeats} timed calls after "
               f"compilation on this machine's CPU: forward pass, gradient x input "
               f"(jdl.attribution.gradient_x_input: one backward pass), LRP (eps everywhere, and "
               f"the gamma/eps/0 composite) and permutation Shapley over 2x2 patches against a "
               f"zero reference. A timing on a shared machine: the threshold is generous.",
        numbers={"median_seconds": seconds, "ratio_to_gradient": ratios, "batch": int(x.shape[0]),
                 "repeats": repeats},
        threshold=f"holds if the slower LRP variant takes at most {max_ratio:g}x a gradient pass",
        caveat="" if verdict == HOLDS else
        f"LRP took {lrp_ratio:.1f}x a gradient pass here, more than {max_ratio:g}x.")


@study("xai.lrp-hyperparameters", SECTION,
       "Pros: Flexible due to hyper parameters. Cons: need to choose hyper parameters correctly")
def lrp_hyperparameters(ctx, epsilons=(0.01, 0.1, 0.3, 1.0, 3.0),
                        gammas=(0.01, 0.1, 0.3, 1.0, 3.0)):
    """How much LRP-eps / LRP-gamma heatmaps and their faithfulness move with eps and gamma."""
    key = ctx.key("xai.lrp-hyperparameters")
    families = {"eps": {e: at.epsilon(e) for e in epsilons},
                "gamma": {g: at.gamma(g) for g in gammas}}
    params, acc = _digits_cnn(ctx.mode, ctx.seed)
    x, y = _explained(ctx, 16, 128, 360)
    maps = {fam: {v: _relevance(params, x, y, rule) for v, rule in rules.items()}
            for fam, rules in families.items()}
    aopc = {fam: [_aopc(params, x, y, h) for h in m.values()] for fam, m in maps.items()}
    ends = {fam: _correlation(*(list(m.values())[i] for i in (0, -1))) for fam, m in maps.items()}
    spread = {fam: (max(a) - min(a)) / max(abs(max(a)), 1e-12) for fam, a in aopc.items()}
    changes = min(ends.values()) < 0.9
    matters = max(spread.values()) > 0.1
    verdict = HOLDS if changes and matters else CAVEAT if changes or matters else FAILS
    random_aopc = float(np.mean([_aopc(params, x, y, _random_heat(k, x.shape[:3]))
                                 for k in jax.random.split(key, 3)]))

    import matplotlib.pyplot as plt

    width = max(len(epsilons), len(gammas))
    fig, axes = plt.subplots(2, width, figsize=(1.3 * width + 0.8, 3.0), squeeze=False)
    for row, (fam, m) in enumerate(maps.items()):
        for j, (value, heat) in enumerate(m.items()):
            limit = max(float(np.abs(heat[0]).max()), 1e-12)
            axes[row, j].imshow(heat[0], cmap="bwr", vmin=-limit, vmax=limit)
            axes[row, j].set_title(f"{fam}={value:g}\nAOPC {aopc[fam][j]:.2f}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("one digit's LRP heatmap as eps and gamma vary (AOPC: pixel flipping over all "
                 "explained digits)", fontsize=8)
    fig.tight_layout()
    figure = ctx.save_figure(fig, "xai_lrp_hyperparameters")
    return Finding(
        verdict=verdict,
        summary=f"heatmap correlation between the ends of the sweep: eps {ends['eps']:.2f}, gamma "
                f"{ends['gamma']:.2f}; AOPC varies by {100 * spread['eps']:.0f}% (eps), "
                f"{100 * spread['gamma']:.0f}% (gamma)",
        method=f"{CNN_NAME} on digits (test accuracy {acc:.3f}); LRP-eps and LRP-gamma on every "
               f"layer over eps in {list(epsilons)} and gamma in {list(gammas)}, explaining the "
               f"true-class logit of {x.shape[0]} correctly classified test digits; per-heatmap "
               f"Pearson correlation between the smallest and largest value, and pixel-flipping "
               f"AOPC (random order: {random_aopc:.2f}); spread = (max - min) / max AOPC.",
        numbers={"end_correlation": ends, "aopc": aopc, "aopc_spread": spread,
                 "random_order_aopc": random_aopc, "epsilons": list(epsilons),
                 "gammas": list(gammas), "test_accuracy": acc},
        threshold="holds if the heatmaps at the two ends of a sweep correlate below 0.9 (the "
                  "hyperparameter shapes the explanation) AND the AOPC varies by more than 10% "
                  "over a sweep (a poor choice costs faithfulness); caveat if one",
        caveat="" if verdict == HOLDS else
        ("The heatmaps change with the hyperparameter but their faithfulness hardly does."
         if changes else "Faithfulness changes, but the heatmaps barely do." if matters else
         "Over these values the hyperparameters change neither the heatmaps nor their "
         "faithfulness much."),
        figures=[figure])


def _architectures(trained_params) -> dict:
    """Small jdl models on the digits: ``name -> (model, params or None, inputs from images)``."""
    images = (lambda x: x)
    sequences = (lambda x: x[..., 0])          # rows as time steps (n, 8, 8)
    return {
        "CNN (conv, max pool, dense)": (CNN, trained_params, images),
        "residual MLP": (nn.serial(nn.flatten(), nn.dense(32), nn.activation("relu"), nn.residual(
            nn.serial(nn.dense(32), nn.activation("relu"))), nn.dense(10)), None, images),
        "MLP with layer norm": (nn.serial(nn.flatten(), nn.dense(32), nn.layer_norm(),
                                          nn.activation("relu"), nn.dense(10)), None, images),
        "self-attention over rows": (nn.serial(nn.self_attention(2), nn.flatten(), nn.dense(10)),
                                     None, sequences),
        "RNN over rows": (nn.serial(nn.rnn(16, return_sequences=False), nn.dense(10)), None,
                          sequences),
    }


def _random_params(model, input_shape, seed: int):
    """Placeholder weights N(0, 0.3^2) in the model's param shapes (host-side: no compiling)."""
    _, shapes, state = jax.eval_shape(lambda k: model.init(k, input_shape, F32),
                                      jax.random.key(0))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), F32), shapes)
    return params, state


@study("xai.lrp-architecture", SECTION, "Cons: not adaptive to new architecture")
def lrp_architecture(ctx, names=None):
    """Which jdl architectures LRP (with its per-layer rules) explains, vs gradient x input."""
    x, _ = _explained(ctx, 16, 128, 360)   # the digits other LRP studies use: shared op caches
    table = {}
    trained, _ = _digits_cnn(ctx.mode, ctx.seed)
    for name, (model, params, reshape) in _architectures(trained).items():
        if names is not None and name not in names:
            continue
        inputs = reshape(x)
        if params is None:
            params, state = _random_params(model, (-1, *inputs.shape[1:]), ctx.seed)
            if jax.tree.leaves(state):
                raise ValueError(f"lrp_architecture: {name} has state; give it trained params")
        grad = jax.jit(functools.partial(at.gradient_x_input, model))(params, inputs)
        entry = {"gradient_x_input": bool(jnp.all(jnp.isfinite(grad)))}
        try:
            rel = at.lrp(model, params, inputs, composite=at.epsilon(0.25)).relevance
            entry["lrp"] = bool(jnp.all(jnp.isfinite(rel)))
        except ValueError as e:
            entry["lrp"], entry["lrp_refusal"] = False, str(e).split(";")[0]
        table[name] = entry
    refused = [k for k, e in table.items() if e["gradient_x_input"] and not e["lrp"]]
    verdict = HOLDS if refused else FAILS
    explained = sum(e["lrp"] for e in table.values())
    return Finding(
        verdict=verdict,
        summary=f"LRP explains {explained} of {len(table)} architectures, gradient x input "
                f"{sum(e['gradient_x_input'] for e in table.values())}; no LRP rule for: "
                f"{', '.join(refused) or 'none'}",
        method=f"Small jdl models on {x.shape[0]} test digits (images, or their rows as a "
               "sequence): "
               "jdl.attribution.lrp (LRP-eps; it has rules for dense, conv, pooling, flatten, "
               "dropout, element-wise activations, batch norm and residual sums) against "
               "jdl.attribution.gradient_x_input, which needs only autodiff. The CNN is the "
               "trained one; the others get random placeholder weights: the question is whether "
               "the method applies at all.",
        numbers={"architectures": table, "without_lrp_rule": refused},
        threshold="holds if LRP refuses at least one architecture that a gradient method explains",
        caveat="" if verdict == HOLDS else
        "Every architecture tried here has LRP rules, so LRP adapted to all of them; it needs a "
        "propagation rule per layer type, and these all have one.")


@study("xai.lrp-needs-good-model", SECTION,
       "Cons: Model has to actually solve the function properly")
def lrp_needs_good_model(ctx, bad_models=("untrained", "shuffled")):
    """LRP heatmaps of a trained CNN against an untrained and a label-shuffled one (digits).

    ``bad_models=("retrained",)`` puts a second well-trained model in the bad
    role, where the claim must fail.
    """
    key = ctx.key("xai.lrp-needs-good-model")
    x, y = _explained(ctx, 16, 128, 360)
    variants = ["trained", "retrained", *[b for b in bad_models if b != "retrained"]]
    params = {v: _digits_cnn(ctx.mode, ctx.seed, v) for v in variants}
    trained = params["trained"][0]
    maps = {v: _relevance(p, x, y, _composite()) for v, (p, _) in params.items()}
    intensity = _aopc(trained, x, y, np.asarray(x[..., 0], np.float64))
    rows = {}
    for i, (v, (p, acc)) in enumerate(params.items()):
        own_random = np.mean([_aopc(p, x, y, _random_heat(k, maps[v].shape))
                              for k in jax.random.split(jax.random.fold_in(key, i), 3)])
        rows[v] = {"test_accuracy": acc,
                   "agreement_with_trained": _correlation(maps[v], maps["trained"]),
                   "task_aopc_over_intensity": _aopc(trained, x, y, maps[v]) / intensity,
                   "own_aopc": _aopc(p, x, y, maps[v]), "own_random_order_aopc": own_random}
    control = rows["retrained"]
    gain = rows["trained"]["task_aopc_over_intensity"] - 1
    checks = {}
    for b in bad_models:
        checks[f"{b}: agreement below half the retrained control's"] = (
            rows[b]["agreement_with_trained"] < 0.5 * control["agreement_with_trained"])
        checks[f"{b}: under half the trained heatmaps' gain over the intensity order"] = (
            rows[b]["task_aopc_over_intensity"] - 1 < 0.5 * gain)
    passed = sum(checks.values())
    verdict = HOLDS if passed == len(checks) and gain > 0 else \
        CAVEAT if passed >= len(checks) / 2 else FAILS
    figure = _heat_figure(ctx, "xai_lrp_needs_good_model", x,
                          {f"{v} (acc {params[v][1]:.2f})": m for v, m in maps.items()},
                          "LRP composite of the true class: trained vs bad models")
    return Finding(
        verdict=verdict,
        summary=f"agreement with the trained model's heatmaps: retrained "
                f"{control['agreement_with_trained']:.2f}, "
                + ", ".join(f"{b} {rows[b]['agreement_with_trained']:.2f}" for b in bad_models)
                + "; pixel flipping on the trained model, AOPC / intensity order: "
                + ", ".join(f"{v} {r['task_aopc_over_intensity']:.2f}" for v, r in rows.items()),
        method=f"{CNN_NAME} on digits: trained (Adam, {_epochs(ctx.mode)} epochs), retrained from "
               f"another initialisation and data order (control), and the bad models "
               f"{', '.join(bad_models)} (untrained = initial weights; shuffled = trained alike on "
               f"permuted labels). jdl.attribution.lrp composite (gamma, eps, 0) of the true class "
               f"for {x.shape[0]} test digits the trained model gets right. Measures: mean "
               f"per-image correlation with the trained model's heatmaps; pixel flipping in each "
               f"heatmap's order scored on the trained model (does it find the evidence the task "
               f"uses?) relative to deleting the brightest pixels first; each model's own AOPC "
               f"against a random order (reported).",
        numbers={"models": rows, "checks": checks, "intensity_order_aopc": intensity},
        threshold="each bad model: agreement with the trained heatmaps below half the control's, "
                  "and less than half the trained heatmaps' gain over the intensity order; holds "
                  "if all checks pass (and the trained heatmaps beat the intensity order), caveat "
                  "if half, does not hold otherwise",
        caveat="" if verdict == HOLDS else
        "Not all checks pass: " + "; ".join(k for k, ok in checks.items() if not ok)
        + (". The 'bad' model here solves the task too, so its explanations are as meaningful."
           if "retrained" in bad_models else "."),
        figures=[figure])
