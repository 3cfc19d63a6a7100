"""Curvature operators: the Hessian and the Gauss-Newton matrix as matrix-free products.

Every routine of :mod:`jdl.hessian` reads a curvature matrix only through its
products with vectors, built here:

* the Hessian-vector product ``H v`` by forward-over-reverse differentiation,
  ``jvp(grad(L))`` (Pearlmutter, "Fast exact multiplication by the Hessian",
  Neural Computation 1994), one pass of the cost of about two gradients;
* the generalised Gauss-Newton product ``G v = J^T H_l J v`` (Schraudolph,
  "Fast curvature matrix-vector products for second-order gradient descent",
  Neural Computation 2002), for a loss split as ``l(f(params, batch), batch)``
  (a :class:`SplitLoss`), with ``J`` the Jacobian of the outputs ``f`` and
  ``H_l`` the Hessian of ``l`` in the outputs, both by autodiff.

``data`` is one batch or a Python ``list`` of batches; the loss is then the
mean over every example of every batch, each batch weighted by its size, so
``H`` is exact even when the data do not fit one device call. Batches of equal
shapes are stacked and scanned (one compiled body, whatever their number).
A ``tuple`` is one batch (e.g. ``(x, y)``), never a sequence of batches.

Vectors are flat arrays of the parameters' common float dtype, in the order of
:func:`jax.flatten_util.ravel_pytree`; results come back as pytrees like
``params``.

Products are traced at full matmul precision (``"highest"``) unless the caller
has set ``jax_default_matmul_precision``: XLA's default on GPUs (TF32) and TPUs
(bfloat16 passes) rounds float32 products to ~1e-3, which would cap the
accuracy of every eigenvalue, trace and density built on them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

CURVATURES = ("hessian", "ggn")


class SplitLoss(NamedTuple):
    """A loss written as ``output_loss(output_fn(params, batch), batch)``, needed for the GGN.

    Calling it computes the loss, so it is also an ordinary ``loss_fn``.

    Attributes:
      output_fn: ``output_fn(params, batch) -> outputs``, e.g. the logits of
        shape ``(batch, classes)``.
      output_loss: ``output_loss(outputs, batch) -> scalar``, the mean loss
        over the batch, e.g. ``lambda logits, b: losses.softmax_cross_entropy(logits, b[1])``.

    Example:
      >>> from jdl import losses
      >>> loss_fn = SplitLoss(lambda p, b: b[0] @ p["w"],
      ...                     lambda out, b: losses.mse(out, b[1]))
    """

    output_fn: Callable[[Any, Any], Any]
    output_loss: Callable[[Any, Any], jax.Array]

    def __call__(self, params, batch):
        return self.output_loss(self.output_fn(params, batch), batch)


class One(NamedTuple):
    """One batch of data (a pytree with leading example axis)."""

    batch: Any


class Stacked(NamedTuple):
    """Equal-shaped batches stacked on a new leading axis ``(num_batches, batch, ...)``."""

    batches: Any


class Operator(NamedTuple):
    """What to differentiate: static (hashable) part of a curvature operator.

    Attributes:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (a :class:`SplitLoss` for the GGN).
      curvature: ``"hessian"`` or ``"ggn"``.
      block: ``None`` for all parameters, or a key path (tuple of keys) to the
        sub-tree the operator acts on; the other parameters stay fixed.
    """

    loss_fn: Callable
    curvature: str = "hessian"
    block: tuple | None = None


# --- data ---------------------------------------------------------------------


def _leading_size(fn_name: str, batch: Any) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError(f"{fn_name}: expected a batch with at least one array, got {batch!r}")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{fn_name}: expected every array of a batch to share a leading example axis, "
            f"got shapes {[np.shape(leaf) for leaf in leaves]}")
    return sizes.pop()


def prepare_data(fn_name: str, data: Any) -> tuple:
    """``data`` (one batch or a list of batches) as a tuple of :class:`One` or :class:`Stacked`.

    Raises:
      ValueError: for an empty list, or arrays without a common leading axis.
    """
    if isinstance(data, (One, Stacked)):
        return (data,)
    if isinstance(data, tuple) and data and all(isinstance(g, (One, Stacked)) for g in data):
        return data
    if not isinstance(data, list):
        _leading_size(fn_name, data)
        return (One(data),)
    if not data:
        raise ValueError(f"{fn_name}: expected a non-empty list of batches, got []")
    groups: dict[Any, list] = {}
    for batch in data:
        _leading_size(fn_name, batch)
        leaves, treedef = jax.tree.flatten(batch)
        signature = (treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
        groups.setdefault(signature, []).append(batch)
    prepared = []
    for batches in groups.values():
        if len(batches) == 1:
            prepared.append(One(batches[0]))
        else:
            prepared.append(Stacked(jax.tree.map(lambda *xs: jnp.stack(xs), *batches)))
    return tuple(prepared)


def first_batch(data: tuple) -> Any:
    """The first batch of prepared ``data``."""
    group = data[0]
    if isinstance(group, One):
        return group.batch
    return jax.tree.map(lambda x: x[0], group.batches)


def num_examples(data: tuple) -> int:
    """Total number of examples of prepared ``data`` (static shapes only)."""
    total = 0
    for group in data:
        if isinstance(group, One):
            total += jax.tree.leaves(group.batch)[0].shape[0]
        else:
            shape = jax.tree.leaves(group.batches)[0].shape
            total += shape[0] * shape[1]
    return total


def data_mean(fn: Callable[[Any], Any], data: tuple) -> Any:
    """The example-weighted mean of ``fn(batch)`` (a pytree) over prepared ``data``.

    Each batch's value is weighted by its number of examples over the total,
    so for a per-batch mean loss the result is the mean over all examples.
    """
    total = num_examples(data)
    result = None
    for group in data:
        if isinstance(group, One):
            size = jax.tree.leaves(group.batch)[0].shape[0]
            part = fn(group.batch)
        else:
            size = jax.tree.leaves(group.batches)[0].shape[1]
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(fn, first_batch((group,))))
            part, _ = jax.lax.scan(
                lambda acc, batch: (jax.tree.map(jnp.add, acc, fn(batch)), None),
                zeros, group.batches)
        part = jax.tree.map(lambda x: x * (size / total), part)
        result = part if result is None else jax.tree.map(jnp.add, result, part)
    return result


# --- parameter blocks ---------------------------------------------------------


def as_block(fn_name: str, block: Any) -> tuple | None:
    """``block`` (None, a key, or a sequence of keys) as a hashable key path."""
    if block is None:
        return None
    if isinstance(block, (str, int)):
        return (block,)
    if isinstance(block, (tuple, list)) and block:
        return tuple(block)
    raise ValueError(
        f"{fn_name}: expected block to be None, a key or a non-empty tuple of keys, got {block!r}")


def select(params: Any, block: tuple | None) -> Any:
    """The sub-tree of ``params`` at key path ``block`` (all of ``params`` for None)."""
    if block is None:
        return params
    for key in block:
        params = params[key]
    return params


def replace(params: Any, block: tuple | None, sub: Any) -> Any:
    """A copy of ``params`` with the sub-tree at ``block`` replaced by ``sub``."""
    if not block:
        return sub
    key, rest = block[0], block[1:]
    if isinstance(params, Mapping):
        new = dict(params)
        new[key] = replace(params[key], rest, sub)
        return type(params)(new) if not isinstance(params, dict) else new
    if isinstance(params, (list, tuple)):
        items = list(params)
        items[key] = replace(params[key], rest, sub)
        return type(params)(items) if not hasattr(params, "_fields") else type(params)(*items)
    raise TypeError(f"replace: cannot index {type(params).__name__} with key {key!r}")


# --- validation ---------------------------------------------------------------


def _signature(tree: Any) -> tuple:
    """A hashable description of a pytree of arrays: its structure, each leaf's shape and dtype."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


@functools.lru_cache(maxsize=256)
def _loss_output(loss_fn: Callable, params_signature: tuple, batch_signature: tuple):
    """``jax.eval_shape`` of ``loss_fn`` once per signature of params and batch.

    A repeated check of the same problem then costs a signature (~0.05 ms)
    instead of a trace (~1.7 ms on the benchmark MLP, ~0.4 ms even when JAX
    reuses the trace).
    """
    def structs(signature):
        treedef, leaves = signature
        return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*leaf) for leaf in leaves])

    return jax.eval_shape(lambda p, b: loss_fn(p, b), structs(params_signature),
                          structs(batch_signature))


def check_problem(fn_name: str, operator: Operator, params: Any, data: Any) -> tuple:
    """Validate a curvature problem; returns the prepared data.

    Raises:
      ValueError: for an unknown curvature, a GGN without a :class:`SplitLoss`,
        an unhashable loss, an unknown block, params with non-float leaves, bad
        data, or a loss that is not a float scalar.
    """
    if operator.curvature not in CURVATURES:
        raise ValueError(
            f"{fn_name}: expected curvature to be one of {CURVATURES}, got {operator.curvature!r}")
    if operator.curvature == "ggn" and not isinstance(operator.loss_fn, SplitLoss):
        raise ValueError(
            f"{fn_name}: curvature='ggn' needs loss_fn to be a SplitLoss(output_fn, output_loss), "
            f"got {type(operator.loss_fn).__name__}")
    if not callable(operator.loss_fn):
        raise ValueError(f"{fn_name}: expected a callable loss_fn, got {operator.loss_fn!r}")
    try:
        hash(operator.loss_fn)
    except TypeError:
        raise ValueError(
            f"{fn_name}: expected a hashable loss_fn (it keys the compiled program), got an "
            f"unhashable {type(operator.loss_fn).__name__}; wrap it in a function") from None
    try:
        sub = select(params, operator.block)
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(
            f"{fn_name}: block {operator.block!r} is not a key path of params ({err!r})") from None
    leaves = jax.tree_util.tree_leaves_with_path(sub)
    if not leaves:
        raise ValueError(f"{fn_name}: expected params with at least one array, got {sub!r}")
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{fn_name}: expected float params, got dtype {dtype} at "
                f"{jax.tree_util.keystr(path)}")
    prepared = prepare_data(fn_name, data)
    out = _loss_output(operator.loss_fn, _signature(params), _signature(first_batch(prepared)))
    if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"{fn_name}: expected loss_fn(params, batch) to return a float scalar, got "
            f"{getattr(out, 'shape', out)} of dtype {getattr(out, 'dtype', type(out).__name__)}")
    return prepared


def is_traced(*trees: Any) -> bool:
    """True when any leaf is a tracer (inside a caller's ``jit``): values cannot be checked."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def check_finite(fn_name: str, what: str, value: Any) -> None:
    """Raise ``ValueError`` if a concrete leaf of the pytree ``value`` holds a NaN or infinity."""
    if is_traced(value):
        return
    for leaf in jax.tree.leaves(value):
        array = np.asarray(leaf)
        if not np.all(np.isfinite(array)):
            bad = array[~np.isfinite(array)].ravel()[0]
            raise ValueError(
                f"{fn_name}: non-finite {what} ({bad}); the loss or its curvature overflowed "
                f"or is undefined at these params")


# --- the operator -------------------------------------------------------------


def _matmul_precision():
    """Full matmul precision while tracing, unless the caller chose a default precision."""
    if jax.config.jax_default_matmul_precision is None:
        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def _per_batch_product(operator: Operator, params: Any, sub: Any, batch: Any, v_tree: Any):
    """One batch's curvature-vector product in the tree structure of ``sub``."""
    def full(s):
        return replace(params, operator.block, s)

    with _matmul_precision():
        if operator.curvature == "hessian":
            grad = jax.grad(lambda s: operator.loss_fn(full(s), batch))
            return jax.jvp(grad, (sub,), (v_tree,))[1]
        output_fn, output_loss = operator.loss_fn.output_fn, operator.loss_fn.output_loss
        outputs, jvp = jax.linearize(lambda s: output_fn(full(s), batch), sub)
        j_v = jvp(v_tree)
        h_j_v = jax.jvp(jax.grad(lambda o: output_loss(o, batch)), (outputs,), (j_v,))[1]
        return jax.linear_transpose(jvp, sub)(h_j_v)[0]


def matvec_fn(operator: Operator, params: Any, data: tuple):
    """The flat operator of a curvature problem, for use inside ``jit``.

    Returns:
      ``(matvec, x0, unravel)``: ``matvec(v)`` maps a flat vector of shape
      ``(n,)`` to the flat product ``C v``; ``x0`` is the flat block of params
      (giving ``n`` and the dtype); ``unravel`` maps a flat vector to a pytree
      like the block.
    """
    sub = select(params, operator.block)
    x0, unravel = ravel_pytree(sub)

    def matvec(v):
        v_tree = unravel(v)
        product = data_mean(lambda b: _per_batch_product(operator, params, sub, b, v_tree), data)
        return ravel_pytree(product)[0].astype(x0.dtype)

    return matvec, x0, unravel


@functools.partial(jax.jit, static_argnames=("operator",))
def _hvp(operator: Operator, params, data, v):
    sub = select(params, operator.block)
    return data_mean(lambda b: _per_batch_product(operator, params, sub, b, v), data)


@functools.partial(jax.jit, static_argnames=("operator",))
def _apply_twice(operator: Operator, params, data, v):
    first, _, _ = matvec_fn(operator, params, data)
    second, _, _ = matvec_fn(operator, params, data)
    return first(v), second(v)


def check_deterministic(fn_name: str, operator: Operator, params: Any, data: tuple,
                        key: jax.Array) -> None:
    """Apply the operator twice (tracing ``loss_fn`` twice) to one random vector; raise if unequal.

    A loss that draws fresh randomness each time it is traced or called
    (dropout with a changing key, train-mode statistics of changing batches)
    has no well-defined Hessian: Lanczos would silently mix different
    matrices.

    Raises:
      ValueError: if the two products differ by more than roundoff.
    """
    x0, _ = ravel_pytree(select(params, operator.block))
    v = jax.random.normal(key, x0.shape, x0.dtype)
    first, second = _apply_twice(operator, params, data, v)
    if is_traced(first):
        return
    first, second = np.asarray(first), np.asarray(second)
    diff = float(np.max(np.abs(first - second)))
    scale = float(np.max(np.abs(first))) if first.size else 0.0
    if not diff <= 100 * np.finfo(first.dtype).eps * max(scale, np.finfo(first.dtype).tiny):
        raise ValueError(
            f"{fn_name}: the curvature operator is not deterministic: two products with the same "
            f"vector differ by {diff:.3g} (max |Cv| = {scale:.3g}); loss_fn must be a pure "
            f"function of (params, batch), e.g. dropout off or with a fixed key")


def hvp(loss_fn: Callable, params: Any, data: Any, v: Any, *, curvature: str = "hessian",
        block: Any = None) -> Any:
    """The Hessian-vector product ``H v`` (or ``G v``) of the mean loss over ``data``.

    Forward-over-reverse (``jvp`` of ``grad``), compiled once per ``loss_fn``
    and averaged exactly over the examples of every batch.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of a batch
        (a :class:`SplitLoss` for ``curvature="ggn"``).
      params: any pytree of float arrays (jdl dicts, Flax variables, ...).
      data: one batch (pytree of arrays with leading example axis) or a list
        of batches.
      v: a pytree like ``params`` (like the block's sub-tree when ``block`` is
        given).
      curvature: ``"hessian"`` or ``"ggn"`` (generalised Gauss-Newton).
      block: optional key path of a sub-tree of ``params``: the product with
        that diagonal block of the matrix.

    Returns:
      ``H v``, a pytree like ``v``.

    Raises:
      ValueError: for bad input (see :func:`check_problem`), ``v`` not shaped
        like params, or a non-finite product.
    """
    operator = Operator(loss_fn, curvature, as_block("hvp", block))
    prepared = check_problem("hvp", operator, params, data)
    sub = select(params, operator.block)
    if jax.tree.structure(v) != jax.tree.structure(sub) or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(sub))):
        raise ValueError(
            f"hvp: expected v shaped like params {jax.tree.map(np.shape, sub)}, "
            f"got {jax.tree.map(np.shape, v)}")
    v = jax.tree.map(lambda a, p: a if isinstance(a, jax.Array) and a.dtype == jnp.result_type(p)
                     else jnp.asarray(a, jnp.result_type(p)), v, sub)
    result = _hvp(operator, params, prepared, v)
    check_finite("hvp", "Hessian-vector product", result)
    return result


def param_count(params: Any, block: tuple | None = None) -> int:
    """Number of scalars ``n`` in ``params`` (or in its sub-tree at ``block``)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(select(params, block))))


def flat_dtype(params: Any, block: tuple | None = None):
    """The dtype of the flat vectors: the common float dtype of the (block's) leaves."""
    return jnp.result_type(*jax.tree.leaves(select(params, block)))


def unravel_rows(params: Any, rows: np.ndarray) -> Any:
    """Flat vectors ``rows`` ``(k, n)`` as a pytree like ``params``, leaves ``(k, *leaf.shape)``.

    The inverse of :func:`jax.flatten_util.ravel_pytree` applied row by row,
    on the host; each leaf gets its parameter's dtype.
    """
    leaves, treedef = jax.tree.flatten(params)
    out, offset = [], 0
    for leaf in leaves:
        size = int(np.size(leaf))
        block = rows[:, offset:offset + size].reshape((rows.shape[0], *np.shape(leaf)))
        out.append(jnp.asarray(block, jnp.result_type(leaf)))
        offset += size
    return jax.tree.unflatten(treedef, out)
