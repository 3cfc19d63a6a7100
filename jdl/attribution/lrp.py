"""Layer-wise relevance propagation (LRP) for jdl models, batched and jittable.

LRP explains one output score ``f_c(x)`` by passing it backwards layer by
layer: a layer ``z = layer(a)`` hands the relevance ``R`` of its outputs to its
inputs in proportion to their contributions. Every rule here is the
"modified gradient" form of Montavon et al. (2019, Sec. 10.2.2): for modified
parameters ``rho(w)`` and inputs, ``z = layer_rho(a)``, ``s = R / stab(z)``,
``c = vjp(layer_rho, a)(s)``, ``R_in = a * c``, so dense layers, convolutions
and average pooling share one implementation.

Rules (``stab(z) = z + eps * sign(z)``, ``sign(0) = +1``):

* LRP-0: ``R_j = sum_k a_j w_jk / z_k R_k`` (bias included in ``z_k``).
* LRP-eps: the same with ``stab(z_k)``; ``eps`` absorbs weak, contradictory
  contributions.
* LRP-gamma: weights ``w + gamma w+`` (and bias ``b + gamma b+``), favouring
  positive contributions; the generalised form of Andeol et al. (2021) as in
  zennit, equal to Montavon's for non-negative inputs and outputs.
* z^B (input layer, inputs boxed in ``[low, high]``):
  ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z_j R_j``.

Element-wise activations pass relevance through; max pooling hands it to the
winner of each window (its gradient); average pooling and any batch norm
that cannot be merged use LRP-eps with a small stabiliser (zennit's ``Norm``);
a residual sum ``y = a + b`` splits ``R`` as ``a / y`` and ``b / y``. Batch
norm is merged into the preceding dense or conv layer first
(:func:`merge_batch_norm`).

Composites choose a rule for each dense / conv layer: :func:`by_position`
(LRP-0 on the top layers, eps in the middle, gamma at the bottom, z^B on the
input, as the notes and Montavon et al. recommend), :func:`by_type`,
:func:`epsilon_gamma_box` (zennit's), or one rule everywhere.

References:
  Bach et al., "On pixel-wise explanations for non-linear classifier
  decisions by layer-wise relevance propagation", PLoS ONE (2015).
  Montavon et al., "Explaining nonlinear classification decisions with deep
  Taylor decomposition", Pattern Recognition (2017): z^B.
  Montavon, Binder, Lapuschkin, Samek & Mueller, "Layer-wise relevance
  propagation: an overview", in Explainable AI, LNCS 11700 (2019).
  Andeol et al., "Learning domain invariant representations by joint
  Wasserstein distance minimization" (2021): generalised gamma rule.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jdl.nn.conv import explicit_padding
from jdl.nn.core import Layer, residual, serial

WEIGHTED_KINDS = ("dense", "conv2d")
PASS_ACTIVATIONS = ("relu", "tanh", "sigmoid", "scaled_tanh", "identity")


class Rule(NamedTuple):
    """An LRP rule for a dense or conv layer.

    Attributes:
      name: ``"0"``, ``"epsilon"``, ``"gamma"`` or ``"zbox"``.
      epsilon: the stabiliser added to denominators (the eps of LRP-eps).
      gamma: the gamma of LRP-gamma.
      low, high: z^B bounds, scalars or arrays broadcastable to the layer input.
    """

    name: str
    epsilon: float = 0.0
    gamma: float = 0.0
    low: Any = None
    high: Any = None


def lrp_0() -> Rule:
    """LRP-0: ``R_j = sum_k a_j w_jk / z_k R_k`` (Bach et al. 2015)."""
    return Rule("0")


def epsilon(eps: float = 1e-6) -> Rule:
    """LRP-eps: denominators ``z_k + eps * sign(z_k)``."""
    if not eps >= 0:
        raise ValueError(f"epsilon: expected eps >= 0, got {eps!r}")
    return Rule("epsilon", float(eps))


def gamma(gamma: float = 0.25, stabilizer: float = 1e-6) -> Rule:
    """LRP-gamma: weights ``w + gamma * w+`` (generalised to negative inputs and outputs)."""
    if not gamma >= 0 or not stabilizer >= 0:
        raise ValueError(f"gamma: expected gamma >= 0 and stabilizer >= 0, got {gamma!r}, "
                         f"{stabilizer!r}")
    return Rule("gamma", float(stabilizer), float(gamma))


def zbox(low, high, stabilizer: float = 1e-6) -> Rule:
    """z^B for the input layer, inputs bounded by ``low <= x <= high`` (Montavon et al. 2017)."""
    if low is None or high is None:
        raise ValueError(f"zbox: expected bounds low and high, got low={low!r}, high={high!r}")
    return Rule("zbox", float(stabilizer), 0.0, low, high)


Composite = Callable[[int, int, Layer], Rule]


def uniform(rule: Rule) -> Composite:
    """The same rule for every dense and conv layer."""
    return lambda index, count, layer: rule


def by_position(input: Rule | None = None, lower: Rule | None = None,
                middle: Rule | None = None, upper: Rule | None = None) -> Composite:
    """Rules by depth: the notes' and Montavon et al.'s (2019) recommended composite.

    The ``L`` dense/conv layers, in forward order, are split into thirds:
    ``lower`` (default LRP-gamma, gamma 0.25) for the first, ``middle``
    (default LRP-eps, eps 0.25) for the second and ``upper`` (default LRP-0)
    for the last; ``input``, if given (e.g. :func:`zbox`), replaces the rule
    of the first layer.
    """
    lower = gamma() if lower is None else lower
    middle = epsilon(0.25) if middle is None else middle
    upper = lrp_0() if upper is None else upper

    def choose(index, count, layer):
        if index == 0 and input is not None:
            return input
        third = 3 * index // count
        return (lower, middle, upper)[third]

    return choose


def by_type(rules: dict[str, Rule], input: Rule | None = None,
            default: Rule | None = None) -> Composite:
    """Rules by layer kind, e.g. ``{"conv2d": gamma(), "dense": epsilon()}``.

    Args:
      rules: kind -> rule.
      input: rule for the first dense/conv layer (e.g. :func:`zbox`), if any.
      default: rule for kinds not in ``rules`` (default LRP-eps 1e-6).
    """
    default = epsilon() if default is None else default

    def choose(index, count, layer):
        if index == 0 and input is not None:
            return input
        return rules.get(layer.kind, default)

    return choose


def epsilon_gamma_box(low, high, *, eps: float = 1e-6, gamma_value: float = 0.25,
                      stabilizer: float = 1e-6) -> Composite:
    """zennit's ``EpsilonGammaBox``: z^B first, LRP-gamma on conv, LRP-eps on dense layers."""
    return by_type({"conv2d": gamma(gamma_value, stabilizer), "dense": epsilon(eps)},
                   input=zbox(low, high, stabilizer))


class LRPResult(NamedTuple):
    """Relevances and their bookkeeping.

    Attributes:
      relevance: input relevance, shape of ``x`` ``(batch, ...)``.
      score: the explained output ``f_c(x)`` ``(batch,)``, the relevance put in
        at the top.
      conservation_gap: ``(batch, layers)``: for each layer (forward order, see
        :func:`layer_names`), the sum of relevance leaving it towards the input
        minus the sum that entered it. Zero means conserved; biases and eps
        absorb relevance.
    """

    relevance: jax.Array
    score: jax.Array
    conservation_gap: jax.Array


def lrp(model: Layer, params, x, *, composite: Composite | Rule | None = None, state=None,
        target=None, stabilizer: float = 1e-6) -> LRPResult:
    """LRP relevances of ``model`` at ``x`` for the output ``target``.

    Works on models built from ``serial``, ``residual``, ``dense``,
    ``conv2d``, ``max_pool``, ``avg_pool``, ``flatten``, ``dropout``,
    element-wise ``activation`` layers and ``batch_norm`` (merged into the
    preceding dense/conv layer as :func:`merge_batch_norm` does). Traceable:
    wrap it in ``jax.jit`` with the model bound, e.g.
    ``jax.jit(functools.partial(lrp, model, composite=c))``.

    Args:
      model: a jdl :class:`~jdl.nn.core.Layer`.
      params: its params.
      x: inputs ``(batch, ...)``.
      composite: a composite (``(index, count, layer) -> Rule``) or one
        :class:`Rule`; default :func:`by_position` without an input rule.
      state: the model state (batch-norm running statistics), if any.
      target: the explained output: ``None`` for each row's largest output,
        an int, or ints ``(batch,)``. Ignored for a model with output ``(batch,)``.
      stabilizer: the eps of the LRP-eps rule used for average pooling,
        unmerged batch norm and residual sums (zennit's ``Norm``); ``0`` gives
        LRP-0 there (a zero denominator passes no relevance).

    Returns:
      An :class:`LRPResult`.

    Raises:
      ValueError: for a layer kind LRP does not know, a softmax activation (LRP
        explains logits; drop the softmax), or a bad target.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"lrp: expected a jdl Layer as model, got {type(model).__name__}")
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"lrp: expected x of shape (batch, ...), got {x.shape}")
    rules = dict(rules_of(model, composite))
    out, tape = _forward(model, params, {} if state is None else state, x, "", rules)
    score, r_top = _top_relevance("lrp", out, target)
    gaps: dict[str, jax.Array] = {}
    relevance = _backward(tape, r_top, gaps, stabilizer)
    gap = jnp.stack([gaps[name] for name in layer_names(model)], axis=1)
    return LRPResult(relevance, score, gap)


def layer_names(model: Layer) -> tuple[str, ...]:
    """Names of the columns of ``LRPResult.conservation_gap``, in forward order.

    Each leaf layer is named by its path of params keys (``"3_dense"``,
    ``"1_residual/block/0_conv2d"``); a batch norm merged into the layer before
    it has no column of its own; a residual sum is ``"<path>/sum"``.
    """
    return tuple(path for path, _ in _walk(model))


def rules_of(model: Layer,
             composite: Composite | Rule | None = None) -> tuple[tuple[str, Rule], ...]:
    """The rule each dense/conv layer gets: ``((layer name, rule), ...)`` in forward order."""
    composite = by_position() if composite is None else composite
    if isinstance(composite, Rule):
        composite = uniform(composite)
    if not callable(composite):
        raise TypeError(f"lrp: expected a composite or a Rule, got {type(composite).__name__}")
    weighted = [(path, layer) for path, layer in _walk(model)
                if layer is not None and layer.kind in WEIGHTED_KINDS]
    return tuple((path, composite(i, len(weighted), layer))
                 for i, (path, layer) in enumerate(weighted))


def _walk(model: Layer, path: str = "") -> list[tuple[str, Layer | None]]:
    """``(path, leaf)`` in forward order; residual sums as ``(path/sum, None)``."""
    if model.kind == "serial":
        items, prev = [], None
        for name, child in zip(model.names, model.children):
            merged = child.kind == "batch_norm" and prev is not None and prev.kind in WEIGHTED_KINDS
            if not merged:
                items += _walk(child, f"{path}/{name}" if path else name)
            prev = child
        return items
    if model.kind == "residual":
        items = [item for name, child in zip(model.names, model.children)
                 for item in _walk(child, f"{path}/{name}")]
        return items + [(f"{path}/sum", None)]
    return [(path or model.kind, model)]


# ---------------------------------------------------------------- batch-norm merging

def merge_batch_norm(model: Layer, params, state=None):
    """Fold every ``batch_norm`` that directly follows a dense/conv layer into it.

    In evaluation ``BN(y) = y * s + t`` with ``s = scale / sqrt(var + eps)``
    and ``t = bias - mean * s``, so ``BN(x @ w + b) = x @ (w * s) + (b * s + t)``
    (``s`` over the last, output-channel axis of dense and HWIO conv kernels).

    Args:
      model: a jdl model.
      params, state: its params and state.

    Returns:
      ``(model, params, state)`` computing the same function in evaluation
      mode, with those batch-norm layers removed.
    """
    state = {} if state is None else state
    if model.kind == "serial":
        children, child_params, child_state = [], [], []
        items = list(zip(model.names, model.children))
        i = 0
        while i < len(items):
            name, layer = items[i]
            p, s = params.get(name, {}), state.get(name, {})
            layer, p, s = merge_batch_norm(layer, p, s)
            if (layer.kind in WEIGHTED_KINDS and i + 1 < len(items)
                    and items[i + 1][1].kind == "batch_norm"):
                bn_name, bn = items[i + 1]
                layer, p = _fold(layer, p, bn, params[bn_name], state.get(bn_name, {}))
                i += 1
            children.append(layer)
            child_params.append(p)
            child_state.append(s)
            i += 1
        merged = serial(*children)
        return (merged, dict(zip(merged.names, child_params)),
                dict(zip(merged.names, child_state)))
    if model.kind == "residual":
        parts = [merge_batch_norm(c, params[n], state.get(n, {}))
                 for n, c in zip(model.names, model.children)]
        merged = residual(*(p[0] for p in parts))
        return (merged, {n: p[1] for n, p in zip(model.names, parts)},
                {n: p[2] for n, p in zip(model.names, parts)})
    return model, params, state


def _fold(layer: Layer, params, bn: Layer, bn_params, bn_state):
    if "mean" not in bn_state or "var" not in bn_state:
        raise ValueError("merge_batch_norm: expected the batch-norm state with running 'mean' "
                         f"and 'var', got {sorted(bn_state)}")
    s = bn_params["scale"] / jnp.sqrt(bn_state["var"] + bn.config["eps"])
    t = bn_params["bias"] - bn_state["mean"] * s
    w = params["w"] * s
    b = (params["b"] * s + t) if "b" in params else t
    if "b" in params:
        return layer, {"w": w, "b": b}
    return _with_bias(layer), {"w": w, "b": b}


def _with_bias(layer: Layer) -> Layer:
    """``layer`` (built without bias) plus a bias on its output channels."""

    def init(key, input_shape, dtype=None):
        out, p, s = layer.init(key, input_shape, dtype)
        return out, {**p, "b": jnp.zeros((out[-1],), p["w"].dtype)}, s

    def apply(params, x, *, state=None, key=None, train=False):
        y, new_state = layer.apply({"w": params["w"]}, x, state=state, key=key, train=train)
        return y + jnp.broadcast_to(params["b"], y.shape), new_state

    return Layer(init, apply, layer.kind, {**layer.config, "use_bias": True})


# ---------------------------------------------------------------- the walk

def _top_relevance(fn_name: str, out: jax.Array, target):
    """The explained score ``(batch,)`` and the relevance put on the outputs."""
    n = out.shape[0]
    if out.ndim == 1:
        return out, out
    if out.ndim != 2:
        raise ValueError(f"{fn_name}: expected model output (batch,) or (batch, outputs), got "
                         f"{out.shape}")
    if target is None:
        target = jnp.argmax(out, axis=1)
    target = jnp.asarray(target)
    if not jnp.issubdtype(target.dtype, jnp.integer) or target.shape not in ((), (n,)):
        raise ValueError(f"{fn_name}: expected target None, an int or ints of shape ({n},), got "
                         f"{target.dtype} {target.shape}")
    target = jnp.broadcast_to(target, (n,))
    mask = jax.nn.one_hot(target, out.shape[1], dtype=out.dtype)
    return (out * mask).sum(1), out * mask


class _Node(NamedTuple):
    kind: str                 # "leaf", "serial", "residual"
    path: str
    layer: Layer | None
    params: Any
    state: Any
    x: Any                    # leaf input
    rule: Rule | None
    children: tuple           # sub-nodes
    outputs: tuple            # residual: (block output, shortcut output)


def _forward(layer: Layer, params, state, x, path: str, rules: dict):
    if layer.kind == "serial":
        nodes, items, i = [], list(zip(layer.names, layer.children)), 0
        while i < len(items):
            name, child = items[i]
            p, s = params.get(name, {}), state.get(name, {})
            if (child.kind in WEIGHTED_KINDS and i + 1 < len(items)
                    and items[i + 1][1].kind == "batch_norm"):
                bn_name, bn = items[i + 1]
                child, p = _fold(child, p, bn, params[bn_name], state.get(bn_name, {}))
                i += 1
            x, node = _forward(child, p, s, x, f"{path}/{name}" if path else name, rules)
            nodes.append(node)
            i += 1
        return x, _Node("serial", path, layer, None, None, None, None, tuple(nodes), ())
    if layer.kind == "residual":
        y_block, block = _forward(layer.children[0], params["block"], state.get("block", {}), x,
                                  f"{path}/block", rules)
        nodes, y_short = [block], x
        if len(layer.children) == 2:
            y_short, short = _forward(layer.children[1], params["shortcut"],
                                      state.get("shortcut", {}), x, f"{path}/shortcut", rules)
            nodes.append(short)
        return (y_block + y_short,
                _Node("residual", path, layer, None, None, None, None, tuple(nodes),
                      (y_block, y_short)))
    name = path or layer.kind
    if layer.kind == "activation" and layer.config.get("name") not in PASS_ACTIVATIONS:
        raise ValueError(
            f"lrp: layer {name!r} is a {layer.config.get('name')!r} activation; LRP passes "
            f"relevance through element-wise activations {PASS_ACTIVATIONS} and explains "
            f"logits, so drop a final softmax")
    if layer.kind not in (*WEIGHTED_KINDS, "activation", "max_pool", "avg_pool", "flatten",
                          "dropout", "batch_norm"):
        raise ValueError(f"lrp: layer {name!r} of kind {layer.kind!r} is not supported; "
                         f"expected dense, conv2d, max_pool, avg_pool, flatten, dropout, "
                         f"activation, batch_norm, serial or residual")
    y, _ = layer.apply(params, x, state=state)
    return y, _Node("leaf", name, layer, params, state, x, rules.get(name), (), ())


def _sum_all(r):
    return r.reshape(r.shape[0], -1).sum(1)


def _backward(node: _Node, r, gaps: dict, stabilizer: float):
    if node.kind == "serial":
        for child in reversed(node.children):
            r = _backward(child, r, gaps, stabilizer)
        return r
    if node.kind == "residual":
        y_block, y_short = node.outputs
        share = _divide(r, y_block + y_short, stabilizer)
        r_block, r_short = y_block * share, y_short * share
        gaps[f"{node.path}/sum"] = _sum_all(r_block) + _sum_all(r_short) - _sum_all(r)
        r_in = _backward(node.children[0], r_block, gaps, stabilizer)
        if len(node.children) == 2:
            r_short = _backward(node.children[1], r_short, gaps, stabilizer)
        return r_in + r_short
    r_in = _leaf_relevance(node, r, stabilizer)
    gaps[node.path] = _sum_all(r_in) - _sum_all(r)
    return r_in


def _leaf_relevance(node: _Node, r, stabilizer: float):
    layer, x = node.layer, node.x
    if layer.kind in ("activation", "dropout"):
        return r
    if layer.kind == "max_pool" and _tiles(layer, x):
        return _winner_relevance(layer.config["window"], x, r)
    if layer.kind in ("max_pool", "flatten"):
        _, vjp = jax.vjp(lambda a: layer.apply({}, a)[0], x)
        return vjp(r)[0]
    if layer.kind == "avg_pool":
        return _affine_relevance(epsilon(stabilizer), lambda p, a: layer.apply(p, a)[0], {}, x, r)
    if layer.kind == "batch_norm":
        s = node.params["scale"] / jnp.sqrt(node.state["var"] + layer.config["eps"])
        p = {"w": s, "b": node.params["bias"] - node.state["mean"] * s}
        return _affine_relevance(
            epsilon(stabilizer), lambda q, a: a * jnp.broadcast_to(q["w"], a.shape)
            + jnp.broadcast_to(q["b"], a.shape), p, x, r)
    return _affine_relevance(node.rule, lambda p, a: layer.apply(p, a)[0], node.params, x, r)


def _tiles(layer: Layer, x) -> bool:
    """Whether the pooling windows tile ``x``: stride = window, no padding, sizes divisible."""
    window, strides = layer.config["window"], layer.config["strides"]
    pads = explicit_padding(x.shape[1:3], window, strides, layer.config["padding"])
    return (strides == window and all(p == (0, 0) for p in pads)
            and x.shape[1] % window[0] == 0 and x.shape[2] % window[1] == 0)


def _winner_relevance(window, x, r):
    """Max pooling over tiling windows: each window's relevance goes to its first largest input.

    Equal to the gradient of max pooling (``select_and_scatter``, first winner
    on ties) but an ``argmax`` over reshaped windows, several times faster on CPU.
    """
    (wh, ww), (n, h, w, c) = window, x.shape
    tiles = (x.reshape(n, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 5, 2, 4)
             .reshape(n, h // wh, w // ww, c, wh * ww))
    spread = jax.nn.one_hot(jnp.argmax(tiles, axis=-1), wh * ww, dtype=r.dtype) * r[..., None]
    return (spread.reshape(n, h // wh, w // ww, c, wh, ww).transpose(0, 1, 4, 2, 5, 3)
            .reshape(n, h, w, c))


def _sign(z):
    return jnp.where(z >= 0, 1, -1).astype(z.dtype)


def _stabilize(z, eps: float):
    return z + eps * _sign(z)


def _divide(r, z, eps: float):
    """``r / stab(z)``; with ``eps = 0``, zero where ``z = 0``."""
    if eps > 0:
        return r / _stabilize(z, eps)
    safe = jnp.where(z == 0, jnp.ones_like(z), z)
    return jnp.where(z == 0, jnp.zeros_like(r), r / safe)


def _affine_relevance(rule: Rule, apply: Callable, params, a, r):
    """Relevance of the inputs ``a`` of the affine map ``apply(params, a)`` under ``rule``.

    LRP-gamma and z^B need several modified copies of the layer; for dense
    and conv layers (weights ``(..., in, out)``, inputs ``(..., in)``) they
    run as one layer with stacked channels, one forward and one transpose,
    instead of one call per copy.
    """
    if rule.name in ("0", "epsilon"):
        z, vjp = jax.vjp(lambda t: apply(params, t), a)
        return a * vjp(_divide(r, z, rule.epsilon))[0]
    if rule.name == "gamma":
        return _gamma_relevance(rule, apply, params, a, r)
    if rule.name == "zbox":
        return _zbox_relevance(rule, apply, params, a, r)
    raise ValueError(f"lrp: unknown rule {rule.name!r}; expected '0', 'epsilon', 'gamma', 'zbox'")


def _blocks(rows):
    """The weight of a stacked-channel layer: ``rows[i][j]`` maps input block i to output block j."""
    return jnp.concatenate([jnp.concatenate(row, axis=-1) for row in rows], axis=-2)


def _stacked(apply, w, b=None):
    """``apply`` with weight ``w`` and bias ``b`` (zeros if None), for any in/out channel count."""
    return lambda t: apply({"w": w, "b": jnp.zeros(w.shape[-1], w.dtype) if b is None else b}, t)


def _transpose(apply, w, inputs, s):
    """``W^T s`` for the layer with weight ``w`` (the gradient of ``<s, apply(w, t)>`` in ``t``)."""
    return jax.vjp(_stacked(apply, w), inputs)[1](s)[0]


def _gamma_relevance(rule: Rule, apply, params, a, r):
    """LRP-gamma: ``up = w + gamma w+`` explains ``z > 0``, ``dn = w + gamma w-`` ``z < 0``.

    ``z+ = up a+ + dn a-`` and ``z- = dn a+ + up a-`` (biases modified alike);
    ``R = a+ (up^T s+ + dn^T s-) + a- (dn^T s+ + up^T s-)``.
    """
    g, w = rule.gamma, params["w"]
    up, dn = w + g * jnp.maximum(w, 0), w + g * jnp.minimum(w, 0)
    a_pos, a_neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
    bias = None
    if "b" in params:
        b = params["b"]
        bias = jnp.concatenate([b, b + g * jnp.maximum(b, 0), b + g * jnp.minimum(b, 0)])
    stacked_in = jnp.concatenate([a_pos, a_neg], axis=-1)
    z, z_pos, z_neg = jnp.split(
        _stacked(apply, _blocks([[w, up, dn], [w, dn, up]]), bias)(stacked_in), 3, axis=-1)
    s_pos = _divide(jnp.where(z > 0, r, 0), z_pos, rule.epsilon)
    s_neg = _divide(jnp.where(z < 0, r, 0), z_neg, rule.epsilon)
    c_pos, c_neg = jnp.split(
        _transpose(apply, _blocks([[up, dn], [dn, up]]), stacked_in,
                   jnp.concatenate([s_pos, s_neg], axis=-1)), 2, axis=-1)
    return a_pos * c_pos + a_neg * c_neg


def _zbox_relevance(rule: Rule, apply, params, a, r):
    """z^B: ``z = w a - w+ low - w- high`` (biases cancel); ``R = a w^T s - low w+^T s - high w-^T s``.
    """
    w = params["w"]
    plus, minus = jnp.maximum(w, 0), jnp.minimum(w, 0)
    low = jnp.broadcast_to(jnp.asarray(rule.low, a.dtype), a.shape)
    high = jnp.broadcast_to(jnp.asarray(rule.high, a.dtype), a.shape)
    stacked_in = jnp.concatenate([a, low, high], axis=-1)
    weight = _blocks([[w], [-plus], [-minus]])
    s = _divide(r, _stacked(apply, weight)(stacked_in), rule.epsilon)
    c, c_low, c_high = jnp.split(_transpose(apply, weight, stacked_in, s), 3, axis=-1)
    return a * c + low * c_low + high * c_high
