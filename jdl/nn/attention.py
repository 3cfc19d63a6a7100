"""Scaled dot-product self-attention, single- and multi-head.

The notes' steps: turn the input into queries, keys and values; multiply
queries with keys to get the attention scores; scale them by ``sqrt(d)`` so
they do not explode; mask what may not be looked at (the future, for a causal
model); softmax over the keys; take the weighted sum of the values.
(Vaswani et al., "Attention Is All You Need", 2017.)

Masks are boolean with ``True`` = may attend. A query whose keys are all
masked gets all-zero weights (and so a zero attention output) rather than NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jdl.nn import initializers
from jdl.nn.core import Layer, check_last_dim, check_rank, default_dtype


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike,
              mask: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
    """``softmax(q k^T / sqrt(d)) v`` with an optional boolean mask.

    Args:
      q: queries ``(..., tq, d)``.
      k: keys ``(..., tk, d)``.
      v: values ``(..., tk, dv)``.
      mask: optional boolean array broadcastable to ``(..., tq, tk)``;
        ``True`` where query ``i`` may attend to key ``j``.

    Returns:
      ``(out, weights)``: ``out`` of shape ``(..., tq, dv)`` and the attention
      weights ``(..., tq, tk)`` (each row sums to 1, or 0 if fully masked).

    Raises:
      ValueError: if the feature sizes of ``q`` and ``k`` or the key counts of
        ``k`` and ``v`` differ.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if (min(q.ndim, k.ndim, v.ndim) < 2 or q.shape[-1] != k.shape[-1]
            or k.shape[-2] != v.shape[-2]):
        raise ValueError(
            f"attention: expected q (..., tq, d), k (..., tk, d), v (..., tk, dv), "
            f"got shapes {q.shape}, {k.shape}, {v.shape}")
    scores = jnp.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    if mask is None:
        weights = jax.nn.softmax(scores, axis=-1)
    else:
        mask = jnp.broadcast_to(jnp.asarray(mask, bool), scores.shape)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0)
    return jnp.einsum("...qk,...kd->...qd", weights, v), weights


def notes_attention(x: ArrayLike, y: ArrayLike, w_kq: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The notes' self-attention: one shared matrix for keys and queries, values = inputs.

    ``K = x W``, ``Q = y W``, ``V = x``, ``weights = softmax(Q K^T / sqrt(d))``
    over the keys, ``out = weights V``; ``d`` is ``W``'s output size. Self-attention
    is ``y = x``.

    Args:
      x: the attended sequence ``(..., tk, features)`` (keys and values).
      y: the querying sequence ``(..., tq, features)``.
      w_kq: the shared key/query matrix ``(features, d)``.

    Returns:
      ``(out, weights)`` of shapes ``(..., tq, features)`` and ``(..., tq, tk)``.

    Raises:
      ValueError: if ``x``, ``y`` and ``w_kq`` disagree on ``features``.
    """
    x, y, w_kq = jnp.asarray(x), jnp.asarray(y), jnp.asarray(w_kq)
    check_rank("notes_attention", w_kq, (2,), "w_kq (features, d)")
    check_last_dim("notes_attention", x, w_kq.shape[0], "x")
    check_last_dim("notes_attention", y, w_kq.shape[0], "y")
    return attention(y @ w_kq, x @ w_kq, x)


def _split_heads(z, num_heads):
    """``(batch, time, heads * d) -> (batch, heads, time, d)``."""
    b, t, hd = z.shape
    return z.reshape(b, t, num_heads, hd // num_heads).transpose(0, 2, 1, 3)


def self_attention(num_heads: int = 1, *, head_dim: int | None = None, causal: bool = False,
                   use_bias: bool = False, return_weights: bool = False,
                   w_init="glorot_uniform") -> Layer:
    """Multi-head scaled dot-product self-attention over a sequence.

    For each head ``h``: ``Q = x Wq_h``, ``K = x Wk_h``, ``V = x Wv_h``,
    ``A_h = softmax(Q K^T / sqrt(head_dim))`` (masked), ``O_h = A_h V``; the
    heads are concatenated and projected, ``y = concat_h(O_h) Wo``.

    Args:
      num_heads: number of heads ``H``.
      head_dim: size ``D`` of each head; defaults to ``features // num_heads``.
      causal: query ``i`` sees only keys ``j <= i`` (no look-ahead).
      use_bias: add biases ``bq, bk, bv: (H*D,)`` and ``bo: (features,)``.
      return_weights: ``apply`` returns ``(output, weights)`` instead of ``output``.
      w_init: initialiser of the four projection matrices.

    Returns:
      A :class:`Layer` of kind ``"self_attention"`` with params ``{"wq", "wk",
      "wv": (features, H*D), "wo": (H*D, features)}`` and config
      ``{"num_heads", "head_dim", "causal", "use_bias", "return_weights"}``
      (``head_dim`` is ``None`` until the default is resolved at ``init``).
      Input ``(batch, time, features)``; output ``(batch, time, features)``, and
      with ``return_weights`` the weights ``(batch, H, time, time)``. Its
      ``apply`` takes an extra keyword ``mask``: boolean, ``(time, time)`` or
      ``(batch, time, time)``, ``True`` = may attend; combined with ``causal``.

    Raises:
      ValueError: for bad arguments, ``features`` not divisible by ``num_heads``
        without ``head_dim``, or at ``apply`` an input that is not
        ``(batch, time, features)`` or a mask of the wrong shape.
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"self_attention: expected a positive int num_heads, got {num_heads!r}")
    if head_dim is not None and (not isinstance(head_dim, int) or head_dim < 1):
        raise ValueError(f"self_attention: expected a positive int head_dim, got {head_dim!r}")
    w_fn = initializers.get(w_init)

    def init(key, input_shape, dtype=None):
        dtype = default_dtype(dtype)
        if len(input_shape) != 3:
            raise ValueError(
                f"self_attention: expected an input shape (batch, time, features), "
                f"got {tuple(input_shape)}")
        b, t, f = input_shape
        d = head_dim
        if d is None:
            if f % num_heads:
                raise ValueError(
                    f"self_attention: features {f} is not divisible by num_heads {num_heads}; "
                    "pass head_dim")
            d = f // num_heads
        keys = jax.random.split(key, 4)
        params = {name: w_fn(k, shape, dtype) for name, k, shape in zip(
            ("wq", "wk", "wv", "wo"), keys,
            ((f, num_heads * d),) * 3 + ((num_heads * d, f),))}
        if use_bias:
            params.update({name: jnp.zeros((num_heads * d,), dtype) for name in ("bq", "bk", "bv")})
            params["bo"] = jnp.zeros((f,), dtype)
        out_shape = (b, t, f)
        if return_weights:
            return (out_shape, (b, num_heads, t, t)), params, {}
        return out_shape, params, {}

    def project(params, x, name):
        z = x @ params["w" + name]
        if use_bias:
            z = z + jnp.broadcast_to(params["b" + name], z.shape)
        return z

    def apply(params, x, *, state=None, key=None, train=False, mask=None):
        del key, train
        x = jnp.asarray(x)
        check_rank("self_attention", x, (3,), "input (batch, time, features)")
        check_last_dim("self_attention", x, params["wq"].shape[0])
        b, t, _ = x.shape
        full = None
        if mask is not None:
            mask = jnp.asarray(mask, bool)
            if mask.shape not in ((t, t), (b, t, t)):
                raise ValueError(
                    f"self_attention: expected mask of shape {(t, t)} or {(b, t, t)}, "
                    f"got {mask.shape}")
            full = jnp.broadcast_to(mask.reshape((-1, 1, t, t)), (b, num_heads, t, t))
        if causal:
            tril = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, num_heads, t, t))
            full = tril if full is None else full & tril
        q, k, v = (_split_heads(project(params, x, n), num_heads) for n in ("q", "k", "v"))
        out, weights = attention(q, k, v, full)
        y = project(params, out.transpose(0, 2, 1, 3).reshape(b, t, -1), "o")
        return ((y, weights) if return_weights else y), ({} if state is None else state)

    config = {"num_heads": num_heads, "head_dim": head_dim, "causal": causal,
              "use_bias": use_bias, "return_weights": return_weights}
    return Layer(init, apply, "self_attention", config)
