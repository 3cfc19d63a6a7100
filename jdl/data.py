"""Embedded real datasets, input transforms fitted on the training split, minibatches.

Datasets come from the files bundled with scikit-learn (never a download):

============== ======== ========= ==========================================
name           examples features  target
============== ======== ========= ==========================================
digits         1797     64 (8x8)  10 classes (handwritten digits, 0..16 ink)
breast_cancer  569      30        2 classes (0 malignant, 1 benign)
diabetes       442      10        regression (disease progression), raw units
iris           150      4         3 classes
wine           178      13        3 classes
============== ======== ========= ==========================================

Example:
    >>> import jax
    >>> from jdl import data
    >>> ds = data.load("digits", key=jax.random.key(0))
    >>> ds.x_train.shape, ds.num_classes
    ((1078, 64), 10)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DATASETS = ("digits", "breast_cancer", "diabetes", "iris", "wine")


class Dataset(NamedTuple):
    """A dataset split three ways.

    Attributes:
      x_train, x_val, x_test: inputs of shape ``(n_split, features)``, or
        ``(n_split, 8, 8, 1)`` for ``digits`` loaded with ``images=True``.
      y_train, y_val, y_test: integer labels ``(n_split,)`` for
        classification, float targets ``(n_split,)`` for regression.
      num_classes: number of classes, ``0`` for regression.
      feature_names: one name per input feature.
      name: the dataset's name.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int
    feature_names: tuple[str, ...]
    name: str


@functools.lru_cache(maxsize=None)
def _raw(name: str):
    """The whole dataset as read-only NumPy arrays (cached: every split starts from these)."""
    from sklearn import datasets as skd

    if name == "diabetes":
        bunch = skd.load_diabetes(scaled=False)
    else:
        bunch = getattr(skd, f"load_{name}")()
    x = np.asarray(bunch.data, np.float64)
    if name == "digits":
        x = x / 16.0
    names = tuple(getattr(bunch, "feature_names", [f"x{i}" for i in range(x.shape[1])]))
    is_classification = name != "diabetes"
    y = np.asarray(bunch.target, np.int32 if is_classification else np.float64)
    num_classes = int(y.max()) + 1 if is_classification else 0
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y, num_classes, names


def load(name: str, *, key: jax.Array | None = None,
         split: tuple[float, float, float] = (0.6, 0.2, 0.2), images: bool = False,
         dtype=jnp.float32) -> Dataset:
    """Load a bundled dataset and split it deterministically from ``key``.

    Digits pixels are scaled to ``[0, 1]``; the other datasets are in their
    raw units (diabetes too: scikit-learn's pre-scaled copy would hide the
    centring effects the notes discuss).

    Args:
      name: one of ``digits, breast_cancer, diabetes, iris, wine``.
      key: PRNG key for the shuffle before splitting; ``jax.random.key(0)`` if
        None. The same key gives the same split.
      split: train / validation / test fractions, summing to 1.
      images: for ``digits`` only, return inputs as ``(n, 8, 8, 1)`` NHWC.
      dtype: float dtype of the inputs (and of regression targets).

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: for an unknown name, a bad split, or ``images`` on a
        non-image dataset.
    """
    if name not in DATASETS:
        raise ValueError(f"data.load: unknown dataset {name!r}; expected one of {DATASETS}")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-9 or split[0] == 0:
        raise ValueError(
            f"data.load: expected three non-negative fractions summing to 1 with a non-empty "
            f"training part, got split={split}")
    if images and name != "digits":
        raise ValueError(f"data.load: images=True needs the 'digits' dataset, got {name!r}")
    x, y, num_classes, names = _raw(name)
    key = jax.random.key(0) if key is None else key
    order = np.asarray(jax.random.permutation(key, x.shape[0]))
    x, y = x[order], y[order]
    n = x.shape[0]
    n_train = int(round(split[0] * n))
    n_val = int(round(split[1] * n))
    cuts = (n_train, n_train + n_val)
    if images:
        x = x.reshape(n, 8, 8, 1)
    xs = np.split(x, cuts)
    ys = np.split(y, cuts)
    y_dtype = jnp.int32 if num_classes else dtype
    xs = [jnp.asarray(part, dtype) for part in xs]
    ys = [jnp.asarray(part, y_dtype) for part in ys]
    return Dataset(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes, names, name)


class Transform(NamedTuple):
    """An affine input transform ``(x - mean) @ matrix`` fitted on training data.

    Attributes:
      mean: ``(features,)``.
      matrix: ``(features, features)``, or ``(features,)`` for a per-feature scale.
    """

    mean: jax.Array
    matrix: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply to ``x`` of shape ``(n, features)``."""
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"Transform: expected x of shape (n, {self.mean.shape[0]}), got {x.shape}")
        centred = x - self.mean
        if self.matrix.ndim == 1:
            return centred * self.matrix
        return centred @ self.matrix


def _check_2d(fn_name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{fn_name}: expected x of shape (n >= 2, features), got {x.shape}")
    return x


def fit_center(x: jax.Array) -> Transform:
    """Subtract the mean of each feature. ``x``: ``(n, features)``."""
    x = _check_2d("fit_center", x)
    return Transform(x.mean(0), jnp.ones(x.shape[1], x.dtype))


def fit_standardize(x: jax.Array, eps: float = 1e-8) -> Transform:
    """Centre and divide each feature by its standard deviation, floored at ``eps``.

    Digits' border pixels are almost always blank in training: with a tiny
    floor, one rare ink pixel at test time becomes a huge input. Pass a
    larger ``eps`` (e.g. ``0.1`` for pixels in ``[0, 1]``) for such data.
    """
    x = _check_2d("fit_standardize", x)
    return Transform(x.mean(0), 1.0 / jnp.maximum(x.std(0), eps))


def fit_whiten(x: jax.Array, method: str = "zca", eps: float = 1e-5) -> Transform:
    """Whitening: centred outputs with identity covariance.

    With the eigendecomposition ``cov = U diag(s) U^T`` of the training
    covariance, PCA whitening is ``U diag(1/sqrt(s + eps))`` and ZCA whitening
    ``U diag(1/sqrt(s + eps)) U^T`` (the whitened data closest to the input;
    Bell & Sejnowski 1997). ``eps`` regularises near-zero variances (digits
    has constant-zero pixels).

    Args:
      x: training inputs ``(n, features)``.
      method: ``"pca"`` or ``"zca"``.
      eps: added to the covariance eigenvalues.

    Returns:
      A :class:`Transform` with a ``(features, features)`` matrix.
    """
    x = _check_2d("fit_whiten", x)
    if method not in ("pca", "zca"):
        raise ValueError(f"fit_whiten: expected method 'pca' or 'zca', got {method!r}")
    # Fitted in float64 (numpy): raw features of very different scales (wine's
    # proline is ~1e3) lose the identity covariance in float32 arithmetic.
    x64 = np.asarray(x, np.float64)
    mean = x64.mean(0)
    centred = x64 - mean
    s, u = np.linalg.eigh(centred.T @ centred / x64.shape[0])
    w = u / np.sqrt(np.maximum(s, 0.0) + eps)
    if method == "zca":
        w = w @ u.T
    mean, w = jnp.asarray(mean, x.dtype), jnp.asarray(w, x.dtype)
    return Transform(mean, w)


def fit_pca(x: jax.Array, components: int) -> Transform:
    """Projection on the ``components`` principal directions of ``x`` (largest variance first).

    Args:
      x: training inputs ``(n, features)``.
      components: ``k``, between 1 and ``features``.

    Returns:
      A :class:`Transform` with an orthonormal ``(features, k)`` matrix: ``(x -
      mean) @ matrix`` are the principal-component scores (no whitening).
    """
    x = _check_2d("fit_pca", x)
    if not isinstance(components, int) or not 1 <= components <= x.shape[1]:
        raise ValueError(
            f"fit_pca: expected 1 <= components <= {x.shape[1]}, got {components!r}")
    x64 = np.asarray(x, np.float64)
    mean = x64.mean(0)
    _, _, vt = np.linalg.svd(x64 - mean, full_matrices=False)
    return Transform(jnp.asarray(mean, x.dtype), jnp.asarray(vt[:components].T, x.dtype))


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of ``0 .. n-1`` by sorting packed keys alone.

    Each round draws ``32 - w`` random bits per position (``w`` = bits of
    ``n - 1``), packs them above the position and sorts those uint32 words: the
    low bits of the sorted words are the shuffle. A tie in the random bits
    keeps the earlier position first (a stable sort), so ``rounds`` such sorts
    equal one sort by ``rounds * (32 - w)`` random bits (least significant
    digit first, as in a radix sort); ``rounds * (32 - w) >= 3 w`` bounds the
    chance of any tie, the only departure from uniform, by about ``1 / (2n)``,
    the bound ``jax.random.permutation`` keeps with 32-bit keys. Sorting the
    words alone is ~2.6x faster on the CPU than ``jax.random.permutation``'s
    key-value sort (XLA's CPU sort moves the values with a slow comparator).

    Args:
      key: PRNG key.
      n: length, ``1 <= n <= 2**24``.

    Returns:
      int32 ``(n,)``. A different stream than ``jax.random.permutation(key, n)``.
    """
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= 2 ** 24:
        raise ValueError(f"permutation: expected an int n with 1 <= n <= 2**24, got {n!r}")
    width = max(int(n - 1).bit_length(), 1)
    rounds = -(-3 * width // (32 - width))
    low = jnp.uint32((1 << width) - 1)
    position = jnp.arange(n, dtype=jnp.uint32)
    perm = None
    for round_key in jax.random.split(key, rounds):
        words = jax.random.bits(round_key, (n,), jnp.uint32) & ~low | position
        order = (jax.lax.sort(words) & low).astype(jnp.int32)
        perm = order if perm is None else perm[order]
    return perm


def batch_indices(key: jax.Array, num_examples: int, batch_size: int,
                  drop_last: bool = True) -> jax.Array:
    """Minibatch indices from one random permutation (one epoch).

    Args:
      key: PRNG key for this epoch's permutation.
      num_examples: ``n``.
      batch_size: ``b``.
      drop_last: drop the last ``n mod b`` examples (as the notes' loop does);
        otherwise the last batch is filled up with examples from the start of
        the permutation, so every example is seen at least once and shapes
        stay static.

    Returns:
      int32 indices of shape ``(num_batches, b)``.
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"batch_indices: expected 1 <= batch_size <= num_examples={num_examples}, "
            f"got {batch_size}")
    perm = permutation(key, num_examples)
    if drop_last:
        num_batches = num_examples // batch_size
        perm = perm[: num_batches * batch_size]
    else:
        num_batches = -(-num_examples // batch_size)
        perm = jnp.concatenate([perm, perm[: num_batches * batch_size - num_examples]])
    return perm.reshape(num_batches, batch_size).astype(jnp.int32)


def minibatches(key: jax.Array, batch: Any, batch_size: int, drop_last: bool = True) -> Any:
    """Gather one epoch of minibatches from a pytree of arrays with a shared first axis.

    Returns:
      The pytree with each leaf of shape ``(n, ...)`` turned into
      ``(num_batches, batch_size, ...)``.
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("minibatches: expected a pytree with at least one array, got none")
    n = leaves[0].shape[0]
    if any(leaf.shape[0] != n for leaf in leaves):
        raise ValueError(
            f"minibatches: expected leaves with the same first axis, got "
            f"{[leaf.shape for leaf in leaves]}")
    idx = batch_indices(key, n, batch_size, drop_last)
    return jax.tree.map(lambda leaf: leaf[idx], batch)
