"""Hessian conditioning of MLPs on digits against width, depth, input preprocessing, batch norm
and residual connections.

Every point is the exact Hessian (``jdl.hessian.hessian_matrix``, float64,
``numpy.linalg.eigvalsh``) of the softmax cross-entropy of a tanh MLP at
initialisation (LeCun normal kernels), on digits training examples. An
initial network Hessian is indefinite, so it is summarised by

* ``lambda_max`` and ``lambda_min`` (the most negative eigenvalue),
* the negative mass (fraction of negative eigenvalues),
* the positive-part ratio ``lambda_max / smallest positive`` (eigenvalues
  above ``1e-9 lambda_max``; ``jdl.hessian.condition_number``),
* the bulk spread ``lambda_max / median |lambda|``,

each the median over ``--seeds`` initialisations. Sweeps (inputs
standardised unless swept): hidden width (two hidden layers), depth for plain,
residual (``nn.residual`` around hidden layers 2..L) and batch-normalised
(training-mode statistics of the whole batch, part of the function) nets, and
raw / centred / standardised / ZCA-whitened inputs.

Run:
    .venv/bin/python experiments/conditioning_sweeps.py [--n 500] [--seeds 3]

Writes ``experiments/results/conditioning_sweeps/conditioning_sweeps.json`` and ``.png``
(``conditioning_sweeps_trained<N>.*`` with ``--train-epochs N``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from jdl import data
from jdl import train as jt
from jdl.studies import conditioning as cond

OUT = Path(__file__).parent / "results" / "conditioning_sweeps"
METRICS = ("lambda_max", "lambda_min", "negative_mass", "positive_ratio", "spread")


def measure(x, y, widths, *, batch_norm=False, residual=False, seeds=3, seed=0,
            train_epochs=0) -> dict:
    """Median conditioning numbers over ``seeds`` inits of one architecture.

    With ``train_epochs``, the Hessian is taken after that many full-batch
    Adam steps (lr 1e-2, ``jdl.train.fit``) instead of at init.
    """
    model, loss_fn = cond._mlp_loss(tuple(widths), "tanh", 10, "ce", batch_norm=batch_norm,
                                    residual=residual)
    rows = []
    start = time.perf_counter()
    for s in range(seeds):
        key = jax.random.fold_in(jax.random.key(seed), s)
        params = cond._init(model, key, x.shape[1])
        if train_epochs:
            params = jt.fit(loss_fn, params, jt.adam(1e-2), (x, y), epochs=train_epochs,
                            batch_size=x.shape[0], key=key, quiet=True).params
        h = cond._hessian_blocks(loss_fn, params, (x, y))
        rows.append(cond._conditioning(h["values"]) | {"coupling": h["coupling"],
                                                        "loss": float(loss_fn(params, (x, y)))})
    out = {k: float(np.median([r[k] for r in rows])) for k in (*METRICS, "coupling", "loss")}
    out["parameters"] = int(sum(np.size(a) for a in jax.tree.leaves(params)))
    out["seconds"] = time.perf_counter() - start
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="digits training examples")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    p.add_argument("--depth-width", type=int, default=16)
    p.add_argument("--train-epochs", type=int, default=0,
                   help="full-batch Adam steps before the Hessian (0: at init)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_x64", True)

    x_raw, y = cond._split(args.seed, "digits", args.n)
    x = data.fit_standardize(x_raw, eps=0.1)(x_raw)
    sweeps: dict = {"width": {}, "depth": {"plain": {}, "residual": {}, "batch norm": {}},
                    "inputs": {}}
    for w in args.widths:
        sweeps["width"][w] = measure(x, y, (w, w), seeds=args.seeds, seed=args.seed,
                                     train_epochs=args.train_epochs)
        print(f"width {w}: {_line(sweeps['width'][w])}")
    for d in args.depths:
        for label, opts in (("plain", {}), ("residual", {"residual": True}),
                            ("batch norm", {"batch_norm": True})):
            r = measure(x, y, (args.depth_width,) * d, seeds=args.seeds, seed=args.seed,
                        train_epochs=args.train_epochs, **opts)
            sweeps["depth"][label][d] = r
            print(f"depth {d} {label}: {_line(r)}")
    for how in cond.PREPROCESSING:
        xp = x_raw if how == "raw" else cond._preprocess(x_raw, how)
        sweeps["inputs"][how] = measure(xp, y, (16, 16), seeds=args.seeds, seed=args.seed,
                                         train_epochs=args.train_epochs)
        print(f"inputs {how}: {_line(sweeps['inputs'][how])}")
    at = f"after {args.train_epochs} full-batch Adam steps" if args.train_epochs else "at init"
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "data": f"digits, {x.shape[0]} training examples (standardised unless swept)",
              "model": f"tanh MLP, softmax cross-entropy, LeCun-normal init, exact Hessian {at}",
              "backend": jax.default_backend(), "sweeps": sweeps}
    name = "conditioning_sweeps" + (f"_trained{args.train_epochs}" if args.train_epochs else "")
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / f"{name}.png")
    return result


def _line(r: dict) -> str:
    return (f"λmax {r['lambda_max']:.3g}, λmin {r['lambda_min']:.3g}, negative "
            f"{r['negative_mass']:.2f}, positive ratio {r['positive_ratio']:.3g}, spread "
            f"{r['spread']:.3g} ({r['parameters']} params, {r['seconds']:.1f} s)")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["sweeps"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    widths = sorted(s["width"], key=int)
    ax = axes[0]
    for metric in ("spread", "positive_ratio", "lambda_max"):
        ax.loglog([int(w) for w in widths], [s["width"][w][metric] for w in widths], "o-",
                  label=metric)
    ax.set_xlabel("hidden width (2 hidden layers)")
    ax.set_title("width", fontsize=9)
    ax.legend(fontsize=7)
    for ax, metric in zip(axes[1:3], ("spread", "lambda_max")):
        for label, per in s["depth"].items():
            depths = sorted(per, key=int)
            ax.semilogy([int(d) for d in depths], [per[d][metric] for d in depths], "o-",
                        label=label)
        ax.set_xlabel("hidden layers (width 16)")
        ax.set_ylabel(metric)
        ax.set_title(f"depth: {metric}", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[3]
    names = list(s["inputs"])
    pos = np.arange(len(names))
    for i, metric in enumerate(("spread", "lambda_max", "positive_ratio")):
        ax.bar(pos + (i - 1) * 0.27, [s["inputs"][n][metric] for n in names], 0.27,
               label=metric)
    ax.set_yscale("log")
    ax.set_xticks(pos, names)
    ax.set_title("inputs (64-16-16-10)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(f"{result['model']}; {result['data']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
