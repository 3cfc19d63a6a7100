"""``jdl attribute``: train small models on embedded data and explain them.

* Shapley values of an MLP on breast_cancer (standardised features), by
  permutation sampling against a background set of training rows:
  ``shapley.png`` (mean |phi| per feature with standard errors, and one
  instance) and the numbers in ``attribute.json``.
* LRP of a small CNN on the digits images, rule by rule and for the
  composites, beside gradient x input and integrated gradients:
  ``lrp.png`` and the conservation gaps in ``attribute.json``.
* Activation maximisation of the ten digit classes with L2, total-variation
  and Gaussian priors and jitter: ``activation_max.png``.

Training uses :func:`jdl.train.fit` (Adam, cross-entropy).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from jdl import attribution, data, losses, metrics, nn
from jdl import train as jt


def register(subparsers) -> None:
    """Add the ``attribute`` subcommand."""
    p = subparsers.add_parser(
        "attribute", help="Shapley values, LRP and activation maximisation of small trained "
                          "models (PNG, JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=40, help="training epochs of each model")
    p.add_argument("--permutations", type=int, default=64, help="Shapley permutations")
    p.add_argument("--background", type=int, default=32, help="Shapley background rows")
    p.add_argument("--instances", type=int, default=32, help="test rows explained by Shapley")
    p.add_argument("--digits", type=int, default=8, help="test digits explained by LRP")
    p.add_argument("--steps", type=int, default=300, help="activation-maximisation steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/attribute"))
    p.set_defaults(func=run)


def _train(model, x, y, *, epochs, key, lr=1e-2):
    """Fit ``model`` with Adam on cross-entropy; returns its params."""
    k_init, k_fit = jax.random.split(key)
    _, params, _ = model.init(k_init, (-1, *x.shape[1:]), x.dtype)

    def loss_fn(params, batch):
        logits, _ = model.apply(params, batch[0])
        return losses.softmax_cross_entropy(logits, batch[1])

    result = jt.fit(loss_fn, params, optax.adam(lr), (x, y), epochs=epochs, batch_size=32,
                    key=k_fit, quiet=True)
    return result.params


def _accuracy(model, params, x, y) -> float:
    return float(metrics.accuracy(model.apply(params, x)[0], y))


def _log_odds(model, params, rows):
    """The benign-vs-malignant log-odds ``logit_1 - logit_0`` per row ``(n,)``."""
    logits, _ = model.apply(params, rows)
    return logits[:, 1] - logits[:, 0]


def _shapley_part(args, key, out: Path) -> dict:
    k_data, k_model, k_bg, k_shap = jax.random.split(key, 4)
    ds = data.load("breast_cancer", key=k_data)
    scale = data.fit_standardize(ds.x_train)
    x_train, x_test = scale(ds.x_train), scale(ds.x_test)
    model = nn.serial(nn.dense(32), nn.activation("tanh"), nn.dense(2))
    params = _train(model, x_train, ds.y_train, epochs=args.epochs, key=k_model)
    background = x_train[jax.random.permutation(k_bg, x_train.shape[0])[:args.background]]
    instances = x_test[:args.instances]
    f = Partial(functools.partial(_log_odds, model), params)
    started = time.perf_counter()
    result = attribution.shapley(f, instances, background, key=k_shap,
                                 num_permutations=args.permutations)
    result.values.block_until_ready()
    seconds = time.perf_counter() - started
    efficiency = jnp.abs(result.values.sum(1) - (result.prediction - result.base_value))
    mean_abs = np.asarray(jnp.abs(result.values).mean(0))
    order = np.argsort(-mean_abs)
    names = [ds.feature_names[i] for i in order]
    _plot_shapley(out / "shapley.png", names, mean_abs[order], np.asarray(result.values),
                  np.asarray(result.std_error), order)
    return {
        "model": "MLP 30-32-2 (tanh), explained output: log-odds benign vs malignant",
        "test_accuracy": _accuracy(model, params, x_test, ds.y_test),
        "instances": int(instances.shape[0]), "background_rows": int(background.shape[0]),
        "permutations": args.permutations, "antithetic": True,
        "model_rows_evaluated": result.num_evaluations, "seconds": seconds,
        "rows_per_second": result.num_evaluations / seconds,
        "max_efficiency_error": float(efficiency.max()),
        "mean_standard_error": float(result.std_error.mean()),
        "base_value": float(result.base_value),
        "features_by_mean_abs_value": [
            {"feature": n, "mean_abs_value": float(v)} for n, v in zip(names, mean_abs[order])],
    }


def _plot_shapley(path: Path, names, mean_abs, values, std_error, order, top: int = 15):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = min(top, len(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * top + 1.5))
    rows = np.arange(top)[::-1]
    axes[0].barh(rows, mean_abs[:top], color="C0")
    axes[0].set_yticks(rows, names[:top], fontsize=8)
    axes[0].set_xlabel("mean |Shapley value| (log-odds)")
    axes[0].set_title(f"{values.shape[0]} test instances")
    phi, se = values[0, order[:top]], std_error[0, order[:top]]
    axes[1].barh(rows, phi, xerr=2 * se, color=np.where(phi > 0, "C3", "C0"))
    axes[1].set_yticks(rows, names[:top], fontsize=8)
    axes[1].axvline(0.0, color="k", lw=0.5)
    axes[1].set_xlabel("Shapley value of instance 0 (+-2 standard errors)")
    axes[1].set_title("one instance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _lrp_methods(low: float, high: float) -> dict:
    return {
        "LRP-0": attribution.lrp_0(),
        "LRP-eps 0.25": attribution.epsilon(0.25),
        "LRP-gamma 0.25": attribution.gamma(0.25),
        "by position (z^B, gamma, eps, 0)": attribution.by_position(
            input=attribution.zbox(low, high)),
        "EpsilonGammaBox": attribution.epsilon_gamma_box(low, high),
    }


def _lrp_part(args, key, out: Path):
    k_data, k_model = jax.random.split(key)
    ds = data.load("digits", key=k_data, images=True)
    model = nn.serial(nn.conv2d(8, 3), nn.activation("relu"), nn.max_pool(2),
                      nn.conv2d(16, 3), nn.activation("relu"), nn.flatten(), nn.dense(10))
    params = _train(model, ds.x_train, ds.y_train, epochs=args.epochs, key=k_model)
    x = ds.x_test[:args.digits]
    methods = _lrp_methods(0.0, 1.0)
    maps, report = {}, {}
    names = attribution.layer_names(model)
    for label, composite in methods.items():
        explain = jax.jit(functools.partial(attribution.lrp, model, composite=composite))
        result = explain(params, x)
        maps[label] = np.asarray(result.relevance[..., 0])
        report[label] = {
            "rules": [[n, r.name] for n, r in attribution.rules_of(model, composite)],
            "mean_abs_conservation_gap": dict(zip(
                names, np.abs(np.asarray(result.conservation_gap)).mean(0).tolist())),
            "relevance_sum_over_score": float(jnp.mean(
                result.relevance.reshape(x.shape[0], -1).sum(1) / result.score)),
        }
    maps["gradient x input"] = np.asarray(attribution.gradient_x_input(model, params, x)[..., 0])
    ig = attribution.integrated_gradients(model, params, x, steps=32)
    maps["integrated gradients"] = np.asarray(ig.attributions[..., 0])
    report["integrated gradients"] = {
        "max_abs_completeness_gap": float(jnp.abs(ig.completeness_gap).max())}
    logits, _ = model.apply(params, x)
    _plot_lrp(out / "lrp.png", np.asarray(x[..., 0]), maps, np.asarray(jnp.argmax(logits, 1)))
    return model, params, ds, {
        "model": "CNN conv8-relu-maxpool-conv16-relu-flatten-dense10",
        "test_accuracy": _accuracy(model, params, ds.x_test, ds.y_test),
        "explained": "each digit's predicted class (its logit)", "methods": report}


def _plot_lrp(path: Path, images, maps: dict, predicted):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, n, figsize=(1.2 * n + 2.2, 1.25 * rows), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j], cmap="gray_r", vmin=0, vmax=1)
        axes[0, j].set_title(f"pred {predicted[j]}", fontsize=8)
        for i, heat in enumerate(maps.values(), start=1):
            limit = max(np.abs(heat[j]).max(), 1e-12)
            axes[i, j].imshow(heat[j], cmap="bwr", vmin=-limit, vmax=limit)
    for i, label in enumerate(["input", *maps], start=0):
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _activation_max_part(args, key, model, params, ds, out: Path) -> dict:
    priors = [attribution.l2_prior(1e-3), attribution.total_variation_prior(2e-3),
              attribution.gaussian_prior(ds.x_train, weight=2e-2)]
    result = attribution.activation_maximization(
        model, params, jnp.arange(10), input_shape=ds.x_train.shape[1:], key=key,
        steps=args.steps, prior=priors, jitter=1, bounds=(0.0, 1.0))
    logits, _ = model.apply(params, result.inputs)
    predicted = np.asarray(jnp.argmax(logits, 1))
    probs = np.exp(np.asarray(result.score))
    attribution.save_image_grid(
        result.inputs, str(out / "activation_max.png"), cmap="gray_r",
        titles=[f"{c}: p={p:.2f}" for c, p in enumerate(probs)])
    return {"objective": "log p(c|x) + log p(x); priors L2 1e-3, TV 2e-3, Gaussian 2e-2; "
                         "jitter 1 px; x in [0, 1]",
            "steps": args.steps, "p_class": probs.tolist(), "predicted_class": predicted.tolist()}


def run(args) -> int:
    """Train the two models, explain them, write the figures and ``attribute.json``."""
    for name in ("epochs", "permutations", "background", "instances", "digits", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"jdl attribute: expected --{name} >= 1, got {getattr(args, name)}")
    if args.permutations % 2:
        raise ValueError(f"jdl attribute: expected an even --permutations (antithetic pairs), "
                         f"got {args.permutations}")
    args.out.mkdir(parents=True, exist_ok=True)
    k_shap, k_lrp, k_max = jax.random.split(jax.random.key(args.seed), 3)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items() if k != "func"}}
    report["shapley"] = _shapley_part(args, k_shap, args.out)
    model, params, ds, report["lrp"] = _lrp_part(args, k_lrp, args.out)
    report["activation_max"] = _activation_max_part(args, k_max, model, params, ds, args.out)
    (args.out / "attribute.json").write_text(json.dumps(report, indent=1))
    shap = report["shapley"]
    print(f"jdl attribute: breast_cancer MLP test accuracy {shap['test_accuracy']:.3f}; Shapley "
          f"of {shap['instances']} rows, {shap['model_rows_evaluated']} model rows in "
          f"{shap['seconds']:.2f} s, top feature {shap['features_by_mean_abs_value'][0]['feature']}"
          f"; digits CNN test accuracy {report['lrp']['test_accuracy']:.3f}; wrote "
          f"{args.out}/shapley.png, lrp.png, activation_max.png, attribute.json")
    return 0
