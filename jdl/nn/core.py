"""The layer protocol and the combinators ``serial``, ``parallel`` and ``residual``.

A layer is a :class:`Layer`, a NamedTuple of two pure functions (after
``jax.example_libraries.stax``) plus a description that analysis code (LRP,
shape tools) reads:

``init(key, input_shape, dtype=None) -> (output_shape, params, state)``
    ``input_shape`` includes the leading batch axis (it may be ``-1``).
    ``params`` is a nested dict of trainable arrays; ``state`` a nested dict
    of non-trainable running statistics (batch norm); both are ``{}`` for a
    layer that has none. ``dtype`` defaults to JAX's default float.

``apply(params, x, *, state=None, key=None, train=False) -> (y, new_state)``
    ``state`` is the tree from ``init`` (``None`` is read as ``{}``), ``key`` a
    PRNG key for stochastic layers (dropout) in training, ``train`` switches
    batch statistics and dropout on. ``new_state`` has the structure of
    ``state``.

Example:
    >>> import jax
    >>> from jdl import nn
    >>> model = nn.serial(nn.dense(32), nn.activation("relu"), nn.dense(10))
    >>> out_shape, params, state = model.init(jax.random.key(0), (-1, 64))
    >>> out_shape
    (-1, 10)
    >>> y, _ = model.apply(params, jax.numpy.ones((5, 64)))
    >>> y.shape
    (5, 10)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]
Params = dict[str, Any]
State = dict[str, Any]


class Layer(NamedTuple):
    """A pure-function layer: ``init`` and ``apply`` plus what it is.

    Attributes:
      init: ``init(key, input_shape, dtype=None) -> (output_shape, params, state)``.
      apply: ``apply(params, x, *, state=None, key=None, train=False) -> (y, new_state)``.
      kind: the layer type, e.g. ``"dense"``, ``"conv2d"``, ``"serial"``.
      config: the constructor's arguments, read by analysis code such as LRP.
      children: the sub-layers of a combinator, in order; ``()`` otherwise.
      names: the params/state keys of ``children``; ``()`` otherwise.

    Layers compare and hash by identity (their functions are closures anyway),
    so a model can be a static argument of ``jax.jit`` and a cache key.
    """

    init: Callable[..., tuple[Shape, Params, State]]
    apply: Callable[..., tuple[Any, State]]
    kind: str = "custom"
    config: dict = {}
    children: tuple["Layer", ...] = ()
    names: tuple[str, ...] = ()

    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


def default_dtype(dtype=None):
    """``dtype`` if given, else JAX's default float (float64 under x64)."""
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)


def check_rank(fn_name: str, x, ranks: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``x.ndim`` is one of ``ranks``."""
    if jnp.ndim(x) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{fn_name}: expected {what} of rank {expected}, got shape {jnp.shape(x)}"
        )


def check_last_dim(fn_name: str, x, expected: int, what: str = "input") -> None:
    """Raise ``ValueError`` unless the last axis of ``x`` has size ``expected``."""
    if jnp.shape(x)[-1] != expected:
        raise ValueError(
            f"{fn_name}: expected {what} with last axis of size {expected}, "
            f"got shape {jnp.shape(x)}"
        )


def split_key(key, num: int):
    """``num`` keys from ``key``, or ``num`` Nones when ``key`` is None."""
    if key is None:
        return [None] * num
    return list(jax.random.split(key, num))


def stateless(kind: str, config: dict, init_shape: Callable[[Shape], Shape],
              fn: Callable) -> Layer:
    """A parameter-free layer ``y = fn(x)`` with output shape ``init_shape(in_shape)``."""

    def init(key, input_shape, dtype=None):
        del key, dtype
        return tuple(init_shape(tuple(input_shape))), {}, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del params, key, train
        return fn(x), ({} if state is None else state)

    return Layer(init, apply, kind, config)


def _child_names(layers) -> tuple[str, ...]:
    return tuple(f"{i}_{layer.kind}" for i, layer in enumerate(layers))


def serial(*layers: Layer) -> Layer:
    """Compose layers in sequence: ``y = layers[-1](... layers[0](x))``.

    Params and state are dicts keyed ``"{index}_{kind}"`` (e.g. ``"0_dense"``),
    so a params tree reads like the model. The key, when given, is split one
    per child.

    Args:
      *layers: the layers, first applied first.

    Returns:
      A :class:`Layer` of kind ``"serial"``.
    """
    if not layers:
        raise ValueError("serial: expected at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: expected Layer at position {i}, got {type(layer).__name__}")
    names = _child_names(layers)

    def init(key, input_shape, dtype=None):
        params, state = {}, {}
        shape = tuple(input_shape)
        for name, layer, k in zip(names, layers, jax.random.split(key, len(layers))):
            shape, params[name], state[name] = layer.init(k, shape, dtype)
        return shape, params, state

    def apply(params, x, *, state=None, key=None, train=False):
        state = {} if state is None else state
        new_state = {}
        for name, layer, k in zip(names, layers, split_key(key, len(layers))):
            x, new_state[name] = layer.apply(
                params[name], x, state=state.get(name, {}), key=k, train=train)
        return x, new_state

    return Layer(init, apply, "serial", {}, tuple(layers), names)


def parallel(*layers: Layer) -> Layer:
    """Apply ``layers[i]`` to the ``i``-th element of a tuple input; returns a tuple.

    Args:
      *layers: one layer per input.

    Returns:
      A :class:`Layer` of kind ``"parallel"`` whose input and output are tuples
      of length ``len(layers)``.
    """
    if not layers:
        raise ValueError("parallel: expected at least one layer, got none")
    names = _child_names(layers)

    def init(key, input_shape, dtype=None):
        if len(input_shape) != len(layers) or not all(isinstance(s, tuple) for s in input_shape):
            raise ValueError(
                f"parallel: expected a tuple of {len(layers)} input shapes, got {input_shape}")
        shapes, params, state = [], {}, {}
        for name, layer, s, k in zip(names, layers, input_shape,
                                      jax.random.split(key, len(layers))):
            out, params[name], state[name] = layer.init(k, s, dtype)
            shapes.append(out)
        return tuple(shapes), params, state

    def apply(params, xs, *, state=None, key=None, train=False):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(layers):
            raise ValueError(
                f"parallel: expected a tuple of {len(layers)} inputs, got {type(xs).__name__}")
        state = {} if state is None else state
        ys, new_state = [], {}
        for name, layer, x, k in zip(names, layers, xs, split_key(key, len(layers))):
            y, new_state[name] = layer.apply(
                params[name], x, state=state.get(name, {}), key=k, train=train)
            ys.append(y)
        return tuple(ys), new_state

    return Layer(init, apply, "parallel", {}, tuple(layers), names)


def residual(block: Layer, shortcut: Layer | None = None) -> Layer:
    """``y = block(x) + shortcut(x)``; the shortcut is the identity by default.

    Args:
      block: the residual branch.
      shortcut: an optional projection (e.g. a 1x1 ``conv2d``) used when the
        block changes the shape.

    Returns:
      A :class:`Layer` of kind ``"residual"`` with children ``("block",)`` or
      ``("block", "shortcut")``.

    Raises:
      ValueError: at ``init`` if the branch and shortcut shapes differ.
    """
    children = (block,) if shortcut is None else (block, shortcut)
    names = ("block",) if shortcut is None else ("block", "shortcut")

    def init(key, input_shape, dtype=None):
        k_block, k_short = jax.random.split(key)
        params, state = {}, {}
        out_block, params["block"], state["block"] = block.init(k_block, input_shape, dtype)
        out_short = tuple(input_shape)
        if shortcut is not None:
            out_short, params["shortcut"], state["shortcut"] = shortcut.init(
                k_short, input_shape, dtype)
        if tuple(out_block) != tuple(out_short):
            raise ValueError(
                f"residual: block output shape {tuple(out_block)} differs from shortcut "
                f"output shape {tuple(out_short)}; pass a shortcut projection")
        return tuple(out_block), params, state

    def apply(params, x, *, state=None, key=None, train=False):
        state = {} if state is None else state
        k_block, k_short = split_key(key, 2)
        new_state = {}
        y_block, new_state["block"] = block.apply(
            params["block"], x, state=state.get("block", {}), key=k_block, train=train)
        y_short = x
        if shortcut is not None:
            y_short, new_state["shortcut"] = shortcut.apply(
                params["shortcut"], x, state=state.get("shortcut", {}), key=k_short,
                train=train)
        return y_block + y_short, new_state

    return Layer(init, apply, "residual", {}, children, names)
