"""``jdl train``: train an MLP or a small CNN on an embedded dataset; write loss curves.

Writes ``OUT/history.json`` (settings, per-epoch losses and metrics, test
metrics) and ``OUT/loss.png`` (training and validation loss against epoch);
with ``--checkpoint-every`` also ``OUT/checkpoint/checkpoint.msgpack``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdl import data, losses, nn
from jdl import train as jt

OPTIMIZERS = {
    "sgd": lambda lr: jt.sgd(lr),
    "heavy_ball": lambda lr: jt.heavy_ball(lr, 0.9),
    "nesterov": lambda lr: jt.nesterov(lr, 0.9),
    "rmsprop": lambda lr: jt.rmsprop(lr),
    "adagrad": lambda lr: jt.adagrad(lr),
    "adam": lambda lr: jt.adam(lr),
    "adam_uncorrected": lambda lr: jt.adam(lr, bias_correction=False),
    "adamw": lambda lr: jt.adamw(lr),
}


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train an MLP or CNN on an embedded dataset; write loss curves (PNG, JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="cnn needs --dataset digits (8x8 images)")
    p.add_argument("--dataset", choices=data.DATASETS, default="digits")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (mlp) or channels (cnn)")
    p.add_argument("--dropout", type=float, default=0.0, help="drop probability after hidden")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="heavy_ball")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--restarts", type=int, default=1,
                   help="train this many models from different keys in one program; keep the best")
    p.add_argument("--patience", type=int, default=0,
                   help="early stopping on the validation loss (0: off)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="epochs (0: no checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/train"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _model(args, num_outputs: int) -> nn.Layer:
    drop = [nn.dropout(args.dropout)] if args.dropout > 0 else []
    if args.model == "mlp":
        return nn.serial(nn.dense(args.hidden), nn.activation("tanh"), *drop,
                         nn.dense(num_outputs))
    return nn.serial(nn.conv2d(args.hidden, 3), nn.activation("relu"), nn.max_pool(2),
                     nn.conv2d(args.hidden, 3), nn.activation("relu"), nn.flatten(), *drop,
                     nn.dense(num_outputs))


def _check(args) -> None:
    if args.model == "cnn" and args.dataset != "digits":
        raise ValueError(f"jdl train: --model cnn needs --dataset digits, got {args.dataset!r}")
    for name in ("hidden", "epochs", "batch_size", "restarts"):
        if getattr(args, name) < 1:
            raise ValueError(f"jdl train: expected --{name.replace('_', '-')} >= 1, "
                             f"got {getattr(args, name)}")
    if args.restarts > 1 and (args.checkpoint_every or args.resume):
        raise ValueError("jdl train: --restarts > 1 does not support checkpoints or --resume")
    if args.resume and not args.checkpoint_every:
        raise ValueError("jdl train: --resume needs --checkpoint-every N")


def _plot(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("loss", "-"), ("val_loss", "--")):
        curves = np.atleast_2d(np.asarray(history[name], float))
        for i, curve in enumerate(curves):
            label = f"{'training' if name == 'loss' else 'validation'}" + (
                f" (restart {i})" if len(curves) > 1 else "")
            ax.plot(np.arange(1, curve.size + 1), curve, style, color=f"C{i}", label=label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _json_list(values) -> list:
    """Numbers as a JSON list, NaN (epochs after an early stop) as null."""
    values = np.asarray(values, float)
    return np.where(np.isnan(values), None, values).tolist()


def run(args) -> int:
    """Train, evaluate on the test split, write ``history.json`` and ``loss.png``."""
    _check(args)
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    k_data, k_init, k_run = jax.random.split(key, 3)
    ds = data.load(args.dataset, key=k_data, images=args.model == "cnn")
    x_train, x_val, x_test = ds.x_train, ds.x_val, ds.x_test
    if args.model == "mlp" and args.dataset != "digits":
        scale = data.fit_standardize(x_train)
        x_train, x_val, x_test = scale(x_train), scale(x_val), scale(x_test)
    model = _model(args, ds.num_classes or 1)
    if ds.num_classes:
        targets = (ds.y_train, ds.y_val, ds.y_test)
        loss = jt.model_loss(model, losses.softmax_cross_entropy)
        metric_name, metric = "accuracy", lambda out, t: jnp.mean(out.argmax(-1) == t)
    else:  # regression: standardised targets, MSE
        mean, std = ds.y_train.mean(), ds.y_train.std()
        targets = tuple(((y - mean) / std)[:, None] for y in (ds.y_train, ds.y_val, ds.y_test))
        loss = jt.model_loss(model, losses.mse)
        metric_name, metric = "mse", losses.mse
    evaluate = jt.model_metric(model, metric)
    optimizer = OPTIMIZERS[args.optimizer](args.lr)
    early = jt.EarlyStopping(args.patience) if args.patience else None
    train_data, val_data = (x_train, targets[0]), (x_val, targets[1])
    started = time.perf_counter()
    if args.restarts > 1:
        def init(k):
            _, params, state = model.init(k, (-1, *x_train.shape[1:]), x_train.dtype)
            return params, state

        result = jt.fit_restarts(
            loss, init, optimizer, train_data, val_data,
            keys=jax.random.split(k_init, args.restarts), epochs=args.epochs,
            batch_size=args.batch_size, metrics={metric_name: evaluate}, early_stopping=early,
            quiet=args.quiet)
        params, state, history = result.params, result.model_state, result.histories
        extra = {"best_restart": result.best_index, "val_losses": result.val_losses.tolist()}
    else:
        _, params, state = model.init(k_init, (-1, *x_train.shape[1:]), x_train.dtype)
        result = jt.fit(
            loss, params, optimizer, train_data, epochs=args.epochs, batch_size=args.batch_size,
            key=k_run, val_data=val_data, metrics={metric_name: evaluate}, model_state=state,
            early_stopping=early,
            checkpoint_dir=args.out / "checkpoint" if args.checkpoint_every else None,
            checkpoint_every=max(args.checkpoint_every, 1), resume=args.resume,
            quiet=args.quiet)
        params, state, history = result.params, result.model_state, result.history
        extra = {"best_epoch": result.best_epoch, "stopped_early": result.stopped_early}
    seconds = time.perf_counter() - started
    test_metric = float(evaluate(params, state, (x_test, targets[2])))
    test_loss = float(loss(params, state, (x_test, targets[2]), None, False)[0])
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k != "func"},
        "history": {k: _json_list(v) for k, v in history.items()},
        "test": {"loss": test_loss, metric_name: test_metric},
        "seconds": seconds,
        **extra,
    }
    (args.out / "history.json").write_text(json.dumps(report, indent=1))
    _plot(history, args.out / "loss.png",
          f"{args.model} on {args.dataset}, {args.optimizer} lr={args.lr}")
    print(f"jdl train: {args.model} on {args.dataset}: test {metric_name} {test_metric:.4f}, "
          f"test loss {test_loss:.4f} ({seconds:.1f} s); wrote {args.out / 'history.json'} and "
          f"{args.out / 'loss.png'}")
    return 0
