"""Shapley values of a batched model: permutation sampling, exact enumeration, KernelSHAP.

The game is the interventional one: for an instance ``x`` and a background set
``B`` of ``m`` rows, the value of a coalition ``S`` of features is

    v(S) = (1/m) sum_b f(x_S, b_{not S}),

so ``v(empty) = mean_b f(b)`` and ``v(all) = f(x)``. One reference vector is a
background set of one row. The Shapley value of feature ``i`` is

    phi_i = sum_{S not containing i} |S|! (d - |S| - 1)! / d! (v(S + i) - v(S)),

equivalently the mean over all ``d!`` orderings of the marginal contribution
of ``i`` when it joins the features before it (the notes' formula).

Every method evaluates ``v`` on many coalitions of many instances. jdl builds
all those model rows inside one ``jit``: instances x coalitions x background
rows, vmapped, in chunks of at most ``max_rows`` rows per model call (nested
``lax.scan``), so memory stays bounded and nothing runs in a Python loop.

References:
  Shapley, "A value for n-person games" (1953).
  Castro, Gomez & Tejada, "Polynomial calculation of the Shapley value based
  on sampling", Computers & Operations Research (2009): permutation sampling.
  Mitchell, Cooper, Frank & Holmes, "Sampling permutations for Shapley value
  estimation", JMLR (2022): antithetic (reversed) permutations.
  Lundberg & Lee, "A unified approach to interpreting model predictions",
  NeurIPS (2017): KernelSHAP.
  Covert & Lee, "Improving KernelSHAP", AISTATS (2021): paired sampling and
  the constrained least-squares solution with its standard error.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import Partial

METHODS = ("permutation", "exact", "kernel")
MAX_EXACT_GROUPS = 20


class ShapleyValues(NamedTuple):
    """Attributions with what they add up to.

    Attributes:
      values: ``(batch, groups)`` or ``(batch, groups, outputs)`` for a
        multi-output model; the batch axis is absent when ``x`` was one
        instance ``(d,)``. Without ``groups``, ``groups = d``.
      std_error: the standard error of each value (same shape), or ``None``
        for ``method="exact"`` and for fewer than two independent samples.
      prediction: ``f(x)``, shape ``(batch,)`` or ``(batch, outputs)``.
      base_value: ``v(empty) = mean_b f(b)``, shape ``()`` or ``(outputs,)``.
        Efficiency: ``values.sum(groups axis) == prediction - base_value``.
      num_evaluations: the number of model rows evaluated.
    """

    values: jax.Array
    std_error: jax.Array | None
    prediction: jax.Array
    base_value: jax.Array
    num_evaluations: int


def shapley(f: Callable, x, baseline, *, key: jax.Array | None = None,
            num_permutations: int = 64, antithetic: bool = True,
            method: str = "permutation", groups=None, num_samples: int | None = None,
            max_rows: int = 32768) -> ShapleyValues:
    """Shapley values of ``f`` at ``x`` against a reference or a background set.

    Args:
      f: the model, ``f(rows) -> (n,)`` or ``(n, outputs)`` for ``rows`` of
        shape ``(n, d)``. Pass ``jax.tree_util.Partial(apply, params)`` to keep
        the params as arguments of the compiled program (no recompilation when
        they change); a plain function is compiled once per function object.
      x: one instance ``(d,)`` or instances ``(batch, d)``.
      baseline: one reference ``(d,)`` or a background set ``(m, d)``
        (interventional mean over its rows).
      key: PRNG key for the sampled methods (``None`` is fine for ``exact``).
        Instance ``i`` draws from ``fold_in(key, i)``, so the values do not
        depend on ``max_rows`` or on how the batch is sharded over devices.
      num_permutations: permutations per instance (``permutation``); for
        ``kernel`` it sets the default budget.
      antithetic: ``permutation``: pair each permutation with its reverse
        (``num_permutations`` must be even); ``kernel``: pair each sampled
        coalition with its complement.
      method: ``"permutation"`` (Castro et al. 2009), ``"exact"`` (all
        ``2**groups`` coalitions with the Shapley weights; at most
        ``MAX_EXACT_GROUPS`` groups) or ``"kernel"`` (KernelSHAP with efficiency
        as a constraint).
      groups: optional int array ``(d,)`` mapping each feature to a group in
        ``0 .. g-1`` (e.g. image patches, see :func:`patch_groups`); groups are
        the players, so values have ``g`` entries.
      num_samples: ``kernel`` only: coalitions per instance; default
        ``num_permutations * (g - 1)``, the model evaluations of the
        permutation method.
      max_rows: most rows sent to ``f`` in one call.

    Returns:
      A :class:`ShapleyValues`. Permutation samples are exactly efficient
      each, so ``values`` sum to ``prediction - base_value`` for every method.

    Raises:
      ValueError: for mismatched shapes, a model output that is not ``(n,)``
        or ``(n, outputs)``, too many groups for ``exact``, bad options, or
        non-finite model outputs.
      TypeError: if ``f`` is not callable.
    """
    if not callable(f):
        raise TypeError(f"shapley: expected a callable model f, got {type(f).__name__}")
    if method not in METHODS:
        raise ValueError(f"shapley: expected method in {METHODS}, got {method!r}")
    # arrays pass into the jit as they are (no eager device ops: ~1.5 ms a call on a GPU)
    x, background = (a if isinstance(a, (np.ndarray, jax.Array)) else np.asarray(a)
                     for a in (x, baseline))
    if x.ndim not in (1, 2) or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"shapley: expected float x of shape (d,) or (batch, d), got {x.dtype} {x.shape}")
    if background.ndim not in (1, 2) or background.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"shapley: expected baseline of shape ({x.shape[-1]},) or (m, {x.shape[-1]}) to "
            f"match x of shape {x.shape}, got {background.shape}")
    single = x.ndim == 1
    (n, d), m = (x.shape if x.ndim == 2 else (1, x.shape[0])), math.prod(background.shape[:-1])
    if n == 0 or m == 0:
        raise ValueError(f"shapley: expected non-empty x and baseline, got {x.shape} and "
                         f"{background.shape}")
    group_index, num_groups = _check_groups(groups, d)
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"shapley: expected a positive int max_rows, got {max_rows!r}")
    if not isinstance(num_permutations, int) or num_permutations < 1:
        raise ValueError(
            f"shapley: expected a positive int num_permutations, got {num_permutations!r}")
    if method == "permutation" and antithetic and num_permutations % 2:
        raise ValueError(
            f"shapley: antithetic sampling pairs each permutation with its reverse, so "
            f"num_permutations must be even, got {num_permutations}")
    if method == "exact" and num_groups > MAX_EXACT_GROUPS:
        raise ValueError(
            f"shapley: method='exact' enumerates 2**g coalitions and allows at most "
            f"g={MAX_EXACT_GROUPS} players, got g={num_groups}; use method='permutation' "
            f"(or 'kernel'), or fewer feature groups")
    if method == "kernel":
        if num_samples is None:
            num_samples = num_permutations * max(num_groups - 1, 1)
        if not isinstance(num_samples, int) or num_samples < 2 * num_groups:
            raise ValueError(
                f"shapley: method='kernel' needs num_samples >= 2 * groups = {2 * num_groups} "
                f"for a well-posed regression, got {num_samples!r}")
        num_samples += num_samples % 2 if antithetic else 0
    if method != "exact" and key is None:
        raise ValueError(f"shapley: method={method!r} samples at random and needs a key, got None")
    if num_groups == 1:
        method = "exact"  # one player: v(all) - v(empty), no sampling needed
    key = jax.random.key(0) if key is None else key
    model = f if isinstance(f, Partial) else Partial(f)
    values, std_error, prediction, base, finite = _shapley_jit(
        model, x, background, None if groups is None else group_index, key,
        method=method, num_permutations=num_permutations, antithetic=antithetic,
        num_groups=num_groups, num_samples=num_samples, max_rows=max_rows)
    if not isinstance(finite, jax.core.Tracer) and not np.asarray(finite).all():
        first = int(np.argmin(np.asarray(finite)))
        if first == 3:
            raise ValueError(
                f"shapley: the KernelSHAP regression is singular for the sampled coalitions "
                f"(non-finite values); increase num_samples (got {num_samples})")
        what = ("f(x)", "the baseline", "the coalitions")[first]
        raise ValueError(f"shapley: non-finite model outputs (NaN or inf) on {what}; check the "
                         f"model and the inputs")
    g = num_groups
    per_instance = {"permutation": num_permutations * (g - 1) * m,
                    "exact": 2 ** g * m, "kernel": (num_samples or 0) * m}[method]
    num_evaluations = n * (per_instance + 1) + m
    if single:
        values, prediction = values[0], prediction[0]
        std_error = None if std_error is None else std_error[0]
    return ShapleyValues(values, std_error, prediction, base, num_evaluations)


def patch_groups(height: int, width: int, patch: int | tuple[int, int],
                 channels: int = 1) -> np.ndarray:
    """Feature groups for flattened ``(height, width, channels)`` images: one per patch.

    Args:
      height, width: image size.
      patch: patch size ``p`` or ``(ph, pw)``; edge patches may be smaller.
      channels: channels per pixel (all of a pixel's channels share its group).

    Returns:
      int array ``(height * width * channels,)`` in row-major NHWC order, with
      groups numbered row by row.
    """
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    if min(height, width, ph, pw, channels) < 1:
        raise ValueError(f"patch_groups: expected positive sizes, got height={height}, "
                         f"width={width}, patch={patch}, channels={channels}")
    rows = np.arange(height)[:, None] // ph
    cols = np.arange(width)[None, :] // pw
    grid = rows * (-(-width // pw)) + cols
    return np.repeat(grid[:, :, None], channels, axis=2).reshape(-1)


def _check_groups(groups, d: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(d, dtype=np.int32), d
    arr = np.asarray(groups)
    if arr.shape != (d,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"shapley: expected integer groups of shape ({d},), got "
                         f"{arr.dtype} {arr.shape}")
    g = int(arr.max()) + 1
    if arr.min() < 0 or len(np.unique(arr)) != g:
        raise ValueError(f"shapley: expected groups numbered 0 .. g-1 with every group "
                         f"non-empty, got the values {np.unique(arr).tolist()}")
    return arr.astype(np.int32), g


def _rows_2d(f: Callable, rows: jax.Array) -> jax.Array:
    """``f(rows)`` as ``(n, outputs)``."""
    return f(rows).reshape(rows.shape[0], -1)


def _evaluate_chunked(f: Callable, rows: jax.Array, max_rows: int) -> jax.Array:
    """``f`` on ``(n, d)`` rows, at most ``max_rows`` per call: ``(n, outputs)``."""
    n = rows.shape[0]
    size = min(n, max_rows)
    num = -(-n // size)
    padded = jnp.concatenate([rows, jnp.broadcast_to(rows[-1:], (num * size - n, rows.shape[1]))])
    out = lax.map(lambda r: _rows_2d(f, r), padded.reshape(num, size, rows.shape[1]))
    return out.reshape(num * size, -1)[:n]


class _Plan(NamedTuple):
    """How the rows are cut into model calls of ``block * per_call * bm <= max_rows`` rows."""

    block: int          # instances per call
    num_blocks: int
    per_call: int       # coalitions per instance per call
    num_chunks: int     # calls per instance block (coalitions padded to num_chunks * per_call)
    bm: int             # background rows per call
    num_bg: int


def _plan(n: int, m: int, num_units: int, max_rows: int, align: int = 1) -> _Plan:
    """Chunk sizes with the fewest padded rows, then the fewest calls, then one call a block.

    ``per_call`` is a multiple of ``align`` whenever ``align * bm <= max_rows``
    (so a call holds whole permutations); instance blocks and coalition
    chunks are balanced so little work is padding.
    """
    bm = min(m, max_rows)
    num_bg = -(-m // bm)
    cap = max_rows // bm                                     # instances x coalitions per call
    step = align if align <= cap else 1
    best = None
    for num_blocks in sorted({-(-n // b) for b in range(1, min(n, cap) + 1)}):
        block = -(-n // num_blocks)
        per_call = min(-(-num_units // step) * step, cap // block // step * step)
        if per_call < 1:
            continue
        num_chunks = -(-num_units // per_call)
        balanced = -(-(-(-num_units // num_chunks)) // step) * step
        per_call = min(per_call, balanced)
        num_chunks = -(-num_units // per_call)
        padded = num_blocks * block * num_chunks * per_call
        score = (padded, num_blocks * num_chunks, num_chunks)
        if best is None or score < best[0]:
            best = (score, _Plan(block, num_blocks, per_call, num_chunks, bm, num_bg))
    return best[1]


def _expand(group_masks: jax.Array, groups: jax.Array | None) -> jax.Array:
    """Feature masks ``(..., d)`` from group masks ``(..., g)``; ``groups`` None: the same."""
    return group_masks if groups is None else jnp.take(group_masks, groups, axis=-1)


def _coalition_values(f: Callable, x: jax.Array, background: jax.Array, per_instance,
                      chunk_masks: Callable, plan: _Plan) -> jax.Array:
    """``v_i(S_u)``, the background mean of ``f``, for every instance and coalition.

    Args:
      f: the model on rows ``(r, d)``.
      x: instances ``(n, d)``.
      background: ``(m, d)``.
      per_instance: a pytree of arrays with leading axis ``n`` (e.g. each
        instance's permutations), handed to ``chunk_masks`` for the current
        block of instances.
      chunk_masks: ``chunk_masks(block_data, start) -> (block, per_call, d)``
        bool masks of the features taken from the instance for coalitions
        ``start .. start + per_call - 1`` (``start`` traced).
      plan: the chunking, from :func:`_plan`.

    Returns:
      ``(n, num_chunks * per_call, outputs)``; coalitions past the real
      number are padding for the caller to drop.

    Instances x coalitions x background rows are built by broadcasting and
    sent to ``f`` in calls of at most ``max_rows`` rows, looped with
    ``lax.scan``. Instance blocks interleave (block ``j`` holds instances
    ``j, j + num_blocks, ...``) so a batch sharded over devices stays sharded.
    """
    n, d = x.shape
    m = background.shape[0]
    block, per_call, bm, num_bg = plan.block, plan.per_call, plan.bm, plan.num_bg
    bg = jnp.concatenate([background, jnp.zeros((num_bg * bm - m, d), background.dtype)])
    bg = bg.reshape(num_bg, bm, d)
    out = jax.eval_shape(lambda r: _rows_2d(f, r), bg[0])
    k = out.shape[1]
    weights = ((jnp.arange(num_bg * bm) < m).astype(out.dtype) / m).reshape(num_bg, bm)

    def block_values(xb, data):
        def chunk(c):
            masks = chunk_masks(data, c * per_call)

            def background_chunk(acc, bw):
                b, w = bw
                rows = jnp.where(masks[:, :, None, :], xb[:, None, None, :], b[None, None, :, :])
                out = _rows_2d(f, rows.reshape(-1, d)).reshape(block, per_call, bm, k)
                return acc + jnp.einsum("bumk,m->buk", out, w), None

            zero = jnp.zeros((block, per_call, k), out.dtype)
            if num_bg == 1:
                return background_chunk(zero, (bg[0], weights[0]))[0]
            return lax.scan(background_chunk, zero, (bg, weights))[0]

        vals = lax.map(chunk, jnp.arange(plan.num_chunks))
        return vals.transpose(1, 0, 2, 3).reshape(block, plan.num_chunks * per_call, k)

    if plan.num_blocks == 1:
        return block_values(x, per_instance)
    ids = jnp.arange(block * plan.num_blocks).reshape(block, plan.num_blocks).T
    ids = jnp.minimum(ids, n - 1)
    vals = lax.map(lambda i: block_values(x[i], jax.tree.map(lambda a: a[i], per_instance)), ids)
    return vals.transpose(1, 0, 2, 3).reshape(block * plan.num_blocks, -1, k)[:n]


def _pad_units(a: jax.Array, total: int, axis: int = 1) -> jax.Array:
    """``a`` padded with zeros along ``axis`` to length ``total``."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, total - a.shape[axis])
    return jnp.pad(a, pad)


def _instance_keys(key: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def _random_ranks(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniformly random permutations of ``0 .. g-1``, given as ranks: ``(*shape, g)``.

    ``rank[a]`` is the position of player ``a``: the order of random 32-bit
    keys whose low ``w = bit_length(g - 1)`` bits are replaced by the player's
    index, so no two are equal (a tie in the other ``32 - w`` bits, chance
    below ``g^2 / 2^(33 - w)`` per permutation, goes to the lower index). For
    small ``g`` the rank is a count of smaller keys, which vectorises far
    better than a sort on CPU.
    """
    g = shape[-1]
    # drawn flat: XLA's CPU threefry over a short minor axis (g) vectorises badly, ~4x slower
    noise = jax.random.bits(key, (math.prod(shape),), jnp.uint32).reshape(shape)
    w = max(g - 1, 1).bit_length()
    keys = (noise >> w << w) | jnp.arange(g, dtype=jnp.uint32)
    if g > 64:
        return jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1).astype(jnp.int32)
    return (keys[..., None, :] < keys[..., :, None]).sum(-1, dtype=jnp.int32)


def _permutation(x, background, f, groups, key, prediction, base, *, num_groups,
                 num_permutations, antithetic, max_rows):
    n, g, p = x.shape[0], num_groups, num_permutations
    draws = p // 2 if antithetic else p
    ranks = jax.vmap(lambda k: _random_ranks(k, (draws, g)))(_instance_keys(key, n))
    if antithetic:                                                       # the reversed order
        ranks = jnp.stack([ranks, g - 1 - ranks], axis=2).reshape(n, p, g)
    # coalition u = (permutation u // (g-1), the first u % (g-1) + 1 players of it)
    plan = _plan(n, background.shape[0], p * (g - 1), max_rows, align=g - 1)
    positions = jnp.arange(1, g, dtype=ranks.dtype)
    if plan.per_call % (g - 1) == 0:                 # whole permutations per call: slices
        q = plan.per_call // (g - 1)

        def chunk_masks(r, start):
            r = lax.dynamic_slice_in_dim(r, start // (g - 1), q, axis=1)    # (block, q, g)
            sets = r[:, :, None, :] < positions[None, None, :, None]
            return _expand(sets.reshape(r.shape[0], q * (g - 1), g), groups)

        padded = _pad_units(ranks, plan.num_chunks * q)
    else:                                            # a huge background: part of one per call
        def chunk_masks(r, start):
            units = jnp.minimum(start + jnp.arange(plan.per_call), p * (g - 1) - 1)
            r = jnp.take(r, units // (g - 1), axis=1)                         # (block, per_call, g)
            return _expand(r < (units % (g - 1) + 1)[None, :, None], groups)

        padded = ranks
    v = _coalition_values(f, x, background, padded, chunk_masks, plan)[:, :p * (g - 1)]
    k = v.shape[-1]
    # the value chain of each permutation, outputs first (fast gathers on CPU):
    # v(empty), v(first player), ..., v(all); a player's gain is the step it adds
    v = jnp.moveaxis(v, -1, 0).reshape(k, n, p, g - 1)
    first = jnp.broadcast_to(base[:, None, None, None], (k, n, p, 1))
    last = jnp.broadcast_to(prediction.T[:, :, None, None], (k, n, p, 1))
    chain = jnp.concatenate([first, v, last], axis=3)                    # (k, n, p, g + 1)
    at = jnp.broadcast_to(ranks[None], (k, n, p, g))
    samples = jnp.take_along_axis(chain, at + 1, axis=3) - jnp.take_along_axis(chain, at, axis=3)
    values = samples.mean(2)
    independent = samples.reshape(k, n, p // 2, 2, g).mean(3) if antithetic else samples
    count = independent.shape[2]
    std_error = independent.std(2, ddof=1) / math.sqrt(count) if count > 1 else None
    return (jnp.moveaxis(values, 0, -1),
            None if std_error is None else jnp.moveaxis(std_error, 0, -1))


def _shapley_weights(g: int) -> np.ndarray:
    """``w[s] = s! (g - s - 1)! / g!`` for ``s = 0 .. g - 1``."""
    s = np.arange(g)
    return np.exp([math.lgamma(i + 1) + math.lgamma(g - i) - math.lgamma(g + 1) for i in s])


def _exact(x, background, f, groups, prediction, *, num_groups, max_rows):
    g = num_groups
    total = 2 ** g
    span = min(total, 4096)
    bits = jnp.arange(g)
    weights = _shapley_weights(g)
    w_in = jnp.asarray(np.concatenate([[0.0], weights]))                 # w[s - 1] for members
    w_out = jnp.asarray(np.concatenate([weights, [0.0]]))                # w[s] for non-members
    plan = _plan(x.shape[0], background.shape[0], span, max_rows)

    def member(s):
        return ((s[:, None] >> bits[None, :]) & 1).astype(bool)          # (coalitions, g)

    def span_values(acc, first):
        def chunk_masks(_, start):
            sets = _expand(member(first + start + jnp.arange(plan.per_call)), groups)
            return jnp.broadcast_to(sets[None], (plan.block, *sets.shape))

        v = _coalition_values(f, x, background, None, chunk_masks, plan)[:, :span]
        sets = member(first + jnp.arange(span))                          # (span, g)
        size = sets.sum(1)
        coef = jnp.where(sets, w_in[size][:, None], -w_out[size][:, None]).astype(v.dtype)
        return acc + jnp.einsum("nsk,sg->ngk", v, coef), None

    zero = jnp.zeros((x.shape[0], g, prediction.shape[1]), prediction.dtype)
    values, _ = lax.scan(span_values, zero, jnp.arange(0, total, span))
    return values, None


def _kernel_weights(g: int) -> np.ndarray:
    """P(|S| = s), ``s = 1 .. g - 1``, under the Shapley kernel: ``~ 1 / (s (g - s))``."""
    s = np.arange(1, g)
    p = 1.0 / (s * (g - s))
    return p / p.sum()


def _kernel(x, background, f, groups, key, prediction, base, *, num_groups, num_samples,
            antithetic, max_rows):
    n, g = x.shape[0], num_groups
    draws = num_samples // 2 if antithetic else num_samples
    cdf = jnp.asarray(np.cumsum(_kernel_weights(g))[:-1])

    def draw(k):
        k_size, k_order = jax.random.split(k)
        u = jax.random.uniform(k_size, (draws,))
        size = jnp.searchsorted(cdf, u, side="right") + 1              # kernel-weighted size
        return _random_ranks(k_order, (draws, g)) < size[:, None]        # a uniform subset

    sets = jax.vmap(draw)(_instance_keys(key, n))                        # (n, draws, g)
    if antithetic:
        sets = jnp.stack([sets, ~sets], axis=2).reshape(n, num_samples, g)

    plan = _plan(n, background.shape[0], num_samples, max_rows)

    def chunk_masks(s, start):
        return _expand(lax.dynamic_slice_in_dim(s, start, plan.per_call, axis=1), groups)

    padded = _pad_units(sets, plan.num_chunks * plan.per_call)
    v = _coalition_values(f, x, background, padded, chunk_masks, plan)[:, :num_samples]
    k = v.shape[-1]
    y = v - base[None, None, :]                                          # (n, S, k)
    z = sets.astype(v.dtype)                                             # (n, S, g)
    a = jnp.einsum("nsg,nsh->ngh", z, z) / num_samples
    b = jnp.einsum("nsg,nsk->ngk", z, y) / num_samples
    gap = prediction - base[None, :]                                     # (n, k)
    # Minimise sum_s (y_s - z_s . phi)^2 subject to sum(phi) = gap: with A and b
    # above, phi = M b + A^-1 1 gap / (1^T A^-1 1), M = A^-1 - A^-1 1 1^T A^-1 / (1^T A^-1 1).
    a_inv = jnp.linalg.inv(a)                                            # (n, g, g)
    a_inv_1 = a_inv.sum(2)                                               # (n, g)
    denom = a_inv_1.sum(1)                                               # (n,)
    proj = a_inv - a_inv_1[:, :, None] * a_inv_1[:, None, :] / denom[:, None, None]
    values = (jnp.einsum("ngh,nhk->ngk", proj, b)
              + a_inv_1[:, :, None] * gap[:, None, :] / denom[:, None, None])
    # Sandwich (delta-method) standard error: values - truth ~ M (b - A phi), a
    # mean of the independent influences z (y - z . phi) (pairs when antithetic).
    residual = y - jnp.einsum("nsg,ngk->nsk", z, values)
    influence = jnp.einsum("nsg,nsk->nsgk", z, residual)
    if antithetic:
        influence = influence.reshape(n, draws, 2, g, k).mean(2)
    spread = jnp.einsum("ngh,nqhk->nqgk", proj, influence)
    count = influence.shape[1]
    std_error = spread.std(1, ddof=1) / math.sqrt(count) if count > 1 else None
    return values, std_error, jnp.all(jnp.isfinite(v))


def _shapley_core(f, x, background, groups, key, *, method, num_permutations, antithetic,
                  num_groups, num_samples, max_rows):
    x = jnp.atleast_2d(x)
    background = jnp.atleast_2d(background).astype(x.dtype)
    out = getattr(jax.eval_shape(f, jax.ShapeDtypeStruct((1, x.shape[1]), x.dtype)), "shape", None)
    if out is None or len(out) not in (1, 2) or out[0] != 1:
        raise ValueError(
            f"shapley: expected f to map rows (n, {x.shape[1]}) to (n,) or (n, outputs), got "
            f"output shape {out} for n=1")
    prediction = _evaluate_chunked(f, x, max_rows)                      # (n, k)
    base = _evaluate_chunked(f, background, max_rows).mean(0)           # (k,)
    if method == "exact":
        values, std_error = _exact(x, background, f, groups, prediction,
                                   num_groups=num_groups, max_rows=max_rows)
    elif method == "permutation":
        values, std_error = _permutation(
            x, background, f, groups, key, prediction, base, num_groups=num_groups,
            num_permutations=num_permutations, antithetic=antithetic, max_rows=max_rows)
    else:
        values, std_error, outputs_finite = _kernel(
            x, background, f, groups, key, prediction, base, num_groups=num_groups,
            num_samples=num_samples, antithetic=antithetic, max_rows=max_rows)
    values_finite = jnp.all(jnp.isfinite(values))
    if method != "kernel":                 # values are sums of model outputs
        outputs_finite = values_finite
    finite = jnp.stack([jnp.all(jnp.isfinite(prediction)), jnp.all(jnp.isfinite(base)),
                        outputs_finite, values_finite])
    if len(out) == 1:                      # a one-output model: drop the outputs axis
        values, base = values[..., 0], base[0]
        std_error = None if std_error is None else std_error[..., 0]
    return values, std_error, prediction.reshape((x.shape[0], *out[1:])), base, finite


_shapley_jit = jax.jit(_shapley_core, static_argnames=(
    "method", "num_permutations", "antithetic", "num_groups", "num_samples", "max_rows"))
