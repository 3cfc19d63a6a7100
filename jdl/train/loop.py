"""The compiled training loop: ``train_step`` and ``fit``.

The notes' PyTorch loop (a Python loop over the minibatches of a per-epoch
``randperm``, ``loss.item()`` each step, the mean loss per epoch appended to
``loss_log``) becomes one XLA program:

- an epoch is one ``lax.scan`` over the minibatch indices of the epoch's
  permutation; each step gathers its examples from the full training arrays
  inside the program (the data are arguments of the compiled call, never
  constants);
- several epochs (``epochs_per_call``) run in one compiled call, a
  ``while_loop`` whose trip count is an argument (and which exits early when
  the run stops), so the first call compiles and every later one, of any
  length, reuses it; the loss log, validation
  metrics and early-stopping bookkeeping stay on the device until the call
  returns; the training state is donated, so it is updated in place;
- epoch ``e`` draws its permutation and its dropout keys from
  ``fold_in(key, e)``, so a run is a pure function of its key however it is
  split into calls, checkpointed or resumed.

Loss forms (see :mod:`jdl.train.objective`): a plain ``loss_fn(params, batch)``
or a :class:`~jdl.train.objective.StatefulLoss` for batch norm and dropout.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl.data import batch_indices
from jdl.train import checkpoint as ckpt
from jdl.train.data_parallel import check_mesh, place_replicated, split_batch
from jdl.train.objective import StatefulLoss, as_full, as_full_metric
from jdl.train.progress import epoch_bar

CHECKPOINT_FORMAT = 1


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly.

    Attributes:
      params: the model's trainable pytree.
      opt_state: the optimiser's state.
      model_state: non-trainable state (batch-norm statistics); ``{}`` if none.
      key: the run's PRNG key; epoch ``e`` uses ``fold_in(key, e)``.
      epoch: int32 scalar, the number of epochs completed.
    """

    params: Any
    opt_state: Any
    model_state: Any
    key: jax.Array
    epoch: jax.Array


class EarlyStopping(NamedTuple):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; restore the best epoch.

    Attributes:
      patience: epochs without improvement before stopping, ``>= 1``.
      monitor: ``"val_loss"`` (default), ``"loss"`` (training loss) or
        ``"val_<metric>"`` for a validation metric.
      mode: ``"min"`` or ``"max"``: which direction is better.
      min_delta: the smallest change that counts as an improvement.
    """

    patience: int
    monitor: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: trained params; with early stopping, those of the best epoch.
      model_state: the matching model state.
      opt_state: the optimiser state after the last epoch run.
      history: ``{"epoch", "loss", "val_loss", "val_<metric>"...}`` numpy
        arrays of shape ``(epochs_run,)``; ``loss`` is the mean training loss
        of the epoch's steps (the notes' ``loss_log``).
      best_epoch: 1-based epoch of the restored snapshot, or None without
        early stopping.
      stopped_early: whether early stopping ended the run.
      state: the :class:`TrainState` after the last epoch run (not restored),
        to continue from.
    """

    params: Any
    model_state: Any
    opt_state: Any
    history: dict
    best_epoch: int | None
    stopped_early: bool
    state: TrainState


class NonFiniteLossError(FloatingPointError):
    """The training loss (or, after an epoch's last step, a parameter) became NaN or infinite.

    Attributes:
      epoch: 1-based epoch of the first non-finite step.
      step: 1-based step within that epoch.
      restart: index of the restart (``fit_restarts``), else None.
      checkpoint: the last good checkpoint file (left untouched), or None.
    """

    def __init__(self, message: str, epoch: int, step: int, restart: int | None = None,
                 checkpoint: Path | None = None):
        super().__init__(message)
        self.epoch, self.step, self.restart, self.checkpoint = epoch, step, restart, checkpoint


class Run(NamedTuple):
    """The carry of the compiled loop: the train state plus early-stopping bookkeeping."""

    train: TrainState
    best: Any
    best_value: jax.Array
    best_epoch: jax.Array
    bad_epochs: jax.Array
    stopped: jax.Array


class Config(NamedTuple):
    """The static (hashable) description of a compiled loop."""

    loss_fn: Callable
    optimizer: optax.GradientTransformation
    batch_size: int
    drop_last: bool
    metrics: tuple
    early: EarlyStopping | None
    mesh: Any
    chunk: int


def train_step(loss_fn: Callable | StatefulLoss, optimizer: optax.GradientTransformation
               ) -> Callable:
    """One optimiser step, a pure function to ``jit`` or ``scan`` in your own loop.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, or a
        :class:`~jdl.train.objective.StatefulLoss`.
      optimizer: any optax transformation.

    Returns:
      For a plain loss ``step(params, opt_state, batch) -> (params, opt_state, loss)``;
      for a stateful loss ``step(params, opt_state, model_state, batch, key)
      -> (params, opt_state, model_state, loss)``.

    Example:
      >>> step = jax.jit(train_step(loss_fn, optax.sgd(0.1)))
      >>> params, opt_state, loss = step(params, opt_state, batch)  # doctest: +SKIP
    """
    full = as_full(loss_fn)

    def full_step(params, opt_state, model_state, batch, key):
        (loss, model_state), grads = jax.value_and_grad(full, has_aux=True)(
            params, model_state, batch, key, True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, model_state, loss

    if isinstance(loss_fn, StatefulLoss):
        return full_step

    def step(params, opt_state, batch):
        params, opt_state, _, loss = full_step(params, opt_state, {}, batch, None)
        return params, opt_state, loss

    return step


def count_examples(fn_name: str, data: Any, what: str) -> int:
    """The shared leading axis of ``data``'s arrays; ``ValueError`` if there is none."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{fn_name}: expected {what} with at least one array, got none")
    n = np.shape(leaves[0])[0] if np.ndim(leaves[0]) else 0
    if n < 1 or any(np.ndim(leaf) < 1 or np.shape(leaf)[0] != n for leaf in leaves):
        raise ValueError(
            f"{fn_name}: expected {what} arrays sharing a non-empty leading example axis, got "
            f"shapes {[np.shape(leaf) for leaf in leaves]}")
    return n


def _epoch_fn(cfg: Config) -> Callable:
    """``epoch(train, data, val) -> (train, record)`` for one epoch, traced."""
    stochastic = isinstance(cfg.loss_fn, StatefulLoss)
    full = as_full(cfg.loss_fn)
    step = train_step(StatefulLoss(full), cfg.optimizer)
    metrics = [(name, as_full_metric(fn, stochastic)) for name, fn in cfg.metrics]

    def epoch(train: TrainState, data, val):
        n = jax.tree.leaves(data)[0].shape[0]
        k_perm, k_steps = jax.random.split(jax.random.fold_in(train.key, train.epoch))
        idx = batch_indices(k_perm, n, cfg.batch_size, cfg.drop_last)
        keys = jax.random.split(k_steps, idx.shape[0]) if stochastic else None

        def body(carry, xs):
            params, opt_state, model_state = carry
            batch_idx, key = xs
            batch = split_batch(jax.tree.map(lambda a: a[batch_idx], data), cfg.mesh)
            params, opt_state, model_state, loss = step(params, opt_state, model_state, batch,
                                                        key)
            return (params, opt_state, model_state), loss

        (params, opt_state, model_state), losses = jax.lax.scan(
            body, (train.params, train.opt_state, train.model_state), (idx, keys))
        finite = jnp.isfinite(losses)
        # A NaN made by the epoch's last update shows in no loss of this epoch:
        # check the parameters too, so no checkpoint ever holds NaN weights.
        state_finite = jnp.all(jnp.array([jnp.isfinite(leaf).all() for leaf in
                                          jax.tree.leaves((params, model_state))]))
        first_bad = jnp.where(finite.all(), losses.shape[0] - 1, jnp.argmin(finite))
        record = {
            "loss": losses.mean(),
            "bad_step": jnp.where(finite.all() & state_finite, -1, first_bad).astype(jnp.int32),
            "bad_loss": losses[first_bad],
        }
        if val is not None:
            record["val_loss"] = full(params, model_state, val, None, False)[0]
            for name, fn in metrics:
                record[f"val_{name}"] = jnp.asarray(fn(params, model_state, val))
        train = TrainState(params, opt_state, model_state, train.key, train.epoch + 1)
        return train, record

    return epoch


def _advance_fn(cfg: Config) -> Callable:
    """``advance(run, data, val) -> (run, record)``: one epoch plus early-stopping bookkeeping."""
    epoch = _epoch_fn(cfg)
    early = cfg.early

    def advance(run: Run, data, val):
        train, record = epoch(run.train, data, val)
        diverged = record["bad_step"] >= 0
        if early is None:
            return run._replace(train=train, stopped=diverged), record
        value = record[early.monitor].astype(run.best_value.dtype)
        if early.mode == "min":
            improved = value < run.best_value - early.min_delta
        else:
            improved = value > run.best_value + early.min_delta
        best = jax.tree.map(lambda new, old: jnp.where(improved, new, old),
                            (train.params, train.model_state), run.best)
        bad_epochs = jnp.where(improved, 0, run.bad_epochs + 1)
        return Run(train, best, jnp.where(improved, value, run.best_value),
                   jnp.where(improved, train.epoch, run.best_epoch), bad_epochs,
                   diverged | (bad_epochs >= early.patience)), record

    return advance


def _chunk_fn(cfg: Config) -> Callable:
    """``chunk(run, num_epochs, data, val) -> (run, records)``: up to ``cfg.chunk`` epochs.

    ``num_epochs`` is a traced argument, so every call length shares one
    compilation. The loop ends when the run stops (early stopping or a
    non-finite loss); records of epochs not run stay NaN (``bad_step`` -1).
    """
    advance = _advance_fn(cfg)

    def chunk(run: Run, num_epochs, data, val):
        shapes = jax.eval_shape(lambda r: advance(r, data, val)[1], run)

        def fill(s):
            return jnp.array(-1 if jnp.issubdtype(s.dtype, jnp.integer) else jnp.nan, s.dtype)

        records = jax.tree.map(lambda s: jnp.broadcast_to(fill(s), (cfg.chunk,)), shapes)

        # A while loop, not a cond inside a fori_loop: it exits when the run
        # stops, and under vmap (restarts) its batched predicate becomes a
        # per-restart select, where a batched cond would cost ~30% a step.
        def active(carry):
            i, run, _ = carry
            return (i < num_epochs) & ~run.stopped

        def body(carry):
            i, run, records = carry
            run, record = advance(run, data, val)
            records = jax.tree.map(lambda r, x: r.at[i].set(x), records, record)
            return i + 1, run, records

        _, run, records = jax.lax.while_loop(active, body, (0, run, records))
        return run, records

    return chunk


@functools.lru_cache(maxsize=32)
def compiled_chunk(cfg: Config, vmapped: bool = False) -> Callable:
    """The jitted chunk function for ``cfg``, cached so repeated runs reuse the compilation.

    With ``vmapped`` the run carry has a leading restart axis (data shared).
    """
    chunk = _chunk_fn(cfg)
    if vmapped:
        chunk = jax.vmap(chunk, in_axes=(0, None, None, None))
    return jax.jit(chunk, donate_argnums=(0,))


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def check_config(fn_name: str, *, optimizer, epochs, batch_size, num_examples, has_val, metrics,
                 early_stopping, checkpoint_every, epochs_per_call) -> None:
    """Validate the arguments shared by :func:`fit` and ``fit_restarts``."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{fn_name}: expected an optax GradientTransformation, got {type(optimizer).__name__}")
    for name, value, low in (("epochs", epochs, 0), ("checkpoint_every", checkpoint_every, 1),
                             ("epochs_per_call", epochs_per_call, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{fn_name}: expected an int {name} >= {low}, got {value!r}")
    if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"{fn_name}: expected an int batch_size in [1, {num_examples}] (training examples), "
            f"got {batch_size!r}")
    if metrics and not has_val:
        raise ValueError(f"{fn_name}: metrics {sorted(metrics)} need val_data, got None")
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(
                f"{fn_name}: expected early_stopping to be an EarlyStopping, got "
                f"{type(early_stopping).__name__}")
        known = ["loss"] + (["val_loss"] + [f"val_{m}" for m in metrics] if has_val else [])
        if early_stopping.monitor not in known:
            raise ValueError(
                f"{fn_name}: early_stopping monitors {early_stopping.monitor!r}; expected one of "
                f"{known} (val_* needs val_data)")
        if early_stopping.mode not in ("min", "max") or early_stopping.patience < 1:
            raise ValueError(
                f"{fn_name}: expected EarlyStopping mode 'min' or 'max' and patience >= 1, got "
                f"{early_stopping}")


def initial_run(train: TrainState, early: EarlyStopping | None) -> Run:
    """The loop carry at epoch 0 for ``train`` (copied, so the caller's arrays survive donation)."""
    train = _copy(train)
    dtype = jnp.result_type(float)
    worst = jnp.inf if early is None or early.mode == "min" else -jnp.inf
    best = None if early is None else _copy((train.params, train.model_state))
    return Run(train, best, jnp.array(worst, dtype), jnp.array(0, jnp.int32),
               jnp.array(0, jnp.int32), jnp.array(False))


def _raise_non_finite(fn_name, bad_step, bad_loss, chunk_start, epochs, num_batches, saved,
                      saved_epoch):
    """Raise :class:`NonFiniteLossError` for the first entry ``>= 0`` of ``bad_step``."""
    hits = np.argwhere(bad_step >= 0)
    # order by epoch, then restart: the first failure in time
    first = hits[np.lexsort((hits[:, 0], hits[:, -1]))[0]]
    restart = int(first[0]) if bad_step.ndim == 2 else None
    epoch = chunk_start + int(first[-1]) + 1
    step = int(bad_step[tuple(first)]) + 1
    where = "" if restart is None else f" of restart {restart}"
    kept = (f"; the last good checkpoint (epoch {saved_epoch}) is kept at {str(saved)!r}"
            if saved is not None else "")
    loss = float(bad_loss[tuple(first)])
    what = (f"non-finite training loss {loss}{where} at" if not np.isfinite(loss) else
            f"non-finite parameters{where} after the update of")
    raise NonFiniteLossError(
        f"{fn_name}: {what} epoch {epoch} of {epochs}, step {step} of {num_batches}{kept}",
        epoch, step, restart, saved)


def drive(fn_name: str, runner: Callable, run: Run, data, val, *, epochs: int, chunk: int,
          num_batches: int, checkpoint_file: Path | None, checkpoint_every: int,
          metadata: dict, history: dict, quiet: bool, callback: Callable | None) -> Run:
    """Call the compiled chunk until ``epochs`` epochs ran or every run stopped.

    Host work between calls: append the records to ``history`` (lists of numpy
    arrays, one per call), raise on a non-finite loss, write checkpoints, move
    the progress bar, call ``callback(epoch, record)`` per epoch.
    """
    done = int(np.max(run.train.epoch))
    saved, saved_epoch = (checkpoint_file, done) if checkpoint_file is not None and done else (
        None, 0)
    with epoch_bar(epochs, done, quiet=quiet, desc=fn_name) as bar:
        while done < epochs and not bool(np.all(run.stopped)):
            n = min(chunk, epochs - done)
            if checkpoint_file is not None:
                n = min(n, checkpoint_every - done % checkpoint_every)
            run, records = runner(run, n, data, val)
            records = {k: v[..., :n] for k, v in jax.device_get(records).items()}
            if np.any(records["bad_step"] >= 0):
                _raise_non_finite(fn_name, records["bad_step"], records["bad_loss"], done, epochs,
                                  num_batches, saved, saved_epoch)
            now = int(np.max(run.train.epoch))
            for name, values in records.items():
                if name not in ("bad_step", "bad_loss"):
                    history.setdefault(name, []).append(values[..., :now - done])
            if callback is not None:
                for j in range(now - done):
                    callback(done + j + 1, {k: v[..., j] for k, v in records.items()
                                            if k not in ("bad_step", "bad_loss")})
            bar.update(now - done)
            bar.set_postfix(loss=float(np.nanmean(records["loss"][..., now - done - 1])))
            finished = now >= epochs or bool(np.all(run.stopped))
            if checkpoint_file is not None and (now % checkpoint_every == 0 or finished):
                meta = dict(metadata, history={k: np.concatenate(v, axis=-1)
                                               for k, v in history.items()})
                saved = ckpt.save_checkpoint(checkpoint_file, run, meta)
                saved_epoch = now
            done = now
    return run


def resume_run(fn_name: str, checkpoint_file: Path, template: Run, metadata: dict
               ) -> tuple[Run, dict]:
    """Load ``template``'s structure from ``checkpoint_file``; check the run's settings match."""
    run, saved = ckpt.load_checkpoint(checkpoint_file, template)
    for name, value in metadata.items():
        if saved.get(name) != value:
            raise ckpt.CheckpointError(
                f"{fn_name}: checkpoint {str(checkpoint_file)!r} was written with "
                f"{name}={saved.get(name)!r}; this run has {name}={value!r}")
    history = {k: [np.asarray(v)] for k, v in saved.get("history", {}).items()}
    return run, history


def _default_model_state(fn_name, loss_fn, params, model_state, train_data, batch_size):
    """``model_state``, or for None the (array-free) state tree the loss returns."""
    if model_state is not None or not isinstance(loss_fn, StatefulLoss):
        return {} if model_state is None else model_state
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype),
                         train_data)
    # ``train`` stays a Python bool: losses may branch on it (dropout, batch norm).
    _, state = jax.eval_shape(lambda p, b, k: loss_fn.fn(p, {}, b, k, True), params, batch,
                              jax.random.key(0))
    if jax.tree.leaves(state):
        raise ValueError(
            f"{fn_name}: the loss returns a model state with arrays (batch norm?) but "
            f"model_state is None; pass the state from model.init")
    return state


def fit(loss_fn: Callable | StatefulLoss, params: Any, optimizer: optax.GradientTransformation,
        train_data: Any, *, epochs: int, batch_size: int, key: jax.Array, val_data: Any = None,
        metrics: dict[str, Callable] | None = None, model_state: Any = None,
        opt_state: Any = None, drop_last: bool = True,
        early_stopping: EarlyStopping | None = None, checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 1, resume: bool = False, mesh: Any = None,
        epochs_per_call: int = 10, quiet: bool = False,
        callback: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train ``params`` with minibatch ``optimizer`` steps, each epoch one compiled scan.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (mean over the batch), or
        a :class:`~jdl.train.objective.StatefulLoss` (batch norm, dropout).
      params: the initial params pytree (not modified).
      optimizer: any optax ``GradientTransformation`` (see
        :mod:`jdl.train.optimizers`); weight decay belongs here.
      train_data: pytree of arrays with leading axis ``(examples, ...)``,
        e.g. ``(x, y)``; minibatches are gathered from it inside the program.
      epochs: total epochs (a resumed run continues up to this number).
      batch_size: examples per step.
      key: the run's PRNG key (permutations and dropout keys come from it).
      val_data: a pytree like ``train_data``, evaluated in full (``train=False``)
        after every epoch into ``history["val_loss"]``.
      metrics: ``{name: metric}``, evaluated on ``val_data`` into
        ``history["val_<name>"]``; ``metric(params, batch)`` for a plain loss,
        ``metric(params, model_state, batch)`` for a stateful one.
      model_state: initial model state (batch-norm statistics); ``{}`` if None.
      opt_state: optimiser state to continue from; ``optimizer.init(params)`` if None.
      drop_last: the last-partial-batch policy. True drops the ``n mod
        batch_size`` examples left over by each epoch's permutation (the notes'
        loop, ``N // batch_size`` steps); False fills the last batch up with
        examples from the start of the permutation (``ceil(N / batch_size)``
        steps, every example seen at least once, shapes static).
      early_stopping: an :class:`EarlyStopping`; the returned params are those
        of the best epoch.
      checkpoint_dir: folder for ``checkpoint.msgpack`` (see
        :mod:`jdl.train.checkpoint`), written every ``checkpoint_every``
        epochs and at the end, with the optimiser state, keys and history.
      checkpoint_every: epochs between checkpoints.
      resume: continue from the checkpoint in ``checkpoint_dir``. A missing or
        corrupt checkpoint is an error; ``resume=False`` is the explicit fresh
        start (it overwrites the checkpoint at its first save).
      mesh: a ``jdl.parallel.data_mesh()``: minibatches split over its
        devices, params replicated (see :mod:`jdl.train.data_parallel`).
      epochs_per_call: most epochs run in one compiled call between host
        syncs (progress, checkpoints, non-finite checks).
      quiet: no progress bar (it shows only on a terminal, after 2 s).
      callback: ``callback(epoch, record)`` on the host after each epoch,
        ``record`` a dict of the epoch's numbers.

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteLossError: at the first NaN/inf training loss, naming the epoch
        and the step; the last good checkpoint is left in place.
      CheckpointError: ``resume=True`` with a missing, corrupt or mismatching
        checkpoint.
      ValueError, TypeError: for bad arguments.

    Example:
      >>> def loss_fn(params, batch):
      ...     x, y = batch
      ...     return jnp.mean((x @ params["w"] - y) ** 2)
      >>> result = fit(loss_fn, {"w": jnp.zeros((3, 1))}, optax.sgd(0.1), (x, y),
      ...              epochs=20, batch_size=32, key=jax.random.key(0))  # doctest: +SKIP
      >>> result.history["loss"]  # doctest: +SKIP
    """
    fn_name = "fit"
    n = count_examples(fn_name, train_data, "train_data")
    if val_data is not None:
        count_examples(fn_name, val_data, "val_data")
    metrics = dict(metrics or {})
    check_config(fn_name, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                 num_examples=n, has_val=val_data is not None, metrics=metrics,
                 early_stopping=early_stopping, checkpoint_every=checkpoint_every,
                 epochs_per_call=epochs_per_call)
    if resume and checkpoint_dir is None:
        raise ValueError(f"{fn_name}: resume=True needs a checkpoint_dir, got None")
    if mesh is not None:
        check_mesh(fn_name, mesh, batch_size)
    cfg = Config(loss_fn, optimizer, int(batch_size), bool(drop_last), tuple(metrics.items()),
                 early_stopping, mesh, int(epochs_per_call))
    model_state = _default_model_state(fn_name, loss_fn, params, model_state, train_data,
                                       batch_size)
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    run = initial_run(TrainState(params, opt_state, model_state, key, jnp.array(0, jnp.int32)),
                      early_stopping)
    checkpoint_file = None if checkpoint_dir is None else ckpt.checkpoint_path(checkpoint_dir)
    metadata = {"format": CHECKPOINT_FORMAT, "batch_size": int(batch_size),
                "drop_last": bool(drop_last)}
    history: dict[str, list] = {}
    if resume:
        run, history = resume_run(fn_name, checkpoint_file, run, metadata)
    num_batches = n // batch_size if drop_last else -(-n // batch_size)
    run = drive(fn_name, compiled_chunk(cfg), place_replicated(run, mesh),
                place_replicated(train_data, mesh), place_replicated(val_data, mesh),
                epochs=epochs, chunk=cfg.chunk, num_batches=num_batches,
                checkpoint_file=checkpoint_file, checkpoint_every=checkpoint_every,
                metadata=metadata, history=history, quiet=quiet, callback=callback)
    history = {k: np.concatenate(v, axis=-1) for k, v in history.items()}
    epochs_run = int(run.train.epoch)
    history = {"epoch": np.arange(1, epochs_run + 1), **history}
    train = run.train
    if early_stopping is None:
        return FitResult(train.params, train.model_state, train.opt_state, history, None, False,
                         train)
    best_params, best_model_state = run.best
    best_epoch = int(run.best_epoch) if int(run.best_epoch) > 0 else None
    stopped = bool(run.stopped) and epochs_run < epochs
    if best_epoch is None:  # no epoch improved on +-inf (all monitored values NaN)
        best_params, best_model_state = train.params, train.model_state
    return FitResult(best_params, best_model_state, train.opt_state, history, best_epoch,
                     stopped, train)
