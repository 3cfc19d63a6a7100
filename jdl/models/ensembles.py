"""Deep ensembles: M networks trained in one vmapped program, and their predictive uncertainty.

The notes, on distribution shift: "use predictive uncertainty whether its by
training a bunch of models on diff data or ... a BNN to tell you how
confident it is of the prediction". A deep ensemble (Lakshminarayanan,
Pritzel & Blundell, 2017) trains M copies from different initialisations and
data orders; here all M advance together in one XLA program
(:func:`jdl.train.fit_restarts`, which vmaps the compiled loop of
:func:`jdl.train.fit`), and every member is kept.

For member probabilities ``p_m(y | x)`` of shape ``(members, batch, classes)``:

- predictive mean ``p̄ = mean_m p_m``;
- predictive entropy ``H[p̄]`` (total uncertainty);
- expected entropy ``mean_m H[p_m]`` (aleatoric part);
- mutual information ``H[p̄] - mean_m H[p_m] = mean_m KL(p_m || p̄)`` (the
  members' disagreement, epistemic part; BALD, Houlsby et al. 2011);
- vote disagreement: the fraction of members whose argmax differs from
  the argmax of ``p̄``.

Entropies are in nats.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jdl.train.loop import EarlyStopping
from jdl.train.objective import StatefulLoss
from jdl.train.restarts import fit_restarts

__all__ = [
    "Ensemble", "Uncertainty", "disagreement", "entropy", "expected_entropy", "fit_ensemble",
    "member_probabilities", "mutual_information", "predictive_entropy", "predictive_mean",
    "uncertainty",
]


class Ensemble(NamedTuple):
    """What :func:`fit_ensemble` returns.

    Attributes:
      params: every member's params, leaves ``(members, ...)``.
      model_state: every member's model state, leaves ``(members, ...)``.
      histories: ``{"loss", "val_loss", ...}`` arrays of shape ``(members, epochs)``.
      val_losses: ``(members,)`` validation loss of each member.
    """

    params: Any
    model_state: Any
    histories: dict
    val_losses: np.ndarray


def fit_ensemble(loss_fn: Callable | StatefulLoss, init_fn: Callable,
                 optimizer: optax.GradientTransformation, train_data: Any, *, keys: jax.Array,
                 epochs: int, batch_size: int, val_data: Any = None,
                 metrics: dict[str, Callable] | None = None, drop_last: bool = True,
                 early_stopping: EarlyStopping | None = None, epochs_per_call: int = 10,
                 quiet: bool = False) -> Ensemble:
    """Train one member per key in one vmapped program and keep them all (a deep ensemble).

    Member ``m`` with key ``k_m`` is :func:`jdl.train.fit` of
    ``init_fn(k_init)`` with ``key=k_run`` (``k_init, k_run =
    jax.random.split(k_m)``): its own initialisation, permutations and dropout.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` or a
        :class:`~jdl.train.StatefulLoss`.
      init_fn: ``init_fn(key) -> params`` (``-> (params, model_state)`` for a
        stateful loss).
      optimizer: any optax transformation, shared by the members.
      train_data: pytree with a leading example axis, shared by the members.
      keys: ``(members,)`` PRNG keys, e.g. ``jax.random.split(key, 5)``.
      epochs, batch_size, metrics, drop_last, early_stopping, epochs_per_call,
        quiet: as for :func:`jdl.train.fit`.
      val_data: validation pytree; ``train_data`` if None (then
        ``val_losses`` are training losses).

    Returns:
      An :class:`Ensemble`.
    """
    result = fit_restarts(loss_fn, init_fn, optimizer, train_data,
                          train_data if val_data is None else val_data, keys=keys,
                          epochs=epochs, batch_size=batch_size, metrics=metrics,
                          drop_last=drop_last, early_stopping=early_stopping,
                          epochs_per_call=epochs_per_call, quiet=quiet)
    return Ensemble(result.all_params, result.all_model_states, result.histories,
                    result.val_losses)


def member_probabilities(apply_fn: Callable, params: Any, x: ArrayLike) -> jax.Array:
    """Softmax outputs of every member: ``softmax(apply_fn(params_m, x))``.

    Args:
      apply_fn: ``apply_fn(params, x) -> (batch, classes)`` logits, e.g.
        ``lambda p, x: model.apply(p, x)[0]``.
      params: the members' params, leaves ``(members, ...)`` (``Ensemble.params``).
      x: inputs ``(batch, ...)``, shared by the members.

    Returns:
      Probabilities of shape ``(members, batch, classes)``.
    """
    return jax.vmap(lambda p: jax.nn.softmax(apply_fn(p, x), axis=-1))(params)


def _probs(fn_name: str, probs: ArrayLike) -> jax.Array:
    probs = jnp.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"{fn_name}: expected member probabilities of shape "
                         f"(members, batch, classes), got shape {probs.shape}")
    return probs


def entropy(p: ArrayLike, axis: int = -1) -> jax.Array:
    """Shannon entropy ``-sum p log p`` along ``axis`` (``0 log 0 = 0``), in nats."""
    p = jnp.asarray(p)
    return -jnp.sum(jax.scipy.special.xlogy(p, p), axis=axis)


def predictive_mean(probs: ArrayLike) -> jax.Array:
    """``p̄ = mean_m p_m``: ``(members, batch, classes) -> (batch, classes)``."""
    return jnp.mean(_probs("predictive_mean", probs), axis=0)


def predictive_entropy(probs: ArrayLike) -> jax.Array:
    """``H[p̄]``, the total uncertainty: ``(members, batch, classes) -> (batch,)``."""
    return entropy(predictive_mean(_probs("predictive_entropy", probs)))


def expected_entropy(probs: ArrayLike) -> jax.Array:
    """``mean_m H[p_m]``, the members' average uncertainty: ``-> (batch,)``."""
    return jnp.mean(entropy(_probs("expected_entropy", probs)), axis=0)


def mutual_information(probs: ArrayLike) -> jax.Array:
    """``H[p̄] - mean_m H[p_m]`` (``= mean_m KL(p_m || p̄) >= 0``), the members' disagreement.

    Zero when all members agree exactly; at most ``min(log classes, log members)``.

    Args:
      probs: member probabilities ``(members, batch, classes)``.

    Returns:
      ``(batch,)``, clipped at 0 against rounding.
    """
    probs = _probs("mutual_information", probs)
    return jnp.maximum(predictive_entropy(probs) - expected_entropy(probs), 0.0)


def disagreement(probs: ArrayLike) -> jax.Array:
    """Fraction of members whose predicted class differs from the ensemble's: ``-> (batch,)``."""
    probs = _probs("disagreement", probs)
    votes = jnp.argmax(probs, axis=-1)
    consensus = jnp.argmax(jnp.mean(probs, axis=0), axis=-1)
    return jnp.mean(votes != consensus[None, :], axis=0).astype(probs.dtype)


class Uncertainty(NamedTuple):
    """Every summary of member probabilities; each field but ``mean`` has shape ``(batch,)``.

    Attributes:
      mean: predictive mean ``(batch, classes)``.
      predictive_entropy: ``H[p̄]``.
      expected_entropy: ``mean_m H[p_m]``.
      mutual_information: their difference.
      disagreement: vote disagreement.
    """

    mean: jax.Array
    predictive_entropy: jax.Array
    expected_entropy: jax.Array
    mutual_information: jax.Array
    disagreement: jax.Array


def uncertainty(probs: ArrayLike) -> Uncertainty:
    """All of :class:`Uncertainty` from member probabilities ``(members, batch, classes)``."""
    probs = _probs("uncertainty", probs)
    total, aleatoric = predictive_entropy(probs), expected_entropy(probs)
    return Uncertainty(predictive_mean(probs), total, aleatoric,
                       jnp.maximum(total - aleatoric, 0.0), disagreement(probs))
