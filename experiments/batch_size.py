"""Batch size on digits: steps and examples to a target loss, against the gradient noise scale.

The deeper version of the studies opt.batch-phase, opt.batch-variance and
opt.batch-regularise. For batch sizes B = 8 .. 512 (gradient accumulation of
minibatches of 8, optax.MultiSteps, so all run in one program) and a grid of
learning rates, a 64-32-10 tanh MLP is trained with SGD on digits; for each B
the best learning rate's number of optimiser steps S and examples E = S B to
reach a target training loss is recorded. McCandlish et al. (2018) predict
the trade-off ``(S / S_min - 1) (E / E_min - 1) = 1`` with the critical batch
``B_crit = E_min / S_min`` close to the gradient noise scale
``tr(Sigma) / |G|^2`` measured along the way: below B_crit doubling the
batch halves the steps, above it the extra examples are wasted. This is the
quantitative form of the notes' "small batches in phase 1, bigger in phase 2".

Run: ``.venv/bin/python experiments/batch_size.py [--quick]``. Writes
``experiments/results/batch_size/batch_size.json`` and ``batch_size.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl import data
from jdl import train as jt
from jdl.studies import optimization as opt

RESULTS = Path(__file__).parent / "results" / "batch_size"


def steps_to_target(sizes, rates, epochs, target, seed):
    """Training loss curves for every (batch size, learning rate) lane; steps to ``target``."""
    ds = data.load("digits", key=jax.random.key(seed))
    x, y = ds.x_train, ds.y_train
    n = x.shape[0]
    model, plain_loss = opt._digits_mlp_loss()
    micro = min(sizes)
    grid = [(b, lr) for b in sizes for lr in rates]
    k = jnp.asarray([b // micro for b, _ in grid], jnp.int32)
    lrs = jnp.asarray([lr for _, lr in grid], jnp.float32)

    def make_optimizer(config):
        return optax.MultiSteps(jt.sgd(config["lr"]),
                                lambda step: config["k"]).gradient_transformation()

    def record(params, config, ev):
        return {"train": plain_loss(params, ev)}

    def final(params, config, ev, start):
        grads = opt._per_example_grads(plain_loss, start, *ev)
        return {"noise_scale_start": opt._noise_scale(grads)}

    lanes = len(grid)
    _, hist, out = opt._train_lanes(
        lambda p, c, b, key: plain_loss(p, b), make_optimizer,
        lambda key, c: model.init(key, (-1, 64), jnp.float32)[1], {"k": k, "lr": lrs}, (x, y),
        epochs=epochs, batch_size=micro, init_keys=jnp.stack([jax.random.key(seed + 1)] * lanes),
        run_keys=jnp.stack([jax.random.key(seed + 2)] * lanes), eval_data=(x, y),
        record=record, final=final, allow_divergence=True, level=2)
    micro_steps_per_epoch = n // micro
    rows = []
    for i, (b, lr) in enumerate(grid):
        curve = hist["train"][i]
        reached = np.flatnonzero(np.isfinite(curve) & (curve <= target))
        examples = (reached[0] + 1) * micro_steps_per_epoch * micro if reached.size else np.inf
        rows.append({"batch": b, "lr": lr, "examples": float(examples),
                     "steps": float(examples / b), "final_loss": float(curve[-1])})
    # first epoch at the target: steps and examples are resolved to one epoch
    best = {}
    for r in rows:
        if r["batch"] not in best or r["examples"] < best[r["batch"]]["examples"]:
            best[r["batch"]] = r
    return rows, [best[b] for b in sizes], float(out["noise_scale_start"][0])


def noise_scale_along_training(epochs, seed):
    """The noise scale after every epoch of SGD (lr 0.1, batch 32), as in opt.batch-phase."""
    ds = data.load("digits", key=jax.random.key(seed))
    model, plain_loss = opt._digits_mlp_loss()

    def record(params, config, ev):
        return {"noise_scale": opt._noise_scale(opt._per_example_grads(plain_loss, params, *ev)),
                "train": plain_loss(params, ev)}

    _, hist, _ = opt._train_lanes(
        lambda p, c, b, key: plain_loss(p, b), lambda c: jt.sgd(0.1),
        lambda key, c: model.init(key, (-1, 64), jnp.float32)[1], {"lane": jnp.arange(1)},
        (ds.x_train, ds.y_train), epochs=epochs, batch_size=32,
        init_keys=jax.random.key(seed + 1)[None], run_keys=jax.random.key(seed + 2)[None],
        eval_data=(ds.x_train, ds.y_train), record=record)
    return hist["noise_scale"][0].tolist(), hist["train"][0].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and rates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = (8, 16, 32, 64, 128, 256, 512)
    rates = (0.1, 0.3, 1.0) if args.quick else (0.03, 0.1, 0.3, 1.0, 3.0)
    epochs = 40 if args.quick else 150
    target = 0.1
    start = time.perf_counter()
    rows, best, noise0 = steps_to_target(sizes, rates, epochs, target, args.seed)
    noise, train = noise_scale_along_training(40 if args.quick else 100, args.seed)
    reached = [r for r in best if np.isfinite(r["examples"])]
    s_min = min(r["steps"] for r in reached)
    e_min = min(r["examples"] for r in reached)
    result = {
        "target_training_loss": target, "epochs": epochs, "rates": list(rates),
        "all_runs": rows, "best_per_batch": best, "S_min": s_min, "E_min": e_min,
        "critical_batch_E_min_over_S_min": e_min / s_min,
        "noise_scale_at_init": noise0, "noise_scale_along_training": noise,
        "train_loss_along_training": train, "seconds": time.perf_counter() - start,
        "jax": jax.__version__, "backend": jax.default_backend(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(result, default=float),
                       parse_constant=lambda c: None)  # Infinity (target not reached) -> null
    (RESULTS / "batch_size.json").write_text(json.dumps(clean, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.loglog([r["examples"] for r in reached], [r["steps"] for r in reached], "o-")
    for r in reached:
        ax1.annotate(f"B={r['batch']}", (r["examples"], r["steps"]), fontsize=7)
    e = np.geomspace(e_min * 1.01, max(r["examples"] for r in reached) * 2, 100)
    ax1.loglog(e, s_min * (1 + 1 / (e / e_min - 1)), "--", color="gray",
               label="(S/Smin-1)(E/Emin-1)=1")
    ax1.set_xlabel(f"examples to training loss {target}")
    ax1.set_ylabel("optimiser steps")
    ax1.legend(fontsize=7)
    ax2.semilogy(np.arange(1, len(noise) + 1), noise, label="noise scale tr(Sigma)/|G|^2")
    ax2.axhline(e_min / s_min, color="gray", ls="--", label="B_crit = E_min/S_min")
    ax2.set_xlabel("epoch (SGD lr 0.1, batch 32)")
    ax2.set_ylabel("examples")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "batch_size.png", dpi=110)
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("all_runs", "noise_scale_along_training",
                                   "train_loss_along_training")}, indent=1, default=float))


if __name__ == "__main__":
    main()
