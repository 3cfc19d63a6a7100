"""Edge of stability: the sharpness during full-batch gradient descent against ``2 / lr``.

Cohen, Kaur, Li, Kolter and Talwalkar ("Gradient descent on neural networks
typically occurs at the edge of stability", ICLR 2021) observed that in
full-batch GD the sharpness (the Hessian's largest eigenvalue) first rises
("progressive sharpening") until it reaches ``2 / lr``, the stability limit of
a quadratic, and then hovers there while the loss keeps falling,
non-monotonically. This script trains a tanh MLP on digits (MSE on one-hot
labels, as in their paper) at several learning rates and measures the
sharpness every few steps with ``jdl.hessian.track_sharpness`` (Lanczos).

Every learning rate reuses one compiled loop: GD with step ``lr`` on ``L`` is
GD with step 1 on ``lr * L``, so the loss takes ``lr`` as data (one value per
example) and the optimiser is always ``sgd(1)``; the recorded sharpness and
losses are divided by ``lr``.

Run:
    .venv/bin/python experiments/edge_of_stability.py [--steps 10000] [--n 500] [--lrs ...]

Writes ``experiments/results/edge_of_stability/edge_of_stability.json`` and
``.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdl import data, hessian, losses, nn
from jdl import train as jt

OUT = Path(__file__).parent / "results" / "edge_of_stability"


def build(hidden: int, depth: int):
    """A tanh MLP ``64 -> hidden x depth -> 10`` and ``loss(params, (x, labels, lr))``."""
    layers = []
    for _ in range(depth):
        layers += [nn.dense(hidden), nn.activation("tanh")]
    model = nn.serial(*layers, nn.dense(10))

    def loss_fn(params, batch):
        x, labels, lr = batch
        out, _ = model.apply(params, x)
        targets = jax.nn.one_hot(labels, 10, dtype=out.dtype)
        return jnp.mean(lr * losses.mse(out, targets, reduction="none"))

    return model, loss_fn


def summarise(steps, sharpness, loss_path, lr, every) -> dict:
    """Headline numbers of one run."""
    limit = 2.0 / lr
    reached = np.flatnonzero(sharpness >= 0.9 * limit)
    tail = sharpness[int(0.75 * len(sharpness)):]
    after = loss_path[int(steps[reached[0]]):] if reached.size else loss_path[:0]
    return {
        "lr": lr, "two_over_lr": limit, "sharpness_init": float(sharpness[0]),
        "sharpness_max": float(sharpness.max()),
        "first_step_at_0.9_limit": int(steps[reached[0]]) if reached.size else None,
        "tail_sharpness_over_limit": float(np.mean(tail) / limit),
        "tail_sharpness_max_over_limit": float(np.max(tail) / limit),
        "loss_init": float(loss_path[0]), "loss_final": float(loss_path[-1]),
        "fraction_of_steps_loss_rose_after_reaching": (
            float(np.mean(np.diff(after) > 0)) if after.size > 1 else None),
        "record_every": every}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--n", type=int, default=500, help="digits training examples")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.25, 0.3])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    ds = data.load("digits", key=jax.random.key(args.seed), dtype=jnp.float32)
    x, y = ds.x_train[:args.n], ds.y_train[:args.n]
    model, loss_fn = build(args.hidden, args.depth)
    _, params, _ = model.init(jax.random.key(args.seed + 1), (-1, 64), jnp.float32)
    unit_sgd = jt.sgd(1.0)
    key = jax.random.key(args.seed + 2)
    runs = {}
    for lr in args.lrs:
        start = time.perf_counter()
        batch = (x, y, jnp.full(y.shape, lr, jnp.float32))
        try:
            run = hessian.track_sharpness(loss_fn, params, batch, unit_sgd,
                                          num_steps=args.steps, every=args.every, key=key)
        except ValueError as err:
            runs[str(lr)] = {"lr": lr, "diverged": str(err)}
            print(f"lr {lr}: diverged ({err})")
            continue
        sharp, loss_path = np.asarray(run.sharpness) / lr, np.asarray(run.losses) / lr
        summary = summarise(run.steps, sharp, loss_path, lr, args.every)
        summary["seconds"] = time.perf_counter() - start
        runs[str(lr)] = {**summary, "steps": run.steps.tolist(), "sharpness": sharp.tolist(),
                         "losses": loss_path[::args.every].tolist()}
        print(f"lr {lr:g}: 2/lr {2 / lr:.4g}, sharpness {sharp[0]:.3g} -> max "
              f"{sharp.max():.4g}, last quarter {summary['tail_sharpness_over_limit']:.3f} x "
              f"2/lr; loss {loss_path[0]:.4g} -> {loss_path[-1]:.4g} "
              f"({summary['seconds']:.1f} s)")
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "model": f"tanh MLP 64-{'-'.join([str(args.hidden)] * args.depth)}-10, MSE",
              "data": f"digits, {x.shape[0]} training examples, full batch",
              "backend": jax.default_backend(), "runs": runs}
    (args.out / "edge_of_stability.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "edge_of_stability.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in result["runs"].values():
        if "steps" not in run:
            continue
        line, = ax0.plot(run["steps"], run["sharpness"], lw=1.2, label=f"lr {run['lr']:g}")
        ax0.axhline(run["two_over_lr"], color=line.get_color(), ls=":", lw=1)
        ax1.semilogy(np.arange(len(run["losses"])) * run["record_every"], run["losses"],
                     color=line.get_color(), lw=1, label=f"lr {run['lr']:g}")
    ax0.set_xlabel("gradient-descent step")
    ax0.set_ylabel("sharpness λmax (dotted: 2/lr)")
    ax0.set_title(f"{result['model']}; {result['data']}", fontsize=8)
    ax0.legend(fontsize=7)
    ax1.set_xlabel("gradient-descent step")
    ax1.set_ylabel("training loss")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
