"""Regularisers of the notes: weight decay, dropout, matrix norms, spectral norm, Lipschitz bound.

The notes: "introduce weight decay that penalizes the size of weights in the
loss function ... this works because the norm of the weights are an upper
bound to the gradient of the function". This module gives that penalty in
both forms (an optax transform and a loss term, which take the same steps
under SGD), the notes' two matrix norms with their inequality, the spectral
norm (the tightest such bound for one layer) by power iteration, spectral-norm
regularisation, and the product bound on an MLP's Lipschitz constant.

Dropout is the layer :func:`jdl.nn.dropout` (``rate`` = drop probability),
re-exported here as :data:`dropout`.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jdl import regularize
    >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0]])
    >>> float(regularize.spectral_norm(w).sigma)
    3.0
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jdl.nn.core import Layer
from jdl.nn.dropout import dropout
from jdl.train.objective import StatefulLoss

__all__ = [
    "ACTIVATION_LIPSCHITZ", "SpectralNorm", "add_penalty", "dropout", "frobenius_norm",
    "kernel_mask", "l2_penalty", "lipschitz_bound", "mixed_norm", "spectral_norm",
    "spectral_penalty", "weight_decay",
]


def _check_rate(fn_name: str, name: str, value) -> None:
    """Raise unless a concrete ``value`` is ``>= 0``; tracers pass unchecked."""
    try:
        bad = float(value) < 0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if bad:
        raise ValueError(f"{fn_name}: expected {name} >= 0, got {value!r}")


def kernel_mask(params: Any) -> Any:
    """``True`` for the leaves of ``params`` with two or more axes (kernels), ``False`` otherwise.

    Weight decay and norm penalties usually skip biases and normalisation
    scales (vectors); pass this as ``mask`` to :func:`weight_decay` or
    :func:`l2_penalty`.

    Args:
      params: any pytree of arrays.

    Returns:
      A pytree of bools with the structure of ``params``.
    """
    return jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, params)


def _masked_leaves(params: Any, mask: Any) -> list:
    if mask is None:
        return jax.tree.leaves(params)
    mask = mask(params) if callable(mask) else mask
    flags = jax.tree.leaves(mask)
    leaves = jax.tree.leaves(params)
    if len(flags) != len(leaves):
        raise ValueError(
            f"l2_penalty: expected a mask with one bool per params leaf ({len(leaves)}), "
            f"got {len(flags)}")
    return [leaf for leaf, keep in zip(leaves, flags) if keep]


def weight_decay(rate: float, *, mask: Any = None) -> optax.GradientTransformation:
    """Weight decay as an optax transform: add ``rate * w`` to every gradient.

    This is ``optax.add_decayed_weights`` (nothing re-implemented): chain it
    *before* the optimiser, ``optax.chain(weight_decay(1e-4), optax.sgd(lr))``,
    to get the SGD step ``w -= lr (g + rate w)``, the gradient step of the loss
    plus :func:`l2_penalty` with the same ``rate`` (Krogh & Hertz, 1992). Placed
    after Adam's scaling (``optax.chain(optax.scale_by_adam(), weight_decay(r),
    optax.scale(-lr))``) it is decoupled decay instead, as ``optax.adamw``
    (Loshchilov & Hutter, 2019); the two differ for Adam.

    Args:
      rate: decay coefficient ``>= 0``.
      mask: optional pytree of bools (or a function of params returning one,
        e.g. :func:`kernel_mask`) selecting the decayed leaves.

    Returns:
      An ``optax.GradientTransformation`` (stateless).

    Raises:
      ValueError: for ``rate < 0``.
    """
    _check_rate("weight_decay", "rate", rate)
    return optax.add_decayed_weights(rate, mask)


def l2_penalty(params: Any, rate: float, *, mask: Any = None) -> jax.Array:
    """Weight decay as a loss term: ``rate / 2 * sum_w ||w||²`` (its gradient is ``rate * w``).

    ``jdl.losses.weight_restriction`` is the notes' autoencoder form without the
    ``1/2``. Add it to a loss with :func:`add_penalty`.

    Args:
      params: pytree of arrays.
      rate: coefficient ``>= 0``.
      mask: as for :func:`weight_decay`; ``None`` penalises every leaf.

    Returns:
      A scalar.

    Raises:
      ValueError: for ``rate < 0`` or a mask that does not match ``params``.
    """
    _check_rate("l2_penalty", "rate", rate)
    leaves = _masked_leaves(params, mask)
    if not leaves:
        raise ValueError("l2_penalty: expected at least one penalised array, got none")
    return 0.5 * rate * sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)


def add_penalty(loss_fn: Callable | StatefulLoss, penalty: Callable[[Any], jax.Array]
                ) -> Callable | StatefulLoss:
    """``loss_fn`` plus ``penalty(params)``, in the same form (plain or stateful).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` or a
        :class:`~jdl.train.StatefulLoss`.
      penalty: ``penalty(params) -> scalar``, e.g.
        ``lambda p: l2_penalty(p, 1e-4, mask=kernel_mask)``.

    Returns:
      A loss of the same form as ``loss_fn``, usable with :func:`jdl.train.fit`.
    """
    if not callable(penalty):
        raise TypeError(f"add_penalty: expected a callable penalty, got {type(penalty).__name__}")
    if isinstance(loss_fn, StatefulLoss):
        def fn(params, model_state, batch, key, train):
            loss, new_state = loss_fn.fn(params, model_state, batch, key, train)
            return loss + penalty(params), new_state

        return StatefulLoss(fn)
    if not callable(loss_fn):
        raise TypeError(f"add_penalty: expected a callable loss_fn, got {type(loss_fn).__name__}")

    def plain(params, batch):
        return loss_fn(params, batch) + penalty(params)

    return plain


# --- matrix norms ------------------------------------------------------------


def _matrix(fn_name: str, m: ArrayLike) -> jax.Array:
    m = jnp.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"{fn_name}: expected a matrix of shape (rows, cols), got shape {m.shape}")
    return m


def frobenius_norm(m: ArrayLike) -> jax.Array:
    """The notes' Frobenius norm ``||M||_F = sqrt(sum_i sum_j |v_ij|²)``.

    It bounds the spectral norm: ``||M x||_2 <= ||M||_F ||x||_2``.

    Args:
      m: matrix of shape ``(rows, cols)``.

    Returns:
      A scalar.
    """
    m = _matrix("frobenius_norm", m)
    return jnp.sqrt(jnp.sum(jnp.square(jnp.abs(m))))


def mixed_norm(m: ArrayLike, *, inner_axis: int = 0) -> jax.Array:
    """The notes' mixed norm ``sqrt(sum_i (sum_j |v_ij|)²)``, ``j`` running over ``inner_axis``.

    With the default ``inner_axis=0`` and a jdl kernel ``(in, out)`` (``y = x @
    w``), ``i`` is an output unit and ``j`` its inputs: then ``|y_i| <= sum_j
    |w_ji| ||x||_inf`` and ``||y||_2 <= mixed_norm(w) ||x||_inf``. By
    Cauchy-Schwarz, ``(sum_j |v_ij|)² <= h sum_j |v_ij|²`` with ``h`` the
    length of the inner axis, so ``mixed_norm(m) <= sqrt(h) frobenius_norm(m)``.

    Args:
      m: matrix of shape ``(rows, cols)``.
      inner_axis: the summed axis ``j`` (0 or 1).

    Returns:
      A scalar.
    """
    m = _matrix("mixed_norm", m)
    if inner_axis not in (0, 1, -1, -2):
        raise ValueError(f"mixed_norm: expected inner_axis 0 or 1, got {inner_axis!r}")
    return jnp.sqrt(jnp.sum(jnp.square(jnp.sum(jnp.abs(m), axis=inner_axis))))


class SpectralNorm(NamedTuple):
    """What :func:`spectral_norm` returns.

    Attributes:
      sigma: the largest singular value, a scalar; differentiable in ``w``
        with gradient ``u v^T`` (the exact gradient once converged).
      u: left singular vector, shape ``(rows,)``; pass it back as ``u`` to
        warm-start the next call.
      v: right singular vector, shape ``(cols,)``.
      iterations: number of power iterations run.
    """

    sigma: jax.Array
    u: jax.Array
    v: jax.Array
    iterations: jax.Array


def _normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(x.dtype).tiny)


def _as_matrix(fn_name: str, w: ArrayLike) -> jax.Array:
    w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"{fn_name}: expected a kernel with at least 2 axes, got shape {w.shape}")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{fn_name}: expected a float kernel, got dtype {w.dtype}")
    return w.reshape(-1, w.shape[-1])


def spectral_norm(w: ArrayLike, *, num_iters: int = 100, tol: float = 0.0,
                  u: ArrayLike | None = None, key: jax.Array | None = None) -> SpectralNorm:
    """The largest singular value of ``w`` by power iteration (von Mises), in one ``while_loop``.

    Each iteration is ``v = normalise(W^T u); u = normalise(W v)`` and the
    estimate is ``sigma = u^T W v``; the loop stops after ``num_iters``
    iterations or once ``|sigma_k - sigma_{k-1}| <= tol * sigma_k``. A kernel
    with more axes (conv ``HWIO``) is read as the matrix ``(H*W*I, O)``, as in
    Miyato et al. (2018); that is not the operator norm of the convolution.
    The iteration runs on ``stop_gradient(w)``; ``sigma = u^T W v`` with fixed
    ``u, v`` is differentiable, with the gradient ``u v^T`` of Yoshida &
    Miyato (2017).

    Args:
      w: kernel of shape ``(rows, cols)`` or ``(..., cols)``.
      num_iters: most power iterations (``>= 1``); ``1`` with a warm-started
        ``u`` is the one-step update used during training.
      tol: relative change of ``sigma`` that stops the loop early (``0``: run
        all ``num_iters``).
      u: starting left vector ``(rows,)``, e.g. the ``u`` of the last call.
      key: PRNG key for a random start when ``u`` is None
        (``jax.random.key(0)`` if also None).

    Returns:
      A :class:`SpectralNorm` ``(sigma, u, v, iterations)``.

    Raises:
      ValueError: for a kernel with fewer than 2 axes, ``num_iters < 1``,
        ``tol < 0``, or ``u`` of the wrong shape.
    """
    m = _as_matrix("spectral_norm", w)
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"spectral_norm: expected an int num_iters >= 1, got {num_iters!r}")
    _check_rate("spectral_norm", "tol", tol)
    if u is None:
        key = jax.random.key(0) if key is None else key
        u = jax.random.normal(key, (m.shape[0],), m.dtype)
    u = jnp.asarray(u, m.dtype)
    if u.shape != (m.shape[0],):
        raise ValueError(f"spectral_norm: expected u of shape ({m.shape[0]},), got {u.shape}")
    fixed = jax.lax.stop_gradient(m)

    def cond(carry):
        _, _, sigma, previous, i = carry
        return (i < num_iters) & ((i == 0) | (jnp.abs(sigma - previous) > tol * sigma))

    def body(carry):
        u, _, sigma, _, i = carry
        v = _normalize(fixed.T @ u)
        wv = fixed @ v
        return _normalize(wv), v, jnp.linalg.norm(wv), sigma, i + 1

    zero = jnp.zeros((), m.dtype)
    init = (_normalize(u), jnp.zeros((m.shape[1],), m.dtype), zero, zero, jnp.array(0))
    u, v, _, _, iterations = jax.lax.while_loop(cond, body, init)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    return SpectralNorm(u @ m @ v, u, v, iterations)


def spectral_penalty(params: Any, rate: float, *, num_iters: int = 20,
                     vectors: Any = None) -> tuple[jax.Array, Any]:
    """Spectral-norm regularisation ``rate / 2 * sum_l sigma(W_l)²`` over the kernels.

    Yoshida & Miyato (2017), "Spectral Norm Regularization for Improving the
    Generalizability of Deep Learning": the penalty's gradient for layer ``l``
    is ``rate * sigma_l u_l v_l^T``. Kernels are the leaves with two or more
    axes (see :func:`kernel_mask`); biases are free.

    Args:
      params: pytree of arrays.
      rate: coefficient ``>= 0``.
      num_iters: power iterations per kernel (see :func:`spectral_norm`).
      vectors: the ``vectors`` returned by the last call, to warm-start (then
        ``num_iters=1`` per training step suffices, as in the paper); ``None``
        starts each kernel from a fixed random vector.

    Returns:
      ``(penalty, vectors)``: a scalar and a list of left vectors, one per kernel.

    Raises:
      ValueError: for ``rate < 0``, no kernel in ``params``, or ``vectors``
        of the wrong length.

    Example:
      >>> loss = add_penalty(loss_fn, lambda p: spectral_penalty(p, 0.01)[0])  # doctest: +SKIP
    """
    _check_rate("spectral_penalty", "rate", rate)
    kernels = [leaf for leaf in jax.tree.leaves(params) if jnp.ndim(leaf) >= 2]
    if not kernels:
        raise ValueError("spectral_penalty: expected params with at least one kernel "
                         "(an array with 2 or more axes), got none")
    if vectors is not None and len(vectors) != len(kernels):
        raise ValueError(f"spectral_penalty: expected {len(kernels)} vectors (one per kernel), "
                         f"got {len(vectors)}")
    starts = [None] * len(kernels) if vectors is None else list(vectors)
    keys = jax.random.split(jax.random.key(0), len(kernels))
    results = [spectral_norm(w, num_iters=num_iters, u=u0, key=k)
               for w, u0, k in zip(kernels, starts, keys)]
    penalty = 0.5 * rate * sum(jnp.square(r.sigma) for r in results)
    return penalty, [r.u for r in results]


# --- Lipschitz bound ---------------------------------------------------------

#: Lipschitz constants (in the 2-norm) of the element-wise activations and softmax.
ACTIVATION_LIPSCHITZ: dict[str, float] = {
    "relu": 1.0,
    "tanh": 1.0,
    "sigmoid": 0.25,
    "identity": 1.0,
    "scaled_tanh": 1.7159 * 2.0 / 3.0,
    "softmax": 1.0,  # Gao & Pavel (2017)
}


def _layer_bound(fn_name: str, layer: Layer, params: Any, norm: str):
    kind = layer.kind
    if kind == "serial":
        total = jnp.ones(())
        for name, child in zip(layer.names, layer.children):
            total = total * _layer_bound(fn_name, child, params[name], norm)
        return total
    if kind == "residual":
        block = _layer_bound(fn_name, layer.children[0], params["block"], norm)
        short = (jnp.ones(()) if len(layer.children) == 1 else _layer_bound(
            fn_name, layer.children[1], params["shortcut"], norm))
        return block + short
    if kind == "dense":
        w = params["w"]
        if norm == "frobenius":
            return frobenius_norm(w)
        # exact (LAPACK SVD), not power iteration: that approaches sigma from
        # below, and an unconverged estimate would not be an upper bound
        return jnp.linalg.norm(w, 2)
    if kind == "activation":
        name = layer.config.get("name")
        if name not in ACTIVATION_LIPSCHITZ:
            raise ValueError(
                f"{fn_name}: no Lipschitz constant for activation {name!r}; expected one of "
                f"{sorted(ACTIVATION_LIPSCHITZ)}")
        return jnp.asarray(ACTIVATION_LIPSCHITZ[name])
    if kind in ("dropout", "flatten", "gradient_reversal"):
        # identity in evaluation (dropout), a reshape, or identity forward
        return jnp.ones(())
    raise ValueError(
        f"{fn_name}: unsupported layer kind {kind!r}; expected serial, residual, dense, "
        f"activation ({sorted(ACTIVATION_LIPSCHITZ)}), dropout, flatten or gradient_reversal")


def lipschitz_bound(model: Layer, params: Any, *, norm: str = "spectral") -> jax.Array:
    """An upper bound on the 2-norm Lipschitz constant of an MLP, from its weight norms.

    ``Lip(f_L o ... o f_1) <= prod_l Lip(f_l)``: a dense layer contributes
    ``||W||_2`` (its spectral norm, or the larger Frobenius norm), an
    activation its constant (:data:`ACTIVATION_LIPSCHITZ`), a residual block
    ``Lip(block) + Lip(shortcut)``. Hence ``||grad_x f_k(x)||_2 <= bound`` for
    every output ``k`` and input ``x`` (Szegedy et al., 2014, section 4.3).

    Args:
      model: a jdl layer built from ``serial``, ``residual``, ``dense``,
        ``activation``, ``dropout``, ``flatten`` and ``gradient_reversal``.
      params: its params.
      norm: ``"spectral"`` (tightest; the exact largest singular value of
        each kernel from an SVD) or ``"frobenius"``.

    Returns:
      A scalar.

    Raises:
      ValueError: for another layer kind (conv, batch norm), an activation
        without a known constant, or an unknown ``norm``.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"lipschitz_bound: expected a jdl Layer, got {type(model).__name__}")
    if norm not in ("spectral", "frobenius"):
        raise ValueError(f"lipschitz_bound: expected norm 'spectral' or 'frobenius', got {norm!r}")
    return _layer_bound("lipschitz_bound", model, params, norm)

