"""Studies of the notes' "Hessian optimization" advice: conditioning, learning rates, centring.

The learning-rate limit ``2 / lambda_max`` and the slow directions of an
ill-conditioned Hessian, the notes' "best learning rate", centring and
whitening the inputs (LeCun, Bottou, Orr and Mueller, "Efficient BackProp",
1998), centred activations, equal layer widths, batch normalisation and skip
connections. Every Hessian here is exact: ``jdl.hessian.hessian_matrix`` of a
small model on real data, with ``numpy.linalg.eigh`` of it, in float64.

Conditioning of an indefinite (network) Hessian is reported three ways: the
negative mass (fraction of negative eigenvalues), the positive-part ratio
``lambda_max / smallest positive`` (``jdl.hessian.condition_number``), and the
bulk spread ``lambda_max / median |lambda|``, which is insensitive to the
exactly flat directions (dead units, softmax shifts) that make the first two
infinite or astronomically large.

Compiled functions are reused across calls: the losses are module-level
functions and the models are cached per architecture, so a study that
measures raw, centred and whitened inputs compiles its Hessian once.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from jdl import data, hessian, losses, nn
from jdl import train as jt
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, Finding, study

SECTION = "Optimization (Hessian)"
F64 = jnp.float64
PREPROCESSING = ("raw", "center", "standardize", "whiten")


# --- shared helpers ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _load(name: str, seed: int, dtype) -> data.Dataset:
    """``data.load`` split by ``key(seed)``, cached: the studies share one split per dataset."""
    return data.load(name, key=jax.random.key(seed), dtype=dtype)


def _split(ctx, name: str, n: int | None = None, dtype=F64):
    """The first ``n`` examples of a training split, ``(x, y)``; ``ctx`` is a Context or a seed."""
    ds = _load(name, getattr(ctx, "seed", ctx), dtype)
    n = ds.x_train.shape[0] if n is None else min(n, ds.x_train.shape[0])
    return ds.x_train[:n], ds.y_train[:n]


@functools.partial(jax.jit, static_argnames="how")
def _affine(x, how: str):
    """Centred or standardised ``x`` (the std floored at 1e-3 of the largest), one compile."""
    if how == "center":
        return data.fit_center(x)(x)
    return data.fit_standardize(x, eps=1e-3 * jnp.max(jnp.std(x, 0)))(x)


def _preprocess(x, how: str):
    """``x`` raw, centred, standardised or ZCA-whitened with statistics of ``x`` itself.

    Whitening uses ``eps = 1e-9`` times the largest feature variance (digits
    has constant pixels; their whitened value stays 0).
    """
    if how == "raw":
        return x
    if how in ("center", "standardize"):
        return _affine(x, how)
    if how == "whiten":
        return data.fit_whiten(x, "zca", eps=1e-9 * float(np.max(np.var(np.asarray(x), 0))))(x)
    raise ValueError(f"_preprocess: expected one of {PREPROCESSING}, got {how!r}")


def _linear_mse(params, batch):
    """Linear regression: ``mean (x w + b - t)^2``; its Hessian is ``2 E[x~ x~^T]``, x~ = (x, 1)."""
    x, t = batch
    return losses.mse(x @ params["w"] + params["b"], t)


def _logistic(params, batch):
    """Binary logistic regression (cross-entropy from logits)."""
    x, t = batch
    return losses.binary_cross_entropy(x @ params["w"] + params["b"], t.astype(x.dtype),
                                       from_logits=True)


def _quadratic(params, batch):
    """``sum_i lambda_i (w_i - target_i)^2 / 2``: a quadratic with Hessian ``diag(lambda)``."""
    lambdas, target = batch
    return 0.5 * jnp.sum(lambdas * jnp.square(params["w"] - target))


def _zeros_linear(features: int, dtype=F64) -> dict:
    return {"w": jnp.zeros((features,), dtype), "b": jnp.zeros((), dtype)}


def _eigh(loss_fn: Callable, params, batch, **options) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the exact dense Hessian, float64."""
    matrix = np.asarray(hessian.hessian_matrix(loss_fn, params, batch, **options), np.float64)
    return np.linalg.eigh(0.5 * (matrix + matrix.T))


def _conditioning(values: np.ndarray, definite: bool = False) -> dict:
    """Conditioning numbers of a whole spectrum (``jdl.hessian.condition_number``) plus the spread.

    ``definite``: the matrix is known to be positive (semi-)definite (a convex
    loss), so every eigenvalue above roundoff (``1e-13 max |lambda|``) counts.
    """
    values = np.asarray(values, np.float64)
    scale = float(np.abs(values).max())
    cond = hessian.condition_number(values, zero_tol=(1e-13 if definite else 1e-9) * scale)
    return {"lambda_max": cond.lambda_max, "lambda_min": cond.lambda_min,
            "condition_number": _finite([cond.condition_number])[0],
            "negative_mass": cond.negative_mass,
            "positive_ratio": cond.positive_ratio,
            "spread": cond.lambda_max / float(np.median(np.abs(values)))}


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_steps"))
def _gd_paths(loss_fn: Callable, params, batch, lrs: jax.Array, num_steps: int):
    """Full-batch gradient descent from ``params``, one lane per learning rate.

    Each lane scans ``jdl.train.train_step`` with ``jdl.train.sgd(lr)``.

    Returns:
      ``(losses, path)``: the loss before each step ``(lanes, num_steps)`` and
      the flat params after each step ``(lanes, num_steps, n)``.
    """

    def lane(lr):
        optimizer = jt.sgd(lr)
        step = jt.train_step(loss_fn, optimizer)

        def body(carry, _):
            p, state, loss = step(*carry, batch)
            return (p, state), (loss, ravel_pytree(p)[0])

        _, out = lax.scan(body, (params, optimizer.init(params)), None, length=num_steps)
        return out

    return jax.vmap(lane)(lrs)


@functools.lru_cache(maxsize=None)
def _compiled_grad(loss_fn: Callable) -> Callable:
    return jax.jit(jax.grad(loss_fn))


def _newton_minimum(loss_fn: Callable, params, batch, steps: int = 1):
    """Newton steps with the exact Hessian (one step is exact for a quadratic)."""
    flat, unravel = ravel_pytree(params)
    flat = np.asarray(flat, np.float64)
    for _ in range(steps):
        p = unravel(jnp.asarray(flat, F64))
        matrix = np.asarray(hessian.hessian_matrix(loss_fn, p, batch), np.float64)
        g = np.asarray(ravel_pytree(_compiled_grad(loss_fn)(p, batch))[0], np.float64)
        flat = flat - np.linalg.solve(matrix, g)
    return unravel(jnp.asarray(flat, F64))


def _steps_to(rate: float, factor: float = 1e-6) -> float:
    """Steps for an error shrinking by ``rate`` per step to fall by ``factor`` (inf: rate >= 1)."""
    if rate >= 1.0:
        return math.inf
    if rate <= 0.0:
        return 1.0
    return max(1.0, math.log(factor) / math.log(rate))


def _finite(values) -> list:
    """A JSON-friendly list: non-finite entries become None."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64).ravel()]


# --- the learning-rate limit ---------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _mlp_loss(widths: tuple[int, ...], activation: str, outputs: int, loss: str,
              batch_norm: bool = False, residual: bool = False):
    """``(model, loss_fn)`` for a ``dense -> [batch_norm] -> activation`` MLP, cached.

    Hidden layer ``i >= 1`` of equal width is wrapped in ``nn.residual`` when
    ``residual``. Batch norm runs in training mode: the statistics of the
    batch the loss is given (the whole training set here) are part of the
    function, so the loss is deterministic and has one Hessian.
    ``loss``: ``"ce"`` (softmax cross-entropy) or ``"mse"`` (one-hot targets).
    """
    layers, previous = [], None
    for width in widths:
        block = [nn.dense(width)] + ([nn.batch_norm()] if batch_norm else [])
        block = nn.serial(*block, nn.activation(activation))
        layers.append(nn.residual(block) if residual and width == previous else block)
        previous = width
    model = nn.serial(*layers, nn.dense(outputs))

    def loss_fn(params, batch):
        x, labels = batch
        out, _ = model.apply(params, x, state=None, train=True)
        if loss == "ce":
            return losses.softmax_cross_entropy(out, labels)
        return losses.mse(out, jax.nn.one_hot(labels, outputs, dtype=out.dtype))

    return model, loss_fn


# One optimiser object, so that every learning rate reuses one compiled training loop: gradient
# descent with step lr on L is gradient descent with step 1 on lr * L (:func:`_scaled_mse_mlp`).
UNIT_SGD = jt.sgd(1.0)


@functools.lru_cache(maxsize=None)
def _scaled_mse_mlp(hidden: int):
    """``(model, loss_fn)``: a tanh MLP ``64 -> hidden -> 10``, ``loss_fn(p, (x, labels, lr))``.

    The loss is ``lr * MSE`` (one-hot targets), ``lr`` given per example
    (all equal), so a unit step on it is a step ``lr`` on the MSE and its
    sharpness is ``lr * lambda_max``.
    """
    model, _ = _mlp_loss((hidden,), "tanh", 10, "mse")

    def loss_fn(params, batch):
        x, labels, lr = batch
        out, _ = model.apply(params, x)
        targets = jax.nn.one_hot(labels, 10, dtype=out.dtype)
        return jnp.mean(lr * losses.mse(out, targets, reduction="none"))

    return model, loss_fn


def _catapult(ctx, hidden: int, n: int, steps: int, factors: tuple[float, ...]) -> dict:
    """Full-batch GD of a digits MLP (MSE) at ``factor * 2 / lambda_max(init)``, sharpness tracked.

    A first run at a tiny rate measures ``lambda_max`` at init (its first
    record); every run is ``jdl.hessian.track_sharpness`` of one compiled loop.
    """
    k_init, k_lanczos = jax.random.split(ctx.key("opt.ill-conditioned-lr/net"))
    x, y = _split(ctx, "digits", n, jnp.float32)
    model, loss_fn = _scaled_mse_mlp(hidden)
    params = _init(model, k_init, 64, dtype=jnp.float32)
    every = max(1, steps // 40)

    def track(lr):
        run = hessian.track_sharpness(
            loss_fn, params, (x, y, jnp.full(y.shape, lr, jnp.float32)), UNIT_SGD,
            num_steps=steps, every=every, key=k_lanczos)
        return run.steps, run.sharpness / lr, run.losses / lr

    probe = 1e-3
    lam0 = float(track(probe)[1][0])
    runs = {}
    for factor in factors:
        lr = factor * 2.0 / lam0
        try:
            at, sharp, loss_path = track(lr)
        except ValueError:
            runs[factor] = {"lr": lr, "diverged": True}
            continue
        runs[factor] = {"lr": lr, "diverged": False, "steps": at, "sharpness": sharp,
                        "sharpness_max": float(sharp.max()), "sharpness_final": float(sharp[-1]),
                        "final_sharpness_over_limit": float(sharp[-1] * lr / 2.0),
                        "loss_ratio": float(loss_path[-1] / loss_path[0])}
    return {"lambda_max_init": lam0, "n": int(x.shape[0]), "hidden": hidden, "steps": steps,
            "runs": runs}


def _plot_lr_limit(ctx, problems: dict, net: dict | None) -> str:
    import matplotlib.pyplot as plt

    panels = len(problems) + (net is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.3))
    for ax, (title, prob) in zip(axes, problems.items()):
        for factor, curve in zip(prob["factors"], prob["excess"]):
            curve = np.asarray(curve, np.float64)
            curve = np.where(np.isfinite(curve), curve, np.nan)
            ax.semilogy(np.clip(curve, 1e-30, 1e30), lw=1,
                        label=f"lr = {factor:g} x 2/λmax", ls="--" if factor > 1 else "-")
        ax.set_ylim(1e-12, 1e8)
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel("(L - L*) / (L0 - L*)")
        ax.set_title(f"{title}: κ = {prob['kappa']:.2g}", fontsize=9)
        ax.legend(fontsize=6)
    if net is not None:
        ax = axes[-1]
        for factor, run in net["runs"].items():
            if run["diverged"]:
                continue
            line, = ax.plot(run["steps"], run["sharpness"], label=f"{factor:g} x 2/λ0")
            ax.axhline(2.0 / run["lr"], color=line.get_color(), ls=":", lw=1)
        ax.axhline(net["lambda_max_init"], color="gray", lw=0.8, label="λmax at init")
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel("sharpness λmax (dotted: 2/lr)")
        ax.set_title(f"digits MLP 64-{net['hidden']}-10, full batch", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return ctx.save_figure(fig, "opt_ill_conditioned_lr")


@study("opt.ill-conditioned-lr", SECTION,
       "If the hessian is ill-conditioned set the learning rate to something low, it will slow "
       "down our learning but its better than the bouncing effect caused by the discrepancy of "
       "its eigenvalues")
def ill_conditioned_lr(ctx, dataset="diabetes", preprocess="raw",
                       factors=(0.25, 0.9, 0.99, 1.01, 1.1), network=True):
    """Gradient descent on exact quadratics (linear regression) around ``2 / lambda_max``.

    Also, unless ``network`` is False, a small network trained above its
    initial limit: its Hessian is not fixed, and full-batch GD can lower the
    sharpness to ``2 / lr`` instead of diverging (Cohen et al., ICLR 2021).
    """
    steps = ctx.pick(300, 2000, 5000)
    x, t = _split(ctx, dataset)
    problems, numbers = {}, {}
    for label, how in dict.fromkeys([(preprocess, preprocess), ("standardize", "standardize")]):
        xp = _preprocess(x, how)
        batch = (xp, t)
        p0 = _zeros_linear(x.shape[1])
        values, vectors = _eigh(_linear_mse, p0, batch)
        lam_max, lam_min = float(values[-1]), float(values[0])
        p_star = _newton_minimum(_linear_mse, p0, batch)
        w_star, _ = ravel_pytree(p_star)
        loss_star = float(_linear_mse(p_star, batch))
        lrs = jnp.asarray(factors, F64) * 2.0 / lam_max
        with np.errstate(over="ignore", invalid="ignore"):
            loss_path, path = (np.asarray(a, np.float64) for a in _gd_paths(
                _linear_mse, p0, batch, lrs, steps))
            excess = (loss_path - loss_star) / (loss_path[:, :1] - loss_star)
            err = path - np.asarray(w_star)
            top = err @ vectors[:, -1]
            bottom = err @ vectors[:, 0]
        final = excess[:, -1]
        bounce = [float(np.mean(np.sign(top[i, 1:30]) != np.sign(top[i, :29])))
                  for i in range(len(factors))]
        best = max(i for i, f in enumerate(factors) if f < 1)
        lr_best = float(lrs[best])
        slow_rate = abs(1.0 - lr_best * lam_min)
        problems[label] = {"factors": list(factors), "excess": excess, "kappa": lam_max / lam_min}
        numbers[label] = {
            "lambda_max": lam_max, "lambda_min": lam_min, "condition_number": lam_max / lam_min,
            "stable_limit": 2.0 / lam_max, "factors": list(factors),
            "final_excess_fraction": _finite(final),
            "top_direction_sign_flip_fraction": bounce,
            "slow_direction_rate_theory": slow_rate,
            "slow_direction_rate_measured": float(
                (abs(bottom[best, -1]) / abs(bottom[best, 0])) ** (1.0 / (steps - 1))),
            "steps_to_shrink_slowest_1e3": _steps_to(slow_rate, 1e-3)}
    main = numbers[preprocess]
    below = [i for i, f in enumerate(factors) if f < 1]
    above = [i for i, f in enumerate(factors) if f > 1]
    finals = np.asarray([np.nan if v is None else v for v in main["final_excess_fraction"]])
    converge = all(np.isfinite(finals[i]) and finals[i] < 1 for i in below)
    diverge = all(not np.isfinite(finals[i]) or finals[i] > 100 for i in above)
    bounces = all(main["top_direction_sign_flip_fraction"][i] > 0.9
                  for i in below if 0.5 < factors[i])
    slow = main["condition_number"] > 1e3 and main["steps_to_shrink_slowest_1e3"] > 10 * steps
    net = _catapult(ctx, ctx.pick(16, 32, 64), ctx.pick(200, 500, 1000), ctx.pick(150, 600, 3000),
                    ctx.pick((2.0,), (0.5, 2.0), (0.5, 1.5, 2.0, 3.0))) if network else None
    net_survives = net is not None and any(
        not run["diverged"] and f > 1 and run["loss_ratio"] < 1 for f, run in net["runs"].items())
    if not (converge and diverge and bounces):
        verdict = FAILS
    elif slow and not net_survives:
        verdict = HOLDS
    else:
        verdict = CAVEAT
    if net is not None:  # the sharpness traces are in the figure
        numbers["network"] = net | {"runs": {
            str(f): {k: v for k, v in run.items() if k not in ("steps", "sharpness")}
            for f, run in net["runs"].items()}}
    caveat = ""
    if verdict == FAILS:
        caveat = "Gradient descent did not switch from converging to diverging at 2/λmax here."
    elif not slow:
        caveat = (f"This problem is well conditioned (κ = {main['condition_number']:.3g}): the "
                  "limit 2/λmax holds, but the largest stable rate is not slow.")
    elif net_survives:
        above_net = [f for f, run in net["runs"].items() if f > 1 and not run["diverged"]]
        run = net["runs"][above_net[0]]
        caveat = (
            "Exact for a fixed (quadratic) Hessian: lr <= 2/λmax, then the slow directions "
            "shrink by (1 - lr λmin) per step. A network's Hessian moves: full-batch GD at "
            f"{above_net[0]:g} x 2/λmax(init) did not diverge; the sharpness fell from "
            f"{above_net[0]:g} x 2/lr at init to {run['final_sharpness_over_limit']:.2f} x 2/lr "
            "(catapult, then the edge of stability, Cohen et al. 2021) and the loss fell to "
            f"{run['loss_ratio']:.2g} of its start.")
    figure = _plot_lr_limit(ctx, problems, net)
    return Finding(
        verdict=verdict,
        summary=f"{dataset} ({preprocess}) κ = {main['condition_number']:.3g}: converges below "
                f"2/λmax, diverges above ({'yes' if converge and diverge else 'no'}); at "
                f"{factors[max(below)]:g} x 2/λmax the slowest direction needs "
                f"{main['steps_to_shrink_slowest_1e3']:.3g} steps to shrink 1000x",
        method=f"linear regression (MSE) on the {dataset} training split, inputs {preprocess} and "
               "standardised, exact Hessian (float64); full-batch GD from w = 0 for "
               f"{steps} steps at lr = factor x 2/λmax, factors {list(factors)}; the error "
               "along the top and bottom eigenvectors. "
               + ("A tanh MLP on digits (MSE) trained by full-batch GD above its initial limit, "
                  "sharpness by Lanczos." if network else ""),
        numbers=numbers,
        threshold="does not hold unless every lr below 2/λmax converges, every lr above ends "
                  "with > 100x the initial excess loss, and the top-eigenvector error flips sign "
                  "every step for 1/λmax < lr < 2/λmax (bouncing); holds if moreover κ > 1e3 "
                  "and the slowest direction needs > 10x the run's steps to shrink 1000x at the "
                  "largest stable rate, and no network trained above its initial limit",
        caveat=caveat, figures=[figure])


# --- the notes' "best learning rate" -------------------------------------------------------------


def _default_rate_problems() -> dict:
    lambdas = np.logspace(-2, 0, 20)
    return {"quadratic, λ in [0.01, 1]": lambdas,
            "the same x 500, λ in [5, 500]": 500 * lambdas,
            "diabetes linear regression (standardised)": ("diabetes", "standardize")}


def _rate_problem(ctx, spec) -> tuple[Callable, dict, tuple]:
    """``(loss_fn, params0, batch)`` for a spectrum (quadratic) or a ``(dataset, preprocess)``."""
    if isinstance(spec, tuple):
        x, t = _split(ctx, spec[0])
        return _linear_mse, _zeros_linear(x.shape[1]), (_preprocess(x, spec[1]), t)
    lambdas = jnp.asarray(spec, F64)
    return _quadratic, {"w": jnp.zeros_like(lambdas)}, (lambdas, jnp.ones_like(lambdas))


@study("opt.best-lr", SECTION, "Ideally the best learning rate is 0.99x alpha_min / alpha_max")
def best_lr(ctx, problems=None):
    """The notes' rate ``0.99 lambda_min / lambda_max`` against ``2 / (lambda_min + lambda_max)``.

    ``problems``: ``{name: spectrum array (a quadratic) or (dataset, preprocess)}``
    (linear regression). Contraction per step ``max_i |1 - lr lambda_i|`` from
    the exact spectrum, and measured by full-batch gradient descent.
    """
    problems = _default_rate_problems() if problems is None else problems
    steps = ctx.pick(300, 2000, 5000)
    numbers, curves = {}, {}
    for name, spec in problems.items():
        loss_fn, p0, batch = _rate_problem(ctx, spec)
        values, _ = _eigh(loss_fn, p0, batch)
        lam_min, lam_max = float(values[0]), float(values[-1])
        rates = hessian.learning_rates(lam_max, lam_min)
        lrs = {"notes 0.99 λmin/λmax": 0.99 * lam_min / lam_max,
               "2/(λmin+λmax)": rates.optimal_step, "1/λmax": 1.0 / lam_max}
        p_star, _ = ravel_pytree(_newton_minimum(loss_fn, p0, batch))
        _, path = _gd_paths(loss_fn, p0, batch, jnp.asarray(list(lrs.values()), F64), steps)
        with np.errstate(over="ignore", invalid="ignore"):
            err = np.linalg.norm(np.asarray(path, np.float64) - np.asarray(p_star), axis=-1)
            err0 = float(np.linalg.norm(ravel_pytree(p0)[0] - p_star))
            half = steps // 2
            measured = (err[:, -1] / err[:, half - 1]) ** (1.0 / (steps - half))
        theory = [float(np.max(np.abs(1.0 - lr * values))) for lr in lrs.values()]
        need = [_steps_to(r) for r in theory]
        numbers[name] = {
            "lambda_min": lam_min, "lambda_max": lam_max, "condition_number": lam_max / lam_min,
            "learning_rates": dict(zip(lrs, map(float, lrs.values()))),
            "rate_theory": dict(zip(lrs, theory)),
            "rate_measured": dict(zip(lrs, _finite(measured))),
            "steps_to_1e-6": dict(zip(lrs, _finite(need))),
            "notes_over_optimal_steps": need[0] / need[1]}
        curves[name] = {label: np.concatenate([[1.0], err[i] / err0])
                        for i, label in enumerate(lrs)}
    slowdown = [v["notes_over_optimal_steps"] for v in numbers.values()]
    for v in numbers.values():
        v["notes_over_optimal_steps"] = _finite([v["notes_over_optimal_steps"]])[0]
    worst = max(slowdown)
    verdict = HOLDS if worst <= 1.1 else CAVEAT if worst <= 2 else FAILS
    figure = _plot_rates(ctx, curves, numbers)
    diverged = [n for n, v in numbers.items() if v["notes_over_optimal_steps"] is None]
    return Finding(
        verdict=verdict,
        summary="steps to shrink the error 1e6x, notes' rate / 2/(λmin+λmax): "
                + ", ".join("diverges" if not math.isfinite(s) else f"{s:.3g}x"
                            for s in slowdown),
        method="gradient descent on quadratics with known spectra and on linear regression "
               "(MSE, exact Hessian), at the notes' lr = 0.99 λmin/λmax, the optimal fixed step "
               "2/(λmin+λmax) and 1/λmax; the contraction max_i |1 - lr λ_i| from the spectrum "
               f"and measured over {steps} steps (error norm, second half).",
        numbers=numbers,
        threshold="holds if on every problem the notes' rate needs at most 1.1x the steps of "
                  "2/(λmin+λmax) to shrink the error 1e6x; caveat up to 2x; does not hold "
                  "beyond 2x or if it diverges",
        caveat="" if verdict == HOLDS else
        "A ratio of eigenvalues has no units, a learning rate has units of 1/curvature: "
        "scaling the loss by c scales the right rate by 1/c but leaves 0.99 λmin/λmax unchanged. "
        "With λmax ~ 1 it is ~2κ times smaller than the optimum (about κ² instead of κ/2 "
        "steps per e-fold of the slowest direction)"
        + (f" and diverges on {diverged[0]!r} (it exceeds 2/λmax)" if diverged else "")
        + ". The best fixed step is 2/(λmin+λmax) (contraction (κ-1)/(κ+1)); any lr < 2/λmax "
        "converges.",
        figures=[figure])


def _plot_rates(ctx, curves: dict, numbers: dict) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.0 * len(curves), 3.2), squeeze=False)
    for ax, (name, lines) in zip(axes[0], curves.items()):
        for label, curve in lines.items():
            curve = np.where(np.isfinite(curve), curve, np.nan)
            ax.semilogy(np.clip(curve, 1e-30, 1e30), lw=1.2, label=label)
        ax.set_ylim(1e-12, 1e6)
        ax.set_title(f"{name}\nκ = {numbers[name]['condition_number']:.3g}", fontsize=8)
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel("||w - w*|| / ||w0 - w*||")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return ctx.save_figure(fig, "opt_best_lr")


# --- centring and whitening the inputs -----------------------------------------------------------

RIDGE = 0.1  # the logistic fit's L2 penalty (the breast-cancer training split is separable)


def _logistic_ridge(params, batch):
    return _logistic(params, batch) + 0.5 * RIDGE * jnp.sum(jnp.square(params["w"]))


def _logistic_at(x, t, logits) -> dict:
    """Logistic-regression params on inputs ``x`` reproducing ``logits`` (least squares, exact)."""
    design = np.concatenate([np.asarray(x, np.float64), np.ones((x.shape[0], 1))], axis=1)
    theta, *_ = np.linalg.lstsq(design, np.asarray(logits, np.float64), rcond=None)
    return {"w": jnp.asarray(theta[:-1], F64), "b": jnp.asarray(theta[-1], F64)}


@functools.lru_cache(maxsize=8)
def _input_spectra(mode: str, seed: int, already: str, hidden: int, n_mlp: int) -> dict:
    """Exact Hessian spectra for raw, centred, standardised and whitened inputs.

    Three problems: linear regression on diabetes (the Hessian is
    ``2 E[x~ x~^T]`` at any point), logistic regression on breast cancer at
    one fixed function (an L2-regularised fit on standardised inputs,
    re-expressed in each input coordinate system so the predictions are the
    same), and a tanh MLP ``64 -> hidden -> 10`` on digits at initialisation
    (softmax cross-entropy, the same weights for every input). ``already``
    preprocesses the inputs first (``"raw"``: nothing), to feed the study
    data that are already centred or whitened.
    """
    del mode  # part of the cache key only
    out: dict = {}
    x, t = _split(seed, "diabetes")
    base = _preprocess(x, already)
    out["diabetes linear regression"] = {
        how: _eigh(_linear_mse, _zeros_linear(x.shape[1]), (_preprocess(base, how), t))[0]
        for how in PREPROCESSING}
    x, t = _split(seed, "breast_cancer")
    base = _preprocess(x, already)
    xs = _preprocess(base, "standardize")
    fit = _newton_minimum(_logistic_ridge, _zeros_linear(x.shape[1]), (xs, t), steps=8)
    logits = xs @ fit["w"] + fit["b"]
    out["breast-cancer logistic regression"] = {}
    for how in PREPROCESSING:
        xp = _preprocess(base, how)
        out["breast-cancer logistic regression"][how] = _eigh(
            _logistic, _logistic_at(xp, t, logits), (xp, t))[0]
    x, y = _split(seed, "digits", n_mlp)
    base = _preprocess(x, already)
    model, loss_fn = _mlp_loss((hidden,), "tanh", 10, "ce")
    params = _init(model, jax.random.fold_in(jax.random.key(seed), 6), 64)
    out["digits MLP"] = {how: _eigh(loss_fn, params, (_preprocess(base, how), y))[0]
                         for how in PREPROCESSING}
    return out


def _spectra(ctx, already: str) -> tuple[dict, dict, str]:
    """``(spectra, conditioning numbers, method text)`` of :func:`_input_spectra` for ``ctx``."""
    hidden, n_mlp = ctx.pick(4, 8, 16), ctx.pick(150, 400, 1078)
    spectra = _input_spectra(ctx.mode, ctx.seed, already, hidden, n_mlp)
    numbers = {problem: {how: _conditioning(values, definite="MLP" not in problem)
                         for how, values in per.items()}
               for problem, per in spectra.items()}
    method = ("exact Hessians (float64, numpy eigh) for inputs raw, centred, standardised and "
              "ZCA-whitened (statistics of the training split): linear regression on diabetes "
              "(MSE), logistic regression on breast cancer at one fixed function (an L2 fit, "
              f"lambda {RIDGE:g}, on standardised inputs re-expressed in each coordinate "
              f"system), a tanh MLP 64-{hidden}-10 on {n_mlp} digits at initialisation (softmax "
              "cross-entropy; indefinite, so its bulk spread λmax/median|λ| is compared)"
              + ("" if already == "raw" else f"; inputs {already} beforehand") + ".")
    return spectra, numbers, method


def _plot_input_spectra(ctx, spectra: dict, shown: tuple[str, ...], name: str) -> str:
    """Eigenvalues of the convex problems (log scale) and the MLP's exact spectral density."""
    import matplotlib.pyplot as plt
    from jdl.hessian.density import broaden

    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.3))
    for ax, problem in zip(axes[:2], [p for p in spectra if "MLP" not in p]):
        for row, how in enumerate(shown):
            values = np.asarray(spectra[problem][how])
            ax.plot(values[values > 0], np.full((values > 0).sum(), row), "|", ms=14, mew=1.2)
        ax.set_xscale("log")
        ax.set_yticks(range(len(shown)), [
            f"{how}\nκ {_conditioning(spectra[problem][how], True)['condition_number']:.2g}"
            for how in shown], fontsize=8)
        ax.set_xlabel("Hessian eigenvalue")
        ax.set_title(problem, fontsize=9)
    ax = axes[2]
    values = {how: np.asarray(spectra["digits MLP"][how]) for how in shown}
    lo = min(v.min() for v in values.values())
    hi = max(v.max() for v in values.values())
    grid = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 800)
    for how, v in values.items():
        density = broaden(v[None], np.full((1, v.size), 1.0 / v.size), grid, 0.01 * (hi - lo))
        ax.semilogy(grid, np.maximum(density, 1e-6), label=how, lw=1.1)
    ax.set_ylim(bottom=1e-4)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density (exact, broadened)")
    ax.set_title("digits MLP at init", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return ctx.save_figure(fig, name)


def _fmt_kappa(c: dict) -> str:
    return f"{c['condition_number']:.2g}"


@study("opt.center-data", SECTION,
       "Since the hessian is highly correlated to the mean and covariance of the data, we wanna "
       "set them as low as possible in order to lower the contribution of the hessian onto our "
       "gradient estimation, aka center the data")
def center_data(ctx, already="raw"):
    """Condition numbers of exact Hessians with raw against centred inputs (LeCun et al. 1998).

    ``already``: preprocess the inputs first (e.g. ``"center"``: nothing left to gain).
    """
    spectra, numbers, method = _spectra(ctx, already)
    convex = [p for p in numbers if "MLP" not in p]
    gains = {p: numbers[p]["raw"]["condition_number"] / numbers[p]["center"]["condition_number"]
             for p in convex}
    mlp = numbers["digits MLP"]
    mlp_gain = mlp["raw"]["spread"] / mlp["center"]["spread"]
    convex_ok = all(g > 2 for g in gains.values())
    verdict = HOLDS if convex_ok and mlp_gain > 2 else CAVEAT if convex_ok or mlp_gain > 2 \
        else FAILS
    still = {p: numbers[p]["center"]["condition_number"] / numbers[p]["standardize"][
        "condition_number"] for p in convex}
    figure = _plot_input_spectra(ctx, spectra, ("raw", "center", "standardize"),
                                 "opt_center_data")
    caveat = ""
    if verdict == CAVEAT:
        caveat = ("Centring lowered the condition number of the convex problems only; the MLP's "
                  f"spread changed {mlp_gain:.2g}x." if convex_ok else
                  "Centring helped the MLP but not every convex problem.")
    elif verdict == FAILS:
        caveat = ("Centring did not lower the condition number here"
                  + (" (the inputs were already centred)." if already != "raw" else "."))
    return Finding(
        verdict=verdict,
        summary="κ raw -> centred: " + "; ".join(
            f"{p.split()[0]} {_fmt_kappa(numbers[p]['raw'])} -> "
            f"{_fmt_kappa(numbers[p]['center'])}" for p in convex)
        + f"; MLP spread {mlp['raw']['spread']:.3g} -> {mlp['center']['spread']:.3g}",
        method=method,
        numbers={"conditioning": numbers, "centring_gain": gains, "mlp_spread_gain": mlp_gain,
                 "centred_over_standardised": still},
        threshold="holds if centring lowers κ more than 2x on both convex problems and the MLP's "
                  "spread more than 2x; caveat if only one kind; does not hold otherwise",
        caveat=caveat, figures=[figure])


@study("opt.whiten-data", SECTION,
       "use some sort of covariance equalization to map it closer to the identity")
def whiten_data(ctx, already="raw", problems=None):
    """Whitened against standardised inputs: is the Hessian brought to (a multiple of) the identity?

    ``problems``: restrict the verdict to these problem names (default all).
    """
    spectra, numbers, method = _spectra(ctx, already)
    problems = tuple(problems or numbers)
    key = {p: "spread" if "MLP" in p else "condition_number" for p in problems}
    identity = {p: numbers[p]["whiten"][key[p]] for p in problems}
    standardised = {p: numbers[p]["standardize"][key[p]] for p in problems}
    better = {p: identity[p] < standardised[p] for p in problems}
    at_identity = {p: identity[p] < 1.01 and numbers[p]["whiten"]["negative_mass"] == 0
                   for p in problems}
    verdict = HOLDS if all(at_identity.values()) else CAVEAT if any(at_identity.values()) or \
        all(better.values()) else FAILS
    figure = _plot_input_spectra(ctx, spectra, ("raw", "standardize", "whiten"), "opt_whiten_data")
    caveat = ""
    if verdict != HOLDS:
        far = [p for p in problems if not at_identity[p]]
        caveat = (
            "Whitening makes E[x x^T] = I, so the Hessian of a linear model with squared loss "
            "becomes a multiple of the identity (κ = 1). For "
            + ", ".join(f"{p} ({'spread' if 'MLP' in p else 'κ'} {identity[p]:.3g}, "
                        f"negative mass {numbers[p]['whiten']['negative_mass']:.2f})"
                        for p in far)
            + " it does not: the Hessian also weights examples by the loss curvature (logistic "
            "p(1-p)) and, in a network, depends on the weights and activations of every layer, "
            "which input whitening does not touch.")
    return Finding(
        verdict=verdict,
        summary="standardised -> whitened: " + "; ".join(
            f"{p.split()[0]} {'spread' if 'MLP' in p else 'κ'} {standardised[p]:.3g} -> "
            f"{identity[p]:.3g}" for p in problems),
        method=method,
        numbers={"conditioning": numbers, "whitened": identity, "standardised": standardised,
                 "whitened_better_than_standardised": better},
        threshold="holds if whitening brings every Hessian within 1% of a multiple of the "
                  "identity (κ, or the MLP's spread λmax/median|λ|, below 1.01, no negative "
                  "eigenvalues); caveat if some, or if it beats standardising everywhere; does "
                  "not hold otherwise",
        caveat=caveat, figures=[figure])


# --- layer blocks: activations, widths, batch norm, skip connections ----------------------------


def _layer_slices(params) -> dict[str, slice]:
    """Index range of each top-level sub-tree (layer) in the ``ravel_pytree`` vector."""
    slices, start = {}, 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = str(path[0].key)
        lo = slices[name].start if name in slices else start
        start += int(np.size(leaf))
        slices[name] = slice(lo, start)
    return slices


def _layer_order(names) -> list[str]:
    """Layer names in model order (``"10_dense"`` after ``"2_serial"``)."""
    return sorted(names, key=lambda n: int(n.split("_")[0]))


def _hessian_blocks(loss_fn, params, batch, spectrum: bool = True) -> dict:
    """The exact Hessian's spectrum and per-layer diagonal blocks and their coupling.

    Returns:
      ``{"values": eigenvalues (None unless spectrum), "blocks": {layer: block
      eigenvalues}, "coupling": ||off-diagonal blocks||_F / ||H||_F}``.
    """
    matrix = np.asarray(hessian.hessian_matrix(loss_fn, params, batch), np.float64)
    matrix = 0.5 * (matrix + matrix.T)
    slices = _layer_slices(params)
    blocks, diagonal = {}, np.zeros_like(matrix)
    for name in _layer_order(slices):
        sl = slices[name]
        blocks[name] = np.linalg.eigvalsh(matrix[sl, sl])
        diagonal[sl, sl] = matrix[sl, sl]
    coupling = float(np.linalg.norm(matrix - diagonal) / np.linalg.norm(matrix))
    return {"values": np.linalg.eigvalsh(matrix) if spectrum else None, "blocks": blocks,
            "coupling": coupling}


def _hidden_statistics(model: nn.Layer, params, x) -> dict:
    """Per hidden layer: mean ``|E[.]|`` and variance of the dense output and of the layer's output.

    Each statistic is the mean over units of the per-unit statistic over the
    examples, shape ``(layers,)``. Layers run in training mode (batch norm with
    the batch's statistics), as in the losses of :func:`_mlp_loss`. Jittable.
    """
    out = {"pre_mean": [], "pre_var": [], "out_mean": [], "out_var": []}
    h = x
    for name, layer in zip(model.names[:-1], model.children[:-1]):
        inner, p = (layer.children[0], params[name]["block"]) if layer.kind == "residual" \
            else (layer, params[name])
        z, _ = inner.children[0].apply(p["0_dense"], h)
        h, _ = layer.apply(params[name], h, state=None, train=True)
        out["pre_mean"].append(jnp.mean(jnp.abs(jnp.mean(z, 0))))
        out["pre_var"].append(jnp.mean(jnp.var(z, 0)))
        out["out_mean"].append(jnp.mean(jnp.abs(jnp.mean(h, 0))))
        out["out_var"].append(jnp.mean(jnp.var(h, 0)))
    return {k: jnp.stack(v) for k, v in out.items()}


_COMPILED: dict = {}


def _model_jit(fn: Callable, model: nn.Layer, vmapped: bool = False) -> Callable:
    """``jit(partial(fn, model))`` (vmapped over stacked params), compiled once per model.

    The cached models of :func:`_mlp_loss` are reused across studies, so are these.
    """
    key = (fn.__name__, id(model), vmapped)
    if key not in _COMPILED:  # the model is kept alive by the cache entry
        bound = functools.partial(fn, model)
        _COMPILED[key] = (model, jax.jit(jax.vmap(bound, in_axes=(0, None)) if vmapped
                                         else bound))
    return _COMPILED[key][1]


def _statistics_over_inits(model: nn.Layer, params_list: list, x) -> dict:
    """:func:`_hidden_statistics` of several inits in one compiled call: ``(inits, layers)``."""
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params_list)
    return {k: np.asarray(v, np.float64)
            for k, v in _model_jit(_hidden_statistics, model, vmapped=True)(stacked, x).items()}


def _signal_norms(model: nn.Layer, params, x, labels) -> jax.Array:
    """``||dL / dh_l||`` for each hidden layer's output ``h_l`` (the back-propagated signal).

    The gradient of the softmax cross-entropy with respect to a perturbation
    added to each hidden layer's output, at zero perturbation; shape ``(layers,)``.
    """
    names, layers = model.names, model.children

    def loss_of(perturbations):
        h = x
        for name, layer, delta in zip(names[:-1], layers[:-1], perturbations):
            h = layer.apply(params[name], h, state=None, train=True)[0] + delta
        return losses.softmax_cross_entropy(layers[-1].apply(params[names[-1]], h)[0], labels)

    shapes, h = [], x
    for name, layer in zip(names[:-1], layers[:-1]):
        h = layer.apply(params[name], h, state=None, train=True)[0]
        shapes.append(jnp.zeros_like(h))
    return jnp.stack([jnp.linalg.norm(g) for g in jax.grad(loss_of)(shapes)])


def _digits_standardized(ctx, n: int):
    """``n`` digits training examples, standardised (std floored at 0.1: constant pixels)."""
    x, y = _split(ctx, "digits", n)
    return data.fit_standardize(x, eps=0.1)(x), y


def _init(model: nn.Layer, key, features: int, gain: float = 1.0, dtype=F64):
    """Model params: LeCun-normal kernels times ``gain``, zero biases, unit batch-norm scales.

    The kernels are ``N(0, gain^2 / fan_in)`` drawn with numpy from ``key``
    (the variance of ``jdl.nn.initializers.lecun_normal``, untruncated):
    jax's truncated normal costs seconds of compilation per model on CPU,
    more than these studies' measurements.
    """
    shapes = jax.eval_shape(lambda k: model.init(k, (-1, features), dtype)[1], key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def leaf(path, shape):
        name = str(path[-1].key)
        if name == "w":
            fill = gain * rng.standard_normal(shape.shape) / math.sqrt(shape.shape[0])
        else:
            fill = np.full(shape.shape, 1.0 if name == "scale" else 0.0)
        return jnp.asarray(fill, shape.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _block_top(blocks: dict) -> dict:
    return {name: float(values[-1]) for name, values in blocks.items()}


def _spread_of(values) -> float:
    values = np.asarray(list(values), np.float64)
    return float(values.max() / values.min())


@study("opt.centered-activations", SECTION,
       "It is not enough to center the data we also have to normalize the data after every "
       "activation or by choosing activations that normalize the data for us (centered "
       "activations)")
def centered_activations(ctx, centred="tanh", uncentred="sigmoid"):
    """Centred (tanh) against uncentred (sigmoid) hidden units, with centred inputs.

    LeCun et al. 1998: a layer fed non-zero-mean inputs has a Hessian block
    with one large eigenvalue (the mean direction). With the MSE loss the
    output layer's block is exactly ``(2 / (n C)) I_C (x) sum h~ h~^T``, so its
    condition number is that of the last hidden layer's second moment.
    """
    n, width, depth = ctx.pick(150, 300, 1078), ctx.pick(6, 8, 16), ctx.pick(2, 3, 4)
    steps = ctx.pick(100, 400, 2000)
    x, y = _digits_standardized(ctx, n)
    key = ctx.key("opt.centered-activations")
    numbers, curves = {}, {}
    for act in (centred, uncentred):
        model, loss_fn = _mlp_loss((width,) * depth, act, 10, "mse")
        params = _init(model, key, 64)
        h = _hessian_blocks(loss_fn, params, (x, y))
        names = list(h["blocks"])
        stats = {k: v[0] for k, v in _statistics_over_inits(model, [params], x).items()}
        cond = {name: _conditioning(h["blocks"][name], definite=name == names[-1])
                for name in names[1:]}
        lr = 1.0 / float(h["values"][-1])
        loss_path, _ = _gd_paths(loss_fn, params, (x, y), jnp.asarray([lr], F64), steps)
        curves[act] = np.asarray(loss_path[0], np.float64)
        numbers[act] = {
            "hidden_mean_abs": stats["out_mean"].tolist(), "hidden_var": stats["out_var"].tolist(),
            "output_block_kappa": cond[names[-1]]["condition_number"],
            "deeper_block_spread": {k: v["spread"] for k, v in cond.items()},
            "lambda_max": float(h["values"][-1]), "lr": lr,
            "loss_start": float(curves[act][0]), "loss_end": float(curves[act][-1])}
    c, u = numbers[centred], numbers[uncentred]
    kappa_gain = u["output_block_kappa"] / c["output_block_kappa"]
    spread_gain = float(np.mean([u["deeper_block_spread"][k] / c["deeper_block_spread"][k]
                                 for k in c["deeper_block_spread"]]))
    faster = c["loss_end"] < u["loss_end"]
    curvature_ok = kappa_gain > 2 and spread_gain > 1
    verdict = HOLDS if curvature_ok and faster else CAVEAT if curvature_ok or faster else FAILS
    figure = _plot_activations(ctx, curves, numbers, centred, uncentred, steps)
    return Finding(
        verdict=verdict,
        summary=f"output-layer Hessian block κ {uncentred} {u['output_block_kappa']:.3g} vs "
                f"{centred} {c['output_block_kappa']:.3g} ({kappa_gain:.3g}x); training loss "
                f"after {steps} GD steps at 1/λmax: {u['loss_end']:.3g} vs {c['loss_end']:.3g}",
        method=f"digits ({n} examples, standardised inputs), MLPs "
               f"64-{'-'.join([str(width)] * depth)}-10 with {centred} or {uncentred} hidden "
               "units, MSE on one-hot labels, the same LeCun init; exact Hessian (float64) and "
               f"its per-layer diagonal blocks at init; then {steps} full-batch GD steps at lr = "
               "1/λmax of each net (scale-free comparison). Normalising after every layer is "
               "opt.batchnorm.",
        numbers=numbers | {"output_kappa_gain": kappa_gain, "deeper_spread_gain": spread_gain},
        threshold="holds if the centred net's output-layer block κ is > 2x lower, its deeper "
                  "blocks' spreads are lower on average, and it reaches a lower training loss "
                  "in the same number of GD steps at 1/λmax; "
                  "caveat if only the curvature or only the speed; does not hold otherwise",
        caveat="" if verdict == HOLDS else
        (f"The curvature of the deeper layers is better conditioned with {centred} units "
         f"({kappa_gain:.3g}x), but training at 1/λmax was not faster here." if curvature_ok
         else f"{centred} units trained faster but did not improve the deeper blocks' "
         "conditioning." if faster else
         f"{centred} units neither conditioned the deeper layers better nor trained faster "
         f"than {uncentred}."),
        figures=[figure])


def _plot_activations(ctx, curves, numbers, centred, uncentred, steps) -> str:
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for act in (centred, uncentred):
        ax0.plot(range(1, len(numbers[act]["hidden_mean_abs"]) + 1),
                 numbers[act]["hidden_mean_abs"], "o-", label=act)
        ax1.semilogy(curves[act], label=f"{act} (lr {numbers[act]['lr']:.2g})")
    ax0.set_xlabel("hidden layer")
    ax0.set_ylabel("mean |E[h]| over units")
    ax0.legend(fontsize=7)
    ax1.set_xlabel("full-batch GD step at 1/λmax")
    ax1.set_ylabel("training loss (MSE)")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return ctx.save_figure(fig, "opt_centered_activations")


@study("opt.equal-width", SECTION,
       "Use equal number of neurons per layer to keep the layer hessians on the same scale")
def equal_width(ctx, width=None, unequal=None):
    """Top eigenvalue of each layer's diagonal Hessian block: equal against unequal widths.

    ``unequal``: the unequal designs (default ``(2w, w/2, w)`` and ``(w/2, 2w,
    w)`` against ``(w, w, w)``).
    """
    n, seeds = ctx.pick(150, 300, 1078), ctx.pick(1, 2, 5)
    w = width or ctx.pick(6, 10, 16)
    designs = {"equal": (w, w, w)}
    for widths in unequal or ((2 * w, w // 2, w), (w // 2, 2 * w, w)):
        designs["unequal " + "-".join(map(str, widths))] = tuple(widths)
    x, y = _digits_standardized(ctx, n)
    numbers = {}
    for label, widths in designs.items():
        model, loss_fn = _mlp_loss(widths, "tanh", 10, "ce")
        tops, means = [], []
        for seed in range(seeds):
            params = _init(model, jax.random.fold_in(ctx.key("opt.equal-width"), seed), 64)
            h = _hessian_blocks(loss_fn, params, (x, y), spectrum=False)
            tops.append(list(_block_top(h["blocks"]).values()))
            means.append([float(np.mean(v)) for v in h["blocks"].values()])
        tops = np.exp(np.mean(np.log(np.asarray(tops)), 0))
        numbers[label] = {"widths": list(widths), "block_lambda_max": tops.tolist(),
                          "block_mean_eigenvalue": np.mean(means, 0).tolist(),
                          "spread": _spread_of(tops),
                          "spread_hidden_layers": _spread_of(tops[1:-1])}
    eq = numbers["equal"]["spread"]
    others = {k: v["spread"] for k, v in numbers.items() if k != "equal"}
    better = all(eq < s / 2 for s in others.values())
    verdict = HOLDS if better and eq < 10 else CAVEAT if better else FAILS
    figure = _plot_layer_scales(ctx, numbers)
    return Finding(
        verdict=verdict,
        summary=f"largest/smallest layer-block λmax: equal widths {eq:.3g}x; "
                + ", ".join(f"{k} {s:.3g}x" for k, s in others.items()),
        method=f"digits ({n} examples, standardised), tanh MLPs 64-w1-w2-w3-10 for the widths "
               f"{', '.join('-'.join(map(str, d)) for d in designs.values())}, softmax "
               "cross-entropy, LeCun init; exact Hessian (float64), top eigenvalue of each "
               f"layer's diagonal block (weights and bias), geometric mean over {seeds} init "
               "seed(s).",
        numbers=numbers,
        threshold="holds if equal widths give a > 2x smaller spread (largest/smallest) of the "
                  "layer blocks' top eigenvalues than every unequal design, and under 10x; "
                  "caveat if smaller but not under 10x; does not hold otherwise",
        caveat="" if verdict == HOLDS else
        (f"Equal widths narrow the spread but the layer blocks still differ {eq:.3g}x." if better
         else f"Equal widths did not put the layer Hessians on a more similar scale (spread "
              f"{eq:.3g}x against {', '.join(f'{s:.3g}x' for s in others.values())}).")
        + " The first layer's block is the largest whatever the widths: it sees the "
        "correlated inputs (64 standardised pixels), the others tanh units; block scales follow "
        "the inputs' second moments and fan-in more than equal widths, which is what "
        "per-layer learning rates (LeCun et al. 1998) or normalisation address.",
        figures=[figure])


def _plot_layer_scales(ctx, numbers) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for label, v in numbers.items():
        ax.semilogy(range(1, len(v["block_lambda_max"]) + 1), v["block_lambda_max"], "o-",
                    label=f"64-{'-'.join(map(str, v['widths']))}-10 (spread {v['spread']:.2g}x)")
    ax.set_xlabel("layer")
    ax.set_ylabel("λmax of the layer's Hessian block")
    ax.legend(fontsize=7)
    return ctx.save_figure(fig, "opt_equal_width")


def _bn_numbers(h: dict, stats: dict) -> dict:
    """Hessian numbers of one init and hidden-layer statistics (geometric means over inits)."""
    values = h["values"]
    mean_of = lambda key: np.exp(np.mean(np.log(stats[key]), 0)).tolist()  # noqa: E731
    variances = mean_of("out_var")
    return {"hidden_var": variances, "hidden_mean_abs": mean_of("out_mean"),
            "dense_output_var": mean_of("pre_var"),
            "variance_spread": _spread_of(variances),
            "lambda_max": float(values[-1]),
            "negative_mass": _conditioning(values)["negative_mass"],
            "spread": _conditioning(values)["spread"],
            "block_lambda_max": _block_top(h["blocks"]),
            "block_spread": _spread_of(_block_top(h["blocks"]).values())}


@study("opt.batchnorm", SECTION,
       "Perform batch normalization between layers to keep the data centered and normalized to "
       "reduce the effects of layer hessians, Variance of every layer will be similar if we "
       "center our data! which prevents it from exploding")
def batchnorm(ctx, gains=(1.0, 2.0), activation="relu"):
    """Deep MLPs with and without batch norm after every dense layer, at init.

    The kernels are ``gain`` x LeCun normal: with ReLU, gain 1 (LeCun) shrinks
    the signal layer after layer and gain 2 grows it (He's gain, sqrt 2, keeps
    the second moment). Batch norm runs in training mode with the whole batch's
    statistics, part of the (deterministic) function whose Hessian is taken.
    """
    n, width, depth = ctx.pick(150, 300, 1078), ctx.pick(8, 8, 16), ctx.pick(5, 5, 8)
    inits = ctx.pick(8, 16, 32)
    x, y = _digits_standardized(ctx, n)
    keys = jax.random.split(ctx.key("opt.batchnorm"), inits)
    numbers = {}
    for label, bn in (("plain", False), ("batch norm", True)):
        model, loss_fn = _mlp_loss((width,) * depth, activation, 10, "ce", batch_norm=bn)
        for gain in gains:
            stats = _statistics_over_inits(model, [_init(model, k, 64, gain) for k in keys], x)
            numbers[f"{label}, gain {gain:.3g}"] = _bn_numbers(
                _hessian_blocks(loss_fn, _init(model, keys[0], 64, gain), (x, y)), stats)
    pairs = [(numbers[f"plain, gain {g:.3g}"], numbers[f"batch norm, gain {g:.3g}"])
             for g in gains]
    similar = all(bn["variance_spread"] < 2 for _, bn in pairs)
    unequal = all(plain["variance_spread"] > 4 for plain, _ in pairs)
    curvature = all(bn["spread"] < plain["spread"] for plain, bn in pairs)
    verdict = HOLDS if similar and unequal and curvature else CAVEAT if similar else FAILS
    figure = _plot_batchnorm(ctx, numbers, activation)
    spreads = ", ".join(f"{plain['variance_spread']:.3g}x (gain {g:.3g})"
                        for g, (plain, _) in zip(gains, pairs))
    caveat = ""
    if verdict == FAILS:
        caveat = "Batch norm did not keep the layers' variances within 2x of each other here."
    elif verdict == CAVEAT:
        caveat = " ".join(filter(None, [
            "" if unequal else
            f"Without batch norm the variances already stay within 4x across layers for some "
            f"init ({spreads}): a variance-preserving init (He for ReLU) does much of it too; "
            "centred inputs alone do not (the init sets the growth).",
            "" if curvature else
            "The Hessian's bulk spread λmax/median|λ| was not lower with batch norm for every "
            "init: " + ", ".join(f"{plain['spread']:.3g} -> {bn['spread']:.3g}"
                                 for plain, bn in pairs) + "."]))
    return Finding(
        verdict=verdict,
        summary=f"hidden-variance spread across layers: plain {spreads}; batch norm "
                f"{max(bn['variance_spread'] for _, bn in pairs):.3g}x; Hessian spread "
                "(λmax / median abs λ) "
                + ", ".join(f"{plain['spread']:.3g} -> {bn['spread']:.3g}" for plain, bn in pairs),
        method=f"digits ({n} examples, standardised, i.e. centred inputs), {activation} MLPs "
               f"64-{'-'.join([str(width)] * depth)}-10 with kernels gain x LeCun normal, gains "
               f"{list(gains)}, with or without batch norm between each dense layer and its "
               "activation (training mode: the batch statistics of all examples are part of "
               "the function, so the loss is deterministic); softmax cross-entropy; exact "
               "Hessian (float64) at one init and its per-layer diagonal blocks; each hidden "
               f"layer's output mean |E[h]| and variance, geometric means over {inits} inits.",
        numbers=numbers,
        threshold="holds if with batch norm the hidden layers' variances are within 2x of each "
                  "other, without it they spread > 4x (explode or vanish), and the Hessian's "
                  "bulk spread λmax/median|λ| is lower with it, for every gain (λmax and the "
                  "layer-block spread are reported, not judged); caveat if only the batch-norm "
                  "variance part holds; does not hold otherwise",
        caveat=caveat, figures=[figure])


def _plot_batchnorm(ctx, numbers, activation) -> str:
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8.8, 3.3))
    for label, v in numbers.items():
        style = "--" if label.startswith("batch norm") else "-"
        ax0.semilogy(range(1, len(v["hidden_var"]) + 1), v["hidden_var"], "o" + style, ms=3,
                     label=label)
        ax1.semilogy(range(1, len(v["block_lambda_max"]) + 1),
                     list(v["block_lambda_max"].values()), "o" + style, ms=3,
                     label=f"{label}: λmax {v['lambda_max']:.3g}")
    ax0.set_xlabel("hidden layer")
    ax0.set_ylabel("variance of the layer's output")
    ax0.set_title(f"{activation} MLP, kernels gain x LeCun", fontsize=9)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("λmax of the layer's Hessian block")
    for ax in (ax0, ax1):
        ax.legend(fontsize=6)
    fig.tight_layout()
    return ctx.save_figure(fig, "opt_batchnorm")


def _deep_net_numbers(model, loss_fn, params, x, y) -> dict:
    """Back-propagated signal per hidden layer and the exact Hessian's conditioning and coupling."""
    signal = np.asarray(_model_jit(_signal_norms, model)(params, x, y), np.float64).tolist()
    h = _hessian_blocks(loss_fn, params, (x, y))
    cond = _conditioning(h["values"])
    return {"hidden_signal_norms": signal, "first_over_last_hidden": signal[0] / signal[-1],
            "coupling": h["coupling"], "lambda_max": cond["lambda_max"],
            "lambda_min": cond["lambda_min"], "negative_mass": cond["negative_mass"],
            "spread": cond["spread"], "block_lambda_max": _block_top(h["blocks"])}


VARIANTS = {"plain": {}, "residual": {"residual": True}, "batch norm": {"batch_norm": True}}


@study("opt.skip-connections", SECTION,
       "connection skipping like in resnets is useful in order to propagate the gradients "
       "backward properly and reduce the interactions between parameters stopping them from "
       "exploding")
def skip_connections(ctx, depth=None, activation="tanh"):
    """Plain against residual (and batch-normalised) deep MLPs at init, over depth.

    The verdict compares plain and residual nets at the largest depth;
    ``coupling`` is ``||H - blockdiag(H)||_F / ||H||_F`` over layer blocks,
    the share of the curvature that couples different layers' parameters.
    ``depth``: measure only this depth.
    """
    n, width = ctx.pick(150, 300, 1078), ctx.pick(6, 8, 16)
    depths = (depth,) if depth else ctx.pick((2, 4), (2, 4, 16), (2, 4, 8, 16, 32))
    x, y = _digits_standardized(ctx, n)
    key = ctx.key("opt.skip-connections")
    sweep = {label: {} for label in VARIANTS}
    for d in depths:
        for label, options in VARIANTS.items():
            model, loss_fn = _mlp_loss((width,) * d, activation, 10, "ce", **options)
            sweep[label][d] = _deep_net_numbers(model, loss_fn, _init(model, key, 64), x, y)
    depth = depths[-1]
    plain, res = sweep["plain"][depth], sweep["residual"][depth]
    ratio_p, ratio_r = plain["first_over_last_hidden"], res["first_over_last_hidden"]
    propagates = ratio_r >= 0.5 and ratio_r > ratio_p
    tame = (ratio_r <= 10 and res["coupling"] < plain["coupling"]
            and res["lambda_max"] <= 2 * plain["lambda_max"])
    verdict = HOLDS if propagates and tame else CAVEAT if propagates else FAILS
    figure = _plot_skip(ctx, sweep, depth, activation)
    caveat = ""
    if verdict == CAVEAT:
        growth = [text for bad, text in (
            (ratio_r > 10, f"the back-propagated signal grows {ratio_r:.3g}x from the last to "
                           "the first hidden layer"),
            (res["lambda_max"] > 2 * plain["lambda_max"],
             f"the Hessian's λmax is {res['lambda_max']:.3g} against {plain['lambda_max']:.3g} "
             "plain"),
            (res["coupling"] >= plain["coupling"],
             f"{res['coupling']:.2f} of the Hessian's Frobenius norm couples different layers "
             f"(plain {plain['coupling']:.2f})")) if bad]
        caveat = (
            f"The skips carry the gradient back to the first hidden layer (first/last "
            f"||dL/dh|| {ratio_r:.3g} against {ratio_p:.3g} plain), but without normalisation "
            "they do not stop growth: " + "; ".join(growth) + ". h + f(h) adds each branch's "
            "variance; deep ResNets rely on batch norm or down-scaled branches (e.g. Fixup, "
            "Zhang et al. 2019).")
    elif verdict == FAILS:
        caveat = (f"At depth {depth} the residual net's back-propagated signal does not reach "
                  f"the first hidden layer better than the plain net's ({ratio_r:.3g} vs "
                  f"{ratio_p:.3g}).")
    return Finding(
        verdict=verdict,
        summary=f"depth {depth}: first/last hidden-layer norm of dL/dh plain {ratio_p:.3g}, "
                f"residual {ratio_r:.3g}; inter-layer Hessian coupling {plain['coupling']:.2f} "
                f"-> {res['coupling']:.2f}; λmax {plain['lambda_max']:.3g} -> "
                f"{res['lambda_max']:.3g}",
        method=f"digits ({n} examples, standardised), {activation} MLPs with {list(depths)} "
               f"hidden layers of width {width}: plain, with hidden layers 2..L as nn.residual "
               "(h + f(h)), or with batch norm (training mode) before each activation; LeCun "
               "init, softmax cross-entropy; at init: the back-propagated signal ||dL/dh_l|| "
               "at each hidden layer, and the exact Hessian (float64): λmax, bulk spread "
               "λmax/median|λ|, negative mass, and the Frobenius share of its off-diagonal "
               "(inter-layer) blocks.",
        numbers={"depths": list(depths), **{label: {str(d): v for d, v in per.items()}
                                              for label, per in sweep.items()}},
        threshold=f"at depth {depth}: holds if the residual net's first/last hidden-layer "
                  "signal ratio is >= 0.5 and above the plain net's (propagation), and it stays "
                  "<= 10 with less inter-layer coupling and at most 2x the plain λmax (no "
                  "explosion); caveat if only propagation; does not hold otherwise (batch norm "
                  "is reported, not judged)",
        caveat=caveat, figures=[figure])


def _plot_skip(ctx, sweep, depth, activation) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for label, per in sweep.items():
        g = per[depth]["hidden_signal_norms"]
        axes[0].semilogy(range(1, len(g) + 1), g, "o-", ms=3, label=label)
        depths = sorted(per)
        for ax, metric in zip(axes[1:], ("spread", "lambda_max", "coupling")):
            ax.plot(depths, [per[d][metric] for d in depths], "o-", label=label)
    axes[0].set_xlabel(f"hidden layer (depth {depth})")
    axes[0].set_ylabel("||dL/dh|| at init")
    for ax, ylabel in zip(axes[1:], ("Hessian spread λmax/median|λ|", "Hessian λmax",
                                     "inter-layer share of ||H||_F")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden layers")
        ax.set_ylabel(ylabel)
    for ax in axes[1:3]:
        ax.set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=7)
    axes[0].set_title(f"{activation} MLP, LeCun init", fontsize=9)
    fig.tight_layout()
    return ctx.save_figure(fig, "opt_skip_connections")
