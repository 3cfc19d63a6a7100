"""Random restarts in one program: R models from R keys, the best kept by validation loss.

The notes: "retrain the model multiple times with different initialisations
and keep the best". ``fit_restarts`` vmaps the compiled training loop of
:func:`jdl.train.fit` over a leading restart axis: initialisation,
permutations, dropout keys and early stopping are per restart, the data are
shared, and all R runs advance together in one XLA program (one compilation,
one host sync per ``epochs_per_call`` epochs). Restart ``r`` with key ``k_r``
is exactly ``fit`` of ``init_fn(k_init)`` with ``key=k_run``, where
``k_init, k_run = jax.random.split(k_r)`` (equal to float tolerance: batching
may reorder a reduction).

With several devices the restart axis is sharded over them (JAX's SPMD, the
data replicated), so the runs advance in parallel: on a CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` (set before
importing jax) makes each core a device; 16 restarts of a small MLP then run
about 1.8x faster on 2 cores than on one device.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl.parallel import data_mesh, replicate, shard_batch
from jdl.train.loop import (
    Config, EarlyStopping, TrainState, count_examples, check_config, compiled_chunk, drive,
    initial_run)
from jdl.train.objective import StatefulLoss


class RestartsResult(NamedTuple):
    """What :func:`fit_restarts` returns.

    Attributes:
      best_index: the restart with the lowest validation loss.
      params: that restart's params (its best epoch with early stopping).
      model_state: its model state.
      val_losses: ``(restarts,)`` validation loss of each restart's returned params.
      histories: ``{"loss", "val_loss", ...}`` arrays of shape ``(restarts, epochs_run)``,
        NaN after a restart stopped early.
      all_params: every restart's returned params, leaves ``(restarts, ...)``.
      all_model_states: every restart's model state, leaves ``(restarts, ...)``.
      best_epochs: ``(restarts,)`` 1-based epoch of each returned snapshot.
    """

    best_index: int
    params: Any
    model_state: Any
    val_losses: np.ndarray
    histories: dict
    all_params: Any
    all_model_states: Any
    best_epochs: np.ndarray


def split_restart_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(init_key, run_key)`` of one restart: ``jax.random.split(key)``."""
    k_init, k_run = jax.random.split(key)
    return k_init, k_run


def _device_count(fn_name: str, num: int, num_devices: int | None) -> int:
    """How many devices the ``num`` restarts are sharded over."""
    available = len(jax.devices())
    if num_devices is None:
        return max(d for d in range(1, min(available, num) + 1) if num % d == 0)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= available \
            or num % num_devices:
        raise ValueError(
            f"{fn_name}: expected num_devices between 1 and {available} (available) dividing "
            f"the {num} restarts, got {num_devices!r}")
    return num_devices


def _start_fn(init_fn: Callable, optimizer: optax.GradientTransformation,
              early_stopping: EarlyStopping | None, stateful: bool) -> Callable:
    """``start(key) -> Run``: one restart's epoch-0 carry."""

    def start(key):
        k_init, k_run = split_restart_key(key)
        params, model_state = init_fn(k_init) if stateful else (init_fn(k_init), {})
        train = TrainState(params, optimizer.init(params), model_state, k_run,
                           jnp.array(0, jnp.int32))
        return initial_run(train, early_stopping)

    return start


class _Starts:
    """Every restart's epoch-0 carry for one setup (initialiser, optimiser, ...).

    The first use runs the initialiser op by op (5-10 ms for a small MLP;
    compiling it costs ~1.5 s, too much for a setup used once); a setup used
    again is compiled once and then starts in well under a millisecond. An
    initialiser that cannot run inside ``jit`` (say, a jit with compiler
    options) stays op by op.
    """

    def __init__(self, *setup):
        self.start = _start_fn(*setup)
        self.uses = 0
        self.jit_ok = True
        self.compiled: Callable | None = None

    def __call__(self, keys: jax.Array):
        self.uses += 1
        if self.compiled is None and self.uses > 1 and self.jit_ok:
            compiled = jax.jit(jax.vmap(self.start))
            try:
                run = compiled(keys)
            except Exception:  # noqa: BLE001 - op by op below raises any real error
                self.jit_ok = False
            else:
                self.compiled = compiled
                return run
        return (self.compiled or jax.vmap(self.start))(keys)


_starts = functools.lru_cache(maxsize=32)(_Starts)  # one per setup, compared by identity


def _initial_runs(setup: tuple, keys: jax.Array):
    """Every restart's epoch-0 carry, leaves ``(restarts, ...)``."""
    try:
        starts = _starts(*setup)
    except TypeError:  # an unhashable initialiser or optimiser: no reuse to plan for
        starts = _Starts(*setup)
    return starts(keys)


def fit_restarts(loss_fn: Callable | StatefulLoss, init_fn: Callable,
                 optimizer: optax.GradientTransformation, train_data: Any, val_data: Any, *,
                 keys: jax.Array, epochs: int, batch_size: int,
                 metrics: dict[str, Callable] | None = None, drop_last: bool = True,
                 early_stopping: EarlyStopping | None = None, epochs_per_call: int = 10,
                 quiet: bool = False, callback: Callable[[int, dict], None] | None = None,
                 num_devices: int | None = None) -> RestartsResult:
    """Train one model per key in one vmapped program; keep the best by validation loss.

    Args:
      loss_fn: as for :func:`jdl.train.fit`.
      init_fn: ``init_fn(key) -> params`` for a plain loss, ``-> (params,
        model_state)`` for a :class:`~jdl.train.objective.StatefulLoss`.
      optimizer: any optax transformation (shared by all restarts).
      train_data: pytree with leading example axis, shared by all restarts.
      val_data: the validation pytree that picks the winner.
      keys: ``(restarts,)`` PRNG keys, e.g. ``jax.random.split(key, 16)``.
      epochs, batch_size, metrics, drop_last, early_stopping, epochs_per_call,
        quiet, callback: as for :func:`jdl.train.fit` (callback records hold
        ``(restarts,)`` arrays).
      num_devices: devices to shard the restarts over (it must divide the
        number of restarts); default the most of ``jax.devices()`` that
        divide it. Any count gives the same result to float tolerance.

    Returns:
      A :class:`RestartsResult`.

    Raises:
      NonFiniteLossError: if any restart's loss becomes non-finite (naming
        the restart, epoch and step).
    """
    fn_name = "fit_restarts"
    n = count_examples(fn_name, train_data, "train_data")
    count_examples(fn_name, val_data, "val_data")
    if not callable(init_fn):
        raise TypeError(f"{fn_name}: expected a callable init_fn, got {type(init_fn).__name__}")
    keys = jnp.asarray(keys)
    num = keys.shape[0] if keys.ndim >= 1 else 0
    if num < 1:
        raise ValueError(f"{fn_name}: expected keys of shape (restarts,), got {keys.shape}")
    metrics = dict(metrics or {})
    check_config(fn_name, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                 num_examples=n, has_val=True, metrics=metrics, early_stopping=early_stopping,
                 checkpoint_every=1, epochs_per_call=epochs_per_call)
    cfg = Config(loss_fn, optimizer, int(batch_size), bool(drop_last), tuple(metrics.items()),
                 early_stopping, None, int(epochs_per_call))
    devices = _device_count(fn_name, num, num_devices)
    run = _initial_runs((init_fn, optimizer, early_stopping, isinstance(loss_fn, StatefulLoss)),
                        keys)
    if devices > 1:
        mesh = data_mesh(devices)
        run, train_data, val_data = (shard_batch(run, mesh), replicate(train_data, mesh),
                                     replicate(val_data, mesh))
    num_batches = n // batch_size if drop_last else -(-n // batch_size)
    history: dict[str, list] = {}
    run = drive(fn_name, compiled_chunk(cfg, vmapped=True), run, train_data, val_data,
                epochs=epochs, chunk=cfg.chunk, num_batches=num_batches, checkpoint_file=None,
                checkpoint_every=1, metadata={}, history=history, quiet=quiet,
                callback=callback)
    histories = {k: np.concatenate(v, axis=-1) for k, v in history.items()}
    if early_stopping is None:
        all_params, all_states = run.train.params, run.train.model_state
        best_epochs = np.asarray(run.train.epoch)
    else:
        all_params, all_states = run.best
        best_epochs = np.asarray(run.best_epoch)
    val = histories["val_loss"]
    rows = np.arange(num)
    val_losses = np.where(best_epochs > 0, val[rows, np.maximum(best_epochs, 1) - 1], np.nan)
    if np.all(np.isnan(val_losses)):
        raise FloatingPointError(
            f"{fn_name}: no restart has a finite validation loss; got {val_losses}")
    best = int(np.nanargmin(val_losses))
    pick = lambda tree: jax.tree.map(lambda leaf: leaf[best], tree)  # noqa: E731
    return RestartsResult(best, pick(all_params), pick(all_states), val_losses, histories,
                          all_params, all_states, best_epochs)
