"""Inverted dropout (Srivastava et al., JMLR 2014): ``rate`` is the DROP probability."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdl.nn.core import Layer


def dropout(rate: float) -> Layer:
    """Zero each unit with probability ``rate`` in training; identity in evaluation.

    Kept units are scaled by ``1 / (1 - rate)`` so that ``E[y] = x`` and
    evaluation needs no rescaling. Unlike ``stax.Dropout`` (keep probability),
    ``rate`` is the probability of dropping, as in Flax and PyTorch.

    Args:
      rate: drop probability, ``0 <= rate < 1``.

    Returns:
      A parameter-free :class:`Layer` of kind ``"dropout"`` with config
      ``{"rate"}``; output shape = input shape. In training call it as
      ``apply(params, x, key=key, train=True)`` with a fresh PRNG key per step.

    Raises:
      ValueError: for ``rate`` outside ``[0, 1)``; at ``apply`` with
        ``train=True``, ``rate > 0`` and no ``key``.
    """
    if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: expected a drop probability 0 <= rate < 1, got {rate!r}")

    def init(key, input_shape, dtype=None):
        del key, dtype
        return tuple(input_shape), {}, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del params
        x = jnp.asarray(x)
        state = {} if state is None else state
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise ValueError(
                "dropout: train=True needs a PRNG key; call "
                "apply(params, x, key=jax.random.key(...), train=True), or train=False for "
                "evaluation; got key=None")
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state

    return Layer(init, apply, "dropout", {"rate": rate})
