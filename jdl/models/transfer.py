"""Transfer learning: freeze or fine-tune parts of a params tree, and a digits transfer experiment.

The notes: "use transfer learning by hooking up your model to an already well
trained model of a similar problem", with its risks (negative transfer,
over-fitting when fine-tuned too much on few examples). Parts of a params
tree are named by *paths*, the dict keys joined by ``/`` (``"0_serial/2_dense/w"``),
and selected by glob patterns (``fnmatch``: ``*``, ``?``, ``[...]``); a
pattern also selects everything below a matching folder (``"0_serial"``
selects ``"0_serial/0_dense/w"``). :func:`partition` hands each part its own
optax transformation through ``optax.multi_transform``; :func:`freeze` gives
the frozen part ``optax.set_to_zero()``, so its params stay bit-identical.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl import data as jdata
from jdl import metrics, nn
from jdl.train.loop import fit

__all__ = [
    "TransferResult", "digits_transfer", "freeze", "label_params", "param_paths", "partition",
    "select_classes", "transplant",
]


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _paths_and_leaves(params: Any) -> tuple[list[str], list, Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = ["/".join(_key_name(e) for e in path) for path, _ in flat]
    return paths, [leaf for _, leaf in flat], treedef


def param_paths(params: Any) -> list[str]:
    """Every leaf's path, dict keys (or sequence indices) joined by ``/``, in tree order.

    Example:
      >>> param_paths({"0_dense": {"w": 1, "b": 2}})
      ['0_dense/b', '0_dense/w']
    """
    return _paths_and_leaves(params)[0]


def _matches(path: str, pattern: str) -> bool:
    pattern = pattern.rstrip("/")
    return fnmatch.fnmatchcase(path, pattern) or any(
        fnmatch.fnmatchcase(path[:i], pattern) for i, c in enumerate(path) if c == "/")


def _labels(fn_name: str, params: Any, rules, default: str) -> Any:
    rules = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    paths, _, treedef = _paths_and_leaves(params)
    unused = [p for p, _ in rules if not any(_matches(path, p) for path in paths)]
    if unused:
        raise ValueError(f"{fn_name}: patterns {unused} match no parameter; valid paths are "
                         f"{paths}")
    labels = [next((label for p, label in rules if _matches(path, p)), default)
              for path in paths]
    return jax.tree_util.tree_unflatten(treedef, labels)


def label_params(params: Any, rules: Mapping[str, str] | Sequence[tuple[str, str]], *,
                 default: str = "train") -> Any:
    """A tree of labels like ``params``: the label of the first rule whose pattern matches.

    Args:
      params: the params tree.
      rules: ``{pattern: label}`` or ``[(pattern, label), ...]``, tried in order.
      default: the label of leaves no pattern matches.

    Returns:
      A pytree of strings with the structure of ``params`` (the ``param_labels``
      of ``optax.multi_transform``).

    Raises:
      ValueError: if a pattern matches no parameter; the message lists the valid paths.
    """
    return _labels("label_params", params, rules, default)


def partition(transforms: Mapping[str, optax.GradientTransformation], params: Any,
              rules: Mapping[str, str] | Sequence[tuple[str, str]], *,
              default: str = "train") -> optax.GradientTransformation:
    """One optax transformation per part of ``params``: ``optax.multi_transform`` by path patterns.

    Example (discriminative fine-tuning, a slower body and a fresh head):
      >>> tx = partition({"body": optax.adam(1e-4), "train": optax.adam(1e-2)},
      ...                params, {"0_serial": "body"})  # doctest: +SKIP

    Args:
      transforms: ``{label: transformation}``.
      params: the params tree the optimiser will see (its structure fixes the labels).
      rules: ``{pattern: label}`` (first match wins), see :func:`label_params`.
      default: label of the leaves no pattern matches.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: for a pattern that matches no parameter (listing the valid
        paths) or a label without a transformation.
    """
    labels = _labels("partition", params, rules, default)
    missing = sorted(set(jax.tree.leaves(labels)) - set(transforms))
    if missing:
        raise ValueError(f"partition: labels {missing} have no transformation; got "
                         f"transformations for {sorted(transforms)}")
    return optax.multi_transform(dict(transforms), labels)


def freeze(optimizer: optax.GradientTransformation, params: Any,
           frozen: str | Sequence[str]) -> optax.GradientTransformation:
    """``optimizer`` for every parameter except the ``frozen`` ones, whose updates are zero.

    Frozen params stay bit-identical during training (``w + 0 == w``). Put
    weight decay inside ``optimizer`` (e.g. ``optax.adamw``), never chained
    outside, or it would move the frozen params too.

    Args:
      optimizer: the transformation of the trainable params.
      params: the params tree.
      frozen: a path pattern or a list of them (e.g. ``"0_serial"`` for the body).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: if a pattern names no parameter; the message lists the valid paths.
    """
    patterns = [frozen] if isinstance(frozen, str) else list(frozen)
    if not patterns:
        raise ValueError("freeze: expected at least one frozen path pattern, got none")
    labels = _labels("freeze", params, [(p, "frozen") for p in patterns], "train")
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def transplant(source: Any, target: Any, patterns: str | Sequence[str]) -> Any:
    """``target`` with the leaves selected by ``patterns`` copied from ``source`` (same paths).

    Args:
      source: e.g. pretrained params.
      target: e.g. freshly initialised params of the new model (a new head).
      patterns: path patterns naming the transferred part (e.g. ``"0_serial"``).

    Returns:
      A params tree with the structure of ``target``.

    Raises:
      ValueError: if a pattern names no parameter of ``target``, or a selected
        path is missing from ``source`` or has another shape there.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    labels = _labels("transplant", target, [(p, "copy") for p in patterns], "keep")
    source_paths, source_leaves, _ = _paths_and_leaves(source)
    by_path = dict(zip(source_paths, source_leaves))
    paths, leaves, treedef = _paths_and_leaves(target)
    out = []
    for path, leaf, label in zip(paths, leaves, jax.tree.leaves(labels)):
        if label == "copy":
            if path not in by_path or np.shape(by_path[path]) != np.shape(leaf):
                got = np.shape(by_path[path]) if path in by_path else "missing"
                raise ValueError(f"transplant: {path!r} has shape {np.shape(leaf)} in target, "
                                 f"{got} in source")
            leaf = by_path[path]
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def select_classes(x: Any, y: Any, classes: Sequence[int], *, per_class: int | None = None,
                   key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The examples of ``classes``, relabelled ``0 .. len(classes) - 1`` in that order.

    Args:
      x: inputs ``(n, ...)``.
      y: integer labels ``(n,)``.
      classes: the original labels to keep.
      per_class: keep only this many examples of each class (few-shot), drawn
        with ``key``; all if None.
      key: PRNG key for the draw (``jax.random.key(0)`` if None).

    Returns:
      ``(x_selected, y_relabelled)``, grouped by class when ``per_class`` is set.

    Raises:
      ValueError: for no classes, repeated classes, or a class with fewer than
        ``per_class`` examples.
    """
    y_np = np.asarray(y)
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"select_classes: expected distinct classes, got {classes}")
    if per_class is None:
        keep = np.flatnonzero(np.isin(y_np, classes))
    else:
        key = jax.random.key(0) if key is None else key
        keep = []
        for c, k in zip(classes, jax.random.split(key, len(classes))):
            idx = np.flatnonzero(y_np == c)
            if len(idx) < per_class:
                raise ValueError(f"select_classes: class {c} has {len(idx)} examples, fewer "
                                 f"than per_class={per_class}")
            keep.extend(idx[np.asarray(jax.random.permutation(k, len(idx)))[:per_class]])
        keep = np.asarray(keep)
    relabel = np.full(int(max(y_np.max(), max(classes))) + 1, -1)
    relabel[classes] = np.arange(len(classes))
    return jnp.asarray(x)[keep], jnp.asarray(relabel[y_np[keep]], jnp.int32)


class TransferResult(NamedTuple):
    """What :func:`digits_transfer` returns (accuracies on the target classes' test examples).

    Attributes:
      transfer_accuracy: the pretrained body fine-tuned (or frozen) with a new head.
      scratch_accuracy: the same architecture trained from scratch on the few examples.
      source_accuracy: the pretrained model on the source classes' test examples.
      params: the transferred model's params ``{"0_serial": body, "1_dense": head}``.
      pretrained: the source model's params.
    """

    transfer_accuracy: float
    scratch_accuracy: float
    source_accuracy: float
    params: Any
    pretrained: Any


def _classifier(hidden: Sequence[int], classes: int) -> nn.Layer:
    body = []
    for h in hidden:
        body += [nn.dense(h), nn.activation("relu")]
    return nn.serial(nn.serial(*body), nn.dense(classes))


def _accuracy(model, params, x, y) -> float:
    return float(metrics.accuracy(model.apply(params, x)[0], y))


def digits_transfer(*, key: jax.Array, source_classes: Sequence[int] = (0, 1, 2, 3, 4),
                    target_classes: Sequence[int] = (5, 6, 7, 8, 9), shots: int = 5,
                    hidden: Sequence[int] = (64, 32), freeze_body: bool = True,
                    pretrain_epochs: int = 30, finetune_epochs: int = 100,
                    learning_rate: float = 0.01) -> TransferResult:
    """Pretrain an MLP on some digit classes, then learn others from ``shots`` examples each.

    The body (``"0_serial"``: dense + ReLU layers of sizes ``hidden``) is
    trained with a head on ``source_classes`` (all their training examples),
    then transplanted under a fresh head for ``target_classes`` and trained on
    ``shots`` examples per class, frozen (``freeze_body``) or fine-tuned. The
    baseline trains the same architecture from scratch on the same examples.
    Optimiser: Adam with ``learning_rate``, minibatches of up to 32.

    Args:
      key: PRNG key (data draw, initialisations, data orders).
      source_classes, target_classes: disjoint digit classes.
      shots: training examples per target class.
      hidden: widths of the body's layers.
      freeze_body: freeze the transplanted body (else fine-tune everything).
      pretrain_epochs, finetune_epochs: epochs of each stage (the scratch
        baseline gets ``finetune_epochs``).
      learning_rate: Adam's step size.

    Returns:
      A :class:`TransferResult`.

    Raises:
      ValueError: for overlapping class sets or too few examples.
    """
    if set(source_classes) & set(target_classes):
        raise ValueError(f"digits_transfer: expected disjoint classes, got source "
                         f"{tuple(source_classes)} and target {tuple(target_classes)}")
    ds = jdata.load("digits")
    k_shots, k_pre, k_head, k_scratch, k_run = jax.random.split(key, 5)

    def loss_of(model):
        def loss(params, batch):
            x, y = batch
            return optax.softmax_cross_entropy_with_integer_labels(
                model.apply(params, x)[0], y).mean()
        return loss

    source = _classifier(hidden, len(source_classes))
    x_s, y_s = select_classes(ds.x_train, ds.y_train, source_classes)
    pre = source.init(k_pre, (-1, x_s.shape[1]))[1]
    pre = fit(loss_of(source), pre, optax.adam(learning_rate), (x_s, y_s),
              epochs=pretrain_epochs, batch_size=32, key=k_run, quiet=True).params
    x_st, y_st = select_classes(ds.x_test, ds.y_test, source_classes)

    target = _classifier(hidden, len(target_classes))
    x_t, y_t = select_classes(ds.x_train, ds.y_train, target_classes, per_class=shots,
                              key=k_shots)
    x_tt, y_tt = select_classes(ds.x_test, ds.y_test, target_classes)
    batch_size = min(32, x_t.shape[0])
    start = transplant(pre, target.init(k_head, (-1, x_t.shape[1]))[1], "0_serial")
    optimizer = optax.adam(learning_rate)
    if freeze_body:
        optimizer = freeze(optimizer, start, "0_serial")
    tuned = fit(loss_of(target), start, optimizer, (x_t, y_t), epochs=finetune_epochs,
                batch_size=batch_size, key=k_run, quiet=True).params
    scratch = fit(loss_of(target), target.init(k_scratch, (-1, x_t.shape[1]))[1],
                  optax.adam(learning_rate), (x_t, y_t), epochs=finetune_epochs,
                  batch_size=batch_size, key=k_run, quiet=True).params
    return TransferResult(_accuracy(target, tuned, x_tt, y_tt),
                          _accuracy(target, scratch, x_tt, y_tt),
                          _accuracy(source, pre, x_st, y_st), tuned, pre)
