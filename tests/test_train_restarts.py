"""Restarts in one vmapped program equal individually trained runs; the best is kept."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import data, nn
from jdl import train as jt

DS = data.load("wine", dtype=jnp.float64)
SCALE = data.fit_standardize(DS.x_train)
TRAIN = (SCALE(DS.x_train), DS.y_train)
VAL = (SCALE(DS.x_val), DS.y_val)
MODEL = nn.serial(nn.dense(6), nn.activation("tanh"), nn.dense(3))


def init_fn(key):
    return MODEL.init(key, (-1, 13))[1]


def loss_fn(params, batch):
    x, y = batch
    logits, _ = MODEL.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


OPTIMIZER = optax.sgd(0.3, momentum=0.5)


@pytest.mark.parametrize("early_stopping", [None, jt.EarlyStopping(2)])
def test_restarts_equal_individual_runs_and_keep_the_best(early_stopping):
    keys = jax.random.split(jax.random.key(4), 3)
    result = jt.fit_restarts(loss_fn, init_fn, OPTIMIZER, TRAIN, VAL, keys=keys, epochs=8,
                             batch_size=16, early_stopping=early_stopping, epochs_per_call=3,
                             quiet=True)
    assert result.histories["loss"].shape == (3, 8)
    singles = []
    for r, key in enumerate(keys):
        k_init, k_run = jt.split_restart_key(key)
        single = jt.fit(loss_fn, init_fn(k_init), OPTIMIZER, TRAIN, epochs=8, batch_size=16,
                        key=k_run, val_data=VAL, early_stopping=early_stopping,
                        epochs_per_call=3, quiet=True)
        singles.append(single)
        n = len(single.history["loss"])
        np.testing.assert_allclose(result.histories["loss"][r, :n], single.history["loss"],
                                   rtol=1e-10)
        assert np.all(np.isnan(result.histories["loss"][r, n:]))  # stopped: no more epochs
        mine = jax.tree.map(lambda leaf: leaf[r], result.all_params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                     mine, single.params)
        np.testing.assert_allclose(result.val_losses[r], loss_fn(single.params, VAL),
                                   rtol=1e-10)
    # different keys, different runs; the winner has the lowest validation loss
    assert np.ptp(result.val_losses) > 1e-6
    best = int(np.argmin([loss_fn(s.params, VAL) for s in singles]))
    assert result.best_index == best
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                 result.params, singles[best].params)


def test_stateful_restarts_and_non_finite_loss():
    model = nn.serial(nn.dense(6), nn.batch_norm(), nn.activation("relu"), nn.dropout(0.1),
                      nn.dense(3))
    loss = jt.model_loss(model, lambda logits, t: optax.softmax_cross_entropy_with_integer_labels(
        logits, t).mean())
    accuracy = jt.model_metric(model, lambda logits, t: jnp.mean(logits.argmax(-1) == t))

    def init(key):
        _, params, state = model.init(key, (-1, 13))
        return params, state

    result = jt.fit_restarts(loss, init, optax.adam(0.02), TRAIN, VAL,
                             keys=jax.random.split(jax.random.key(0), 2), epochs=3,
                             batch_size=16, metrics={"accuracy": accuracy}, quiet=True)
    assert result.histories["val_accuracy"].shape == (2, 3)
    np.testing.assert_allclose(result.histories["val_accuracy"][result.best_index, -1],
                               accuracy(result.params, result.model_state, VAL))

    def explode(params, batch):
        return loss_fn(params, batch) * jnp.where(params["2_dense"]["b"][0] > -1e9, jnp.inf, 1.0)

    with pytest.raises(jt.NonFiniteLossError, match="restart 0 at epoch 1 of 3, step 1"):
        jt.fit_restarts(explode, init_fn, OPTIMIZER, TRAIN, VAL,
                        keys=jax.random.split(jax.random.key(0), 2), epochs=3, batch_size=16,
                        quiet=True)


def test_bad_keys():
    with pytest.raises(ValueError, match="keys of shape"):
        jt.fit_restarts(loss_fn, init_fn, OPTIMIZER, TRAIN, VAL, keys=jax.random.key(0),
                        epochs=2, batch_size=16)


@pytest.mark.devices(4)
def test_restarts_sharded_over_devices_equal_one_device():
    keys = jax.random.split(jax.random.key(5), 4)

    def run(**kw):
        return jt.fit_restarts(loss_fn, init_fn, OPTIMIZER, TRAIN, VAL, keys=keys, epochs=4,
                               batch_size=16, quiet=True, **kw)

    spread, single = run(), run(num_devices=1)
    assert len(jax.devices()) == 4                     # conftest: 4 host devices
    assert len(jax.tree.leaves(spread.all_params)[0].sharding.device_set) == 4
    assert len(jax.tree.leaves(single.all_params)[0].sharding.device_set) == 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                 spread.all_params, single.all_params)
    np.testing.assert_allclose(spread.histories["val_loss"], single.histories["val_loss"],
                               rtol=1e-10)
    for bad in (0, 3, 5, 2.0):
        with pytest.raises(ValueError, match="fit_restarts: expected num_devices"):
            run(num_devices=bad)


def test_initialiser_runs_op_by_op_once_then_compiled_and_reused():
    traces = []

    def counted_init(key):
        traces.append(1)
        return init_fn(key)

    keys = jax.random.split(jax.random.key(6), 2)
    runs = [jt.fit_restarts(loss_fn, counted_init, OPTIMIZER, TRAIN, VAL, keys=keys, epochs=2,
                            batch_size=16, quiet=True) for _ in range(4)]
    # first use op by op (one vmapped call), second compiled (one trace), then reused
    assert len(traces) == 2
    for run in runs[1:]:
        np.testing.assert_array_equal(run.val_losses, runs[0].val_losses)
    # a jit with compiler options may not be nested in another jit: it stays op by op
    fast_init = jax.jit(init_fn, compiler_options={"xla_backend_optimization_level": 0})
    for _ in range(3):
        slow = jt.fit_restarts(loss_fn, fast_init, OPTIMIZER, TRAIN, VAL, keys=keys, epochs=2,
                               batch_size=16, quiet=True)
        np.testing.assert_allclose(slow.val_losses, runs[0].val_losses, rtol=1e-12)

    def broken_init(key):
        raise RuntimeError("broken initialiser")

    for _ in range(2):  # op by op, then the compile attempt: the initialiser's own error
        with pytest.raises(RuntimeError, match="broken initialiser"):
            jt.fit_restarts(loss_fn, broken_init, OPTIMIZER, TRAIN, VAL, keys=keys, epochs=2,
                            batch_size=16, quiet=True)
