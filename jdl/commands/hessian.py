"""``jdl hessian``: the Hessian spectrum of a small MLP on an embedded dataset, to JSON and PNG."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl import data, hessian, losses, nn

CLASSIFICATION = ("digits", "iris", "wine", "breast_cancer")


def register(subparsers) -> None:
    """Add the ``hessian`` subcommand."""
    p = subparsers.add_parser(
        "hessian", help="Hessian eigenvalues, trace, density and learning rates of a small MLP",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="digits", choices=CLASSIFICATION + ("diabetes",))
    p.add_argument("--hidden", type=int, nargs="*", default=[32],
                   help="hidden layer widths (none: a linear model)")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--train-steps", type=int, default=0,
                   help="full-batch SGD (momentum 0.9) steps before the analysis; 0 = at init")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--k", type=int, default=5, help="eigenvalues at each end of the spectrum")
    p.add_argument("--curvature", default="hessian", choices=hessian.operators.CURVATURES)
    p.add_argument("--num-steps", type=int, default=80, help="Lanczos steps per SLQ run")
    p.add_argument("--num-runs", type=int, default=10, help="SLQ runs")
    p.add_argument("--linear-scale", action="store_true", help="density plot on a linear axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/hessian", help="folder for the JSON and the PNG")
    p.set_defaults(func=run)


def _problem(args):
    """The training split, the model's split loss and initial params."""
    key_data, key_init = jax.random.split(jax.random.key(args.seed))
    ds = data.load(args.dataset, key=key_data)
    x = ds.x_train
    if args.dataset != "digits":
        x = data.fit_standardize(x)(x)
    classes = ds.num_classes
    layers = []
    for width in args.hidden:
        layers += [nn.dense(width), nn.activation(args.activation)]
    model = nn.serial(*layers, nn.dense(classes if classes else 1))
    _, params, _ = model.init(key_init, (-1, x.shape[1]))

    def output_fn(params, batch):
        return model.apply(params, batch[0])[0]

    def output_loss(outputs, batch):
        if classes:
            return losses.softmax_cross_entropy(outputs, batch[1])
        return losses.mse(outputs[:, 0], batch[1])

    return (x, ds.y_train), hessian.SplitLoss(output_fn, output_loss), params


def _train(loss_fn, params, batch, steps: int, lr: float):
    optimizer = optax.sgd(lr, momentum=0.9)

    @jax.jit
    def fit(params, batch):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses_ = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                            length=steps)
        return params, losses_

    params, curve = fit(params, batch)
    if not bool(jnp.all(jnp.isfinite(curve))):
        raise FloatingPointError(f"jdl hessian: training diverged with lr={lr}")
    return params, float(curve[0]), float(curve[-1])


def _finite(value):
    return value if value is None or math.isfinite(value) else str(value)


def run(args) -> int:
    """Compute the spectrum summary; write ``<out>/hessian_<dataset>.json`` and the density PNG."""
    batch, loss_fn, params = _problem(args)
    report = {"dataset": args.dataset, "examples": int(batch[0].shape[0]),
              "hidden": args.hidden, "activation": args.activation,
              "curvature": args.curvature, "parameters": hessian.operators.param_count(params)}
    if args.train_steps:
        params, first, last = _train(loss_fn, params, batch, args.train_steps, args.lr)
        report["training"] = {"steps": args.train_steps, "lr": args.lr, "loss_first": first,
                              "loss_last": last}
    report["loss"] = float(loss_fn(params, batch))
    key = jax.random.key(args.seed + 1)
    k_eig, k_trace, k_density = jax.random.split(key, 3)
    k = min(args.k, report["parameters"] // 2)
    eig = hessian.eigenvalues(loss_fn, params, batch, k=k, which="both", key=k_eig,
                              curvature=args.curvature)
    trace = hessian.trace(loss_fn, params, batch, key=k_trace, num_samples=60,
                          method="hutch++", curvature=args.curvature)
    density = hessian.spectral_density(
        loss_fn, params, batch, key=k_density, curvature=args.curvature,
        num_steps=min(args.num_steps, report["parameters"]), num_runs=args.num_runs)
    cond = hessian.condition_number(eig)
    lam_min = cond.lambda_min if cond.positive_definite else None
    rates = hessian.learning_rates(cond.lambda_max, lam_min) if cond.lambda_max > 0 else None
    top_mass = hessian.eigenvector_mass(jax.tree.map(lambda v: v[:1], eig.vectors))
    report.update({
        "largest": np.asarray(eig.values[:k]).tolist(),
        "smallest": np.asarray(eig.values[k:]).tolist(),
        "residuals": np.asarray(eig.residuals).tolist(),
        "trace": {"estimate": trace.estimate, "stderr": trace.stderr, "method": "hutch++"},
        "condition": {name: _finite(value) for name, value in cond._asdict().items()},
        "negative_mass_slq": hessian.condition_number(density).negative_mass,
        "learning_rates": None if rates is None else {
            name: _finite(value) for name, value in rates._asdict().items()},
        "top_eigenvector_mass": {name: float(share[0]) for name, share in top_mass.items()},
    })
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"hessian_{args.dataset}.json"
    png_path = out / f"hessian_{args.dataset}_density.png"
    json_path.write_text(json.dumps(report, indent=2))
    hessian.plot_spectral_density(density, str(png_path), log_scale=not args.linear_scale,
                                  title=f"{args.dataset}: {args.curvature} spectral density")
    print(f"{report['parameters']} parameters, loss {report['loss']:.4f}")
    print(f"largest  {np.round(report['largest'], 5).tolist()}")
    print(f"smallest {np.round(report['smallest'], 5).tolist()}")
    print(f"trace {trace.estimate:.4f} +- {trace.stderr:.4f}; negative mass (SLQ) "
          f"{report['negative_mass_slq']:.3f}")
    if rates is not None:
        print(f"stable learning rate limit 2/lambda_max = {rates.stable_limit:.4g}")
    print(f"wrote {json_path} and {png_path}")
    return 0
