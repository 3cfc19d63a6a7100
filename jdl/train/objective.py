"""The two forms of a training loss, and helpers that build them from a jdl model.

Plain form (DESIGN.md's contract): ``loss_fn(params, batch) -> scalar``, with
``batch`` any pytree of arrays with a leading example axis. Its metrics are
``metric(params, batch) -> scalar``.

Full form, for models with running statistics (batch norm) or randomness
(dropout): a :class:`StatefulLoss` wrapping
``fn(params, model_state, batch, key, train) -> (loss, new_model_state)``.
In training ``train=True`` and ``key`` is a fresh key per step; in evaluation
``train=False`` and ``key`` is ``None``. Its metrics are
``metric(params, model_state, batch) -> scalar``. :func:`model_loss` and
:func:`model_metric` build both from a jdl :class:`~jdl.nn.Layer` and a
function of ``(outputs, targets)``, for batches ``(x, y)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from jdl.nn.core import Layer


class StatefulLoss(NamedTuple):
    """A loss in full form: ``fn(params, model_state, batch, key, train) -> (loss, new_state)``."""

    fn: Callable[..., tuple[Any, Any]]

    def __call__(self, params, model_state, batch, key, train):
        return self.fn(params, model_state, batch, key, train)


def model_loss(model: Layer, loss: Callable) -> StatefulLoss:
    """A :class:`StatefulLoss` for ``model`` on batches ``(x, y)``.

    Args:
      model: a jdl layer (any ``serial`` stack, with dropout or batch norm).
      loss: ``loss(outputs, targets) -> scalar``, e.g. a ``jdl.losses`` function.

    Returns:
      ``fn(params, state, (x, y), key, train)`` that runs
      ``model.apply(params, x, state=state, key=key, train=train)`` and returns
      ``(loss(outputs, y), new_state)``.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model_loss: expected a jdl Layer, got {type(model).__name__}")

    def fn(params, model_state, batch, key, train):
        x, y = batch
        outputs, new_state = model.apply(params, x, state=model_state, key=key, train=train)
        return loss(outputs, y), new_state

    return StatefulLoss(fn)


def model_metric(model: Layer, metric: Callable) -> Callable:
    """``metric(params, state, (x, y))`` for ``model`` in evaluation mode.

    Args:
      model: a jdl layer.
      metric: ``metric(outputs, targets) -> scalar``, e.g. accuracy.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model_metric: expected a jdl Layer, got {type(model).__name__}")

    def fn(params, model_state, batch):
        x, y = batch
        outputs, _ = model.apply(params, x, state=model_state, train=False)
        return metric(outputs, y)

    return fn


def as_full(loss_fn: Callable) -> Callable:
    """The full form of ``loss_fn`` (a plain loss gets a pass-through state)."""
    if isinstance(loss_fn, StatefulLoss):
        return loss_fn.fn
    if not callable(loss_fn):
        raise TypeError(f"train: expected a callable loss_fn, got {type(loss_fn).__name__}")

    def fn(params, model_state, batch, key, train):
        del key, train
        return loss_fn(params, batch), model_state

    return fn


def as_full_metric(metric: Callable, stateful: bool) -> Callable:
    """``metric(params, model_state, batch)`` from either metric form."""
    if not callable(metric):
        raise TypeError(f"train: expected callable metrics, got {type(metric).__name__}")
    if stateful:
        return metric
    return lambda params, model_state, batch: metric(params, batch)
