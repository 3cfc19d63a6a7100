"""fit and train_step: equal to a plain Python loop, no recompilation, early stopping,
non-finite losses, stateful losses (batch norm, dropout), validation metrics, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import data, nn
from jdl import train as jt

COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *args, **kwargs: COMPILES.append(name)
    if name == "/jax/core/compile/backend_compile_duration" else None)


def _regression(n=70, d=5, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, 1)) + 0.1 * rng.normal(size=(n, 1))
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


MODEL = nn.serial(nn.dense(8), nn.activation("tanh"), nn.dense(1))


def _mlp_params(dtype=jnp.float64, seed=1):
    return MODEL.init(jax.random.key(seed), (-1, 5), dtype)[1]


def mse_loss(params, batch):
    x, y = batch
    return jnp.mean((MODEL.apply(params, x)[0] - y) ** 2)


@pytest.mark.parametrize("drop_last", [True, False])
def test_compiled_epochs_equal_a_plain_python_loop(drop_last):
    """Same permutations (fold_in(key, epoch), then split), same steps, float64."""
    x, y = _regression()
    params = _mlp_params()
    optimizer = jt.heavy_ball(0.05, 0.9)
    key = jax.random.key(3)
    result = jt.fit(mse_loss, params, optimizer, (x, y), epochs=4, batch_size=16, key=key,
                    drop_last=drop_last, epochs_per_call=3, quiet=True)

    grad, update = jax.jit(jax.grad(mse_loss)), jax.jit(optimizer.update)
    p, state = params, optimizer.init(params)
    loss_log = []
    for epoch in range(4):
        k_perm, _ = jax.random.split(jax.random.fold_in(key, epoch))
        idx = np.asarray(data.batch_indices(k_perm, x.shape[0], 16, drop_last))
        losses = []
        for rows in idx:
            batch = (x[rows], y[rows])
            losses.append(float(mse_loss(p, batch)))
            updates, state = update(grad(p, batch), state, p)
            p = optax.apply_updates(p, updates)
        loss_log.append(np.mean(losses))
    assert idx.shape[0] == (70 // 16 if drop_last else 5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                 result.params, p)
    np.testing.assert_allclose(result.history["loss"], loss_log, rtol=1e-12)
    np.testing.assert_array_equal(result.history["epoch"], np.arange(1, 5))
    assert int(result.state.epoch) == 4


def test_no_recompilation_after_the_first_epoch():
    x, y = _regression()
    params = _mlp_params()
    optimizer = optax.sgd(0.01)
    counts = []
    jt.fit(mse_loss, params, optimizer, (x, y), epochs=5, batch_size=10,
           key=jax.random.key(0), val_data=(x, y), epochs_per_call=2, quiet=True,
           callback=lambda epoch, record: counts.append(len(COMPILES)))
    # calls of 2, 2 and 1 epochs: one compilation serves every call length
    assert len(counts) == 5 and counts[1:] == [counts[0]] * 4
    before = len(COMPILES)
    jt.fit(mse_loss, params, optimizer, (x, y), epochs=3, batch_size=10,
           key=jax.random.key(1), val_data=(x, y), epochs_per_call=2, quiet=True)
    assert len(COMPILES) == before  # a second run with the same setup reuses it too


def test_fit_leaves_the_callers_params_intact():
    x, y = _regression()
    params = _mlp_params()
    copy = jax.tree.map(np.array, params)
    jt.fit(mse_loss, params, optax.sgd(0.1), (x, y), epochs=2, batch_size=10,
           key=jax.random.key(0), quiet=True)
    jax.tree.map(np.testing.assert_array_equal, params, copy)


def test_early_stopping_restores_the_best_snapshot():
    """Gradient descent on ½||w - a||² from 0 runs along w_t = a(1 - 0.9^t); the validation
    loss ½||w - a/2||² is smallest at the epoch where 0.9^t is nearest 1/2."""
    a = jnp.array([2.0, -1.0, 0.5])
    train_x = jnp.tile(a, (8, 1))
    val_x = jnp.tile(a / 2, (4, 1))

    def loss_fn(w, batch):
        return 0.5 * jnp.mean(jnp.sum((w - batch) ** 2, axis=-1))

    result = jt.fit(loss_fn, jnp.zeros(3), optax.sgd(0.1), train_x, epochs=40, batch_size=8,
                    key=jax.random.key(0), val_data=val_x,
                    early_stopping=jt.EarlyStopping(patience=3), quiet=True)
    t = np.arange(1, 41)
    val_curve = 0.5 * np.sum((np.outer(1 - 0.9**t, a) - a / 2) ** 2, axis=-1)
    best = int(np.argmin(val_curve)) + 1
    assert result.best_epoch == best and result.stopped_early
    assert len(result.history["val_loss"]) == best + 3
    np.testing.assert_allclose(result.history["val_loss"], val_curve[:best + 3], rtol=1e-10)
    np.testing.assert_allclose(result.params, a * (1 - 0.9**best), rtol=1e-12)
    np.testing.assert_allclose(result.state.params, a * (1 - 0.9 ** (best + 3)), rtol=1e-12)


def test_early_stopping_on_a_maximised_metric():
    x, y = _regression()
    params = _mlp_params()
    neg_mse = {"neg_mse": lambda p, b: -mse_loss(p, b)}
    result = jt.fit(mse_loss, params, optax.sgd(0.05), (x, y), epochs=6, batch_size=10,
                    key=jax.random.key(0), val_data=(x, y), metrics=neg_mse,
                    early_stopping=jt.EarlyStopping(2, "val_neg_mse", "max"), quiet=True)
    best = int(np.argmax(result.history["val_neg_mse"])) + 1
    assert result.best_epoch == best
    np.testing.assert_allclose(result.history["val_neg_mse"], -result.history["val_loss"])
    np.testing.assert_allclose(-mse_loss(result.params, (x, y)),
                               result.history["val_neg_mse"][best - 1], rtol=1e-12)


def nan_after(step):
    """An optax transform that turns the update of global step ``step`` (0-based) into NaN."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        updates = jax.tree.map(lambda u: jnp.where(count == step, jnp.nan, u), updates)
        return updates, count + 1

    return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("bad_update,epoch,step,what", [
    (0, 1, 2, "loss"), (16, 3, 4, "loss"), (19, 3, 7, "loss"), (20, 3, 7, "parameters")])
def test_non_finite_loss_names_epoch_and_step(tmp_path, bad_update, epoch, step, what):
    """7 steps an epoch; a NaN update at global step k gives a NaN loss at step k + 1, or,
    at an epoch's last step, NaN parameters at the end of the epoch."""
    x, y = _regression()
    optimizer = optax.chain(optax.sgd(0.01), nan_after(bad_update))
    match = f"non-finite {'training loss nan at' if what == 'loss' else 'parameters after the update of'} epoch {epoch} of 5, step {step} of 7"
    with pytest.raises(jt.NonFiniteLossError, match=match) as err:
        jt.fit(mse_loss, _mlp_params(), optimizer, (x, y), epochs=5, batch_size=10,
               key=jax.random.key(0), checkpoint_dir=tmp_path, epochs_per_call=1, quiet=True)
    assert (err.value.epoch, err.value.step) == (epoch, step)
    if epoch == 1:
        assert err.value.checkpoint is None and not jt.checkpoint_path(tmp_path).exists()
        return
    # the last good checkpoint (end of the previous epoch) is kept, finite and loadable
    assert err.value.checkpoint == jt.checkpoint_path(tmp_path)
    assert f"last good checkpoint (epoch {epoch - 1})" in str(err.value)
    resumed = jt.fit(mse_loss, _mlp_params(), optimizer, (x, y), epochs=epoch - 1,
                     batch_size=10, key=jax.random.key(0), checkpoint_dir=tmp_path,
                     resume=True, quiet=True)
    assert int(resumed.state.epoch) == epoch - 1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(resumed.params))


def test_divergence_above_two_over_lambda_max_is_reported():
    """Full-batch GD on ½ mean((Xw)²) with lr = 3/λmax blows up: an error, not a NaN result."""
    x, _ = _regression(n=40, d=4, dtype=jnp.float32)
    lam_max = np.linalg.eigvalsh(np.asarray(x, np.float64).T @ np.asarray(x, np.float64) / 40)[-1]

    def loss_fn(w, batch):
        return 0.5 * jnp.mean((batch @ w) ** 2)

    with pytest.raises(jt.NonFiniteLossError, match="non-finite training loss"):
        jt.fit(loss_fn, jnp.ones(4, jnp.float32), optax.sgd(3.0 / lam_max), x, epochs=500,
               batch_size=40, key=jax.random.key(0), quiet=True)
    stable = jt.fit(loss_fn, jnp.ones(4, jnp.float32), optax.sgd(1.9 / lam_max), x, epochs=200,
                    batch_size=40, key=jax.random.key(0), quiet=True)
    assert stable.history["loss"][-1] < 1e-3 * stable.history["loss"][0]


BN_MODEL = nn.serial(nn.dense(16), nn.batch_norm(), nn.activation("relu"), nn.dropout(0.3),
                     nn.dense(1))


def test_stateful_loss_threads_state_and_dropout_keys():
    """batch norm + dropout: equal to a Python loop using the documented key derivation."""
    x, y = _regression()
    _, params, state = BN_MODEL.init(jax.random.key(5), (-1, 5))
    loss = jt.model_loss(BN_MODEL, lambda out, t: jnp.mean((out - t) ** 2))
    optimizer = optax.sgd(0.05)
    key = jax.random.key(11)
    result = jt.fit(loss, params, optimizer, (x, y), epochs=3, batch_size=16, key=key,
                    model_state=state, val_data=(x, y), quiet=True)

    step = jax.jit(jt.train_step(loss, optimizer))
    p, s, opt_state = params, state, optimizer.init(params)
    for epoch in range(3):
        k_perm, k_steps = jax.random.split(jax.random.fold_in(key, epoch))
        idx = data.batch_indices(k_perm, x.shape[0], 16)
        for rows, k in zip(idx, jax.random.split(k_steps, idx.shape[0])):
            p, opt_state, s, _ = step(p, opt_state, s, (x[rows], y[rows]), k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13),
                 (result.params, result.model_state), (p, s))
    # the running statistics moved, and validation ran in eval mode (no dropout noise)
    assert not np.allclose(jax.tree.leaves(result.model_state)[0], jax.tree.leaves(state)[0])
    val = loss(result.params, result.model_state, (x, y), None, False)[0]
    np.testing.assert_allclose(result.history["val_loss"][-1], val, rtol=1e-12)
    # another key gives other permutations and dropout masks
    other = jt.fit(loss, params, optimizer, (x, y), epochs=3, batch_size=16,
                   key=jax.random.key(12), model_state=state, val_data=(x, y), quiet=True)
    assert not np.allclose(other.history["loss"], result.history["loss"])


def test_validation_metrics_and_model_metric():
    ds = data.load("iris", dtype=jnp.float64)
    model = nn.serial(nn.dense(8), nn.activation("tanh"), nn.dense(3))
    _, params, _ = model.init(jax.random.key(0), (-1, 4))
    loss = jt.model_loss(model, lambda logits, t: optax.softmax_cross_entropy_with_integer_labels(
        logits, t).mean())
    accuracy = jt.model_metric(model, lambda logits, t: jnp.mean(logits.argmax(-1) == t))
    result = jt.fit(loss, params, optax.adam(0.05), (ds.x_train, ds.y_train), epochs=30,
                    batch_size=16, key=jax.random.key(0), val_data=(ds.x_val, ds.y_val),
                    metrics={"accuracy": accuracy}, quiet=True)
    assert result.history["val_accuracy"].shape == (30,)
    final = accuracy(result.params, {}, (ds.x_val, ds.y_val))
    np.testing.assert_allclose(result.history["val_accuracy"][-1], final)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert final > 0.8


def test_float32_stays_float32():
    x, y = _regression(dtype=jnp.float32)
    result = jt.fit(mse_loss, _mlp_params(jnp.float32), optax.adam(0.01), (x, y), epochs=2,
                    batch_size=10, key=jax.random.key(0), val_data=(x, y), quiet=True)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))
    assert result.history["loss"].dtype == np.float32


def test_train_step_under_jit_equals_a_manual_step():
    x, y = _regression()
    params = _mlp_params()
    optimizer = optax.adam(0.01)
    step = jax.jit(jt.train_step(mse_loss, optimizer))
    new_params, _, loss = step(params, optimizer.init(params), (x, y))
    updates, _ = optimizer.update(jax.grad(mse_loss)(params, (x, y)), optimizer.init(params),
                                  params)
    expected = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), new_params, expected)
    np.testing.assert_allclose(loss, mse_loss(params, (x, y)))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"batch_size": 71}, ValueError, "batch_size in \\[1, 70\\]"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"epochs": -1}, ValueError, "epochs"),
    ({"metrics": {"acc": lambda p, b: 0.0}}, ValueError, "need val_data"),
    ({"early_stopping": jt.EarlyStopping(2)}, ValueError, "val_loss"),
    ({"early_stopping": jt.EarlyStopping(0, "loss")}, ValueError, "patience"),
    ({"resume": True}, ValueError, "checkpoint_dir"),
    ({"train_data": (jnp.ones((70, 5)), jnp.ones((69, 1)))}, ValueError, "leading example"),
    ({"optimizer": "sgd"}, TypeError, "GradientTransformation"),
    ({"mesh": "cpu"}, ValueError, "Mesh"),
])
def test_bad_input(kwargs, error, match):
    x, y = _regression()
    args = {"train_data": (x, y), "optimizer": optax.sgd(0.1), "epochs": 2, "batch_size": 10,
            "key": jax.random.key(0), "quiet": True, **kwargs}
    with pytest.raises(error, match=match):
        jt.fit(mse_loss, _mlp_params(), args.pop("optimizer"), args.pop("train_data"), **args)


def test_fit_infers_empty_state_for_a_loss_that_branches_on_train():
    """model_state=None with a dropout model: ``train`` must stay a Python bool when inferring."""
    model = nn.serial(nn.dense(4), nn.dropout(0.5), nn.dense(1))
    _, params, _ = model.init(jax.random.key(0), (-1, 3))
    loss = jt.model_loss(model, lambda y, t: jnp.mean((y - t) ** 2))
    x = jax.random.normal(jax.random.key(1), (16, 3))
    result = jt.fit(loss, params, optax.sgd(0.01), (x, x[:, :1]), epochs=2, batch_size=8,
                       key=jax.random.key(2), quiet=True)
    assert len(result.history["loss"]) == 2
