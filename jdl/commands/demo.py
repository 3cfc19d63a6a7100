"""``jdl demo``: train a small MLP on the digits data; print its loss curve and test accuracy."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from jdl import data, nn


def register(subparsers) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo", help="train a small MLP on the digits data and report its test accuracy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    """Train with SGD + momentum, one compiled ``lax.scan`` per epoch."""
    key = jax.random.key(args.seed)
    k_data, k_init, k_epochs = jax.random.split(key, 3)
    ds = data.load("digits", key=k_data)
    model = nn.serial(nn.dense(args.hidden), nn.activation("tanh"), nn.dense(ds.num_classes))
    _, params, _ = model.init(k_init, (-1, ds.x_train.shape[1]))
    optimizer = optax.sgd(args.lr, momentum=0.9)

    def loss_fn(params, x, y):
        logits, _ = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def epoch(params, opt_state, key, x, y):
        batches = data.minibatches(key, (x, y), args.batch_size)

        def step(carry, batch):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, losses.mean()

    opt_state = optimizer.init(params)
    for i, k in enumerate(jax.random.split(k_epochs, args.epochs)):
        params, opt_state, loss = epoch(params, opt_state, k, ds.x_train, ds.y_train)
        if not jnp.isfinite(loss):
            raise FloatingPointError(f"jdl demo: non-finite training loss {loss} at epoch {i + 1}")
        print(f"epoch {i + 1:3d}  train loss {float(loss):.4f}")
    logits, _ = model.apply(params, ds.x_test)
    accuracy = float((logits.argmax(-1) == ds.y_test).mean())
    print(f"test accuracy {accuracy:.4f} on {ds.x_test.shape[0]} digits")
    return 0
