"""Weight initialisers, looked up by name.

Each is a function ``init(key, shape, dtype) -> array`` from
``jax.nn.initializers`` (LeCun, Glorot/Xavier, He/Kaiming in normal and uniform
form, orthogonal, zeros, constant). The notes warn against zero and symmetric
initialisation (all hidden units stay identical); ``zeros`` and ``constant`` are
here so that claim can be tested.

References:
  LeCun et al., "Efficient BackProp" (1998); Glorot & Bengio (2010);
  He et al. (2015); Saxe et al., "Exact solutions ... deep linear networks" (2014).
"""

from __future__ import annotations

from typing import Callable

from jax.nn import initializers as _jinit

Initializer = Callable

lecun_normal = _jinit.lecun_normal()
lecun_uniform = _jinit.lecun_uniform()
glorot_normal = _jinit.glorot_normal()
glorot_uniform = _jinit.glorot_uniform()
he_normal = _jinit.he_normal()
he_uniform = _jinit.he_uniform()
orthogonal = _jinit.orthogonal()
zeros = _jinit.zeros
ones = _jinit.ones


def constant(value: float) -> Initializer:
    """An initialiser that fills every entry with ``value``."""
    return _jinit.constant(value)


def normal(stddev: float) -> Initializer:
    """Independent ``N(0, stddev^2)`` entries (to study the weight scale)."""
    return _jinit.normal(stddev)


_BY_NAME = {
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "orthogonal": orthogonal,
    "zeros": zeros,
    "ones": ones,
}


def get(init: str | Initializer) -> Initializer:
    """Resolve an initialiser given by name or as a function.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if callable(init):
        return init
    if init not in _BY_NAME:
        raise ValueError(
            f"initializers.get: unknown initialiser {init!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[init]
