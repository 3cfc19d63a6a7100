"""Domain-adversarial training (DANN): a domain critic behind a gradient-reversal layer.

The notes, on distribution shift: "use a domain critic where your model is
trying to classify correctly and at the same time trying to represent the
data features such that both domains have the same representation". Ganin
et al. (2016), "Domain-Adversarial Training of Neural Networks" (JMLR 17):
a feature extractor ``G_f`` feeds a label classifier ``G_y`` and, through a
gradient-reversal layer, a domain critic ``G_d``. Minimising
``L_y + L_d`` by gradient descent trains ``G_y`` and ``G_d`` as usual while
``G_f`` follows ``∇L_y - λ ∇L_d``: it learns features that classify labels
and confuse the critic.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jdl.nn.core import Layer

__all__ = ["dann", "dann_loss", "domain_accuracy", "gradient_reversal", "reverse_gradient"]


@jax.custom_vjp
def _reverse(x, scale):
    return x


def _reverse_fwd(x, scale):
    return x, scale


def _reverse_bwd(scale, g):
    return (-scale * g).astype(g.dtype), jnp.zeros_like(scale)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def reverse_gradient(x: ArrayLike, scale: ArrayLike = 1.0) -> jax.Array:
    """Identity forward, ``-scale * g`` backward (Ganin & Lempitsky, 2015).

    Reverse mode only (``jax.grad``, ``jax.vjp``); forward-mode ``jax.jvp``
    raises, as for any ``jax.custom_vjp`` function.

    Args:
      x: any array.
      scale: ``λ``, a float or a traced scalar (so it can follow a schedule,
        e.g. Ganin's ``2 / (1 + exp(-10 p)) - 1``); it gets no gradient.

    Returns:
      ``x`` unchanged.
    """
    x = jnp.asarray(x)
    return _reverse(x, jnp.asarray(scale, x.dtype))


def gradient_reversal(scale: float = 1.0) -> Layer:
    """The gradient-reversal layer: ``y = x``; ``∂L/∂x = -scale ∂L/∂y``.

    Args:
      scale: ``λ``, the weight of the reversed gradient (``0`` blocks it).

    Returns:
      A parameter-free :class:`~jdl.nn.Layer` of kind ``"gradient_reversal"``
      with config ``{"scale"}``; output shape = input shape.
    """
    if not isinstance(scale, (int, float)):
        raise TypeError(f"gradient_reversal: expected a float scale, got {type(scale).__name__}")

    def init(key, input_shape, dtype=None):
        del key, dtype
        return tuple(input_shape), {}, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del params, key, train
        return reverse_gradient(x, scale), ({} if state is None else state)

    return Layer(init, apply, "gradient_reversal", {"scale": float(scale)})


def dann(features: Layer, classifier: Layer, critic: Layer, *, scale: float = 1.0) -> Layer:
    """A DANN model: shared features, a label head, and a domain critic behind gradient reversal.

    Args:
      features: ``G_f``, input ``(batch, ...)`` to features ``(batch, ...)``.
      classifier: ``G_y``, features to class logits ``(batch, classes)``.
      critic: ``G_d``, features to one domain logit ``(batch, 1)`` (target vs source).
      scale: ``λ`` of the reversal.

    Returns:
      A :class:`~jdl.nn.Layer` of kind ``"dann"`` with params ``{"features",
      "classifier", "critic"}``; ``apply`` returns ``((class_logits,
      domain_logits), state)``. Its layers must not need state or keys
      (no batch norm; dropout runs in evaluation mode).
    """
    for name, layer in (("features", features), ("classifier", classifier), ("critic", critic)):
        if not isinstance(layer, Layer):
            raise TypeError(f"dann: expected a jdl Layer for {name}, got {type(layer).__name__}")
    reversal = gradient_reversal(scale)
    names = ("features", "classifier", "critic")

    def init(key, input_shape, dtype=None):
        k_f, k_y, k_d = jax.random.split(key, 3)
        params, state = {}, {}
        shape, params["features"], state["features"] = features.init(k_f, input_shape, dtype)
        class_shape, params["classifier"], state["classifier"] = classifier.init(k_y, shape, dtype)
        domain_shape, params["critic"], state["critic"] = critic.init(k_d, shape, dtype)
        if tuple(domain_shape[1:]) != (1,):
            raise ValueError(f"dann: expected the critic to output (batch, 1), got {domain_shape}")
        return (tuple(class_shape), tuple(domain_shape)), params, state

    def apply(params, x, *, state=None, key=None, train=False):
        del key
        h, _ = features.apply(params["features"], x, train=train)
        logits, _ = classifier.apply(params["classifier"], h, train=train)
        domain, _ = critic.apply(params["critic"], reversal.apply({}, h)[0], train=train)
        return (logits, domain), ({} if state is None else state)

    return Layer(init, apply, "dann", {"scale": float(scale)}, (features, classifier, critic),
                 names)


def dann_loss(model: Layer):
    """The DANN objective ``L_y(source) + L_d(source and target)``, a plain loss for ``jdl.train``.

    ``L_y`` is the mean softmax cross-entropy of the labelled source
    examples; ``L_d`` the mean binary cross-entropy of the critic telling
    target (1) from source (0) over both halves. The reversal inside
    ``model`` turns the critic's gradient into ``-λ ∇L_d`` for the features.

    Args:
      model: a :func:`dann` model.

    Returns:
      ``loss(params, (x_source, y_source, x_target)) -> scalar``; the three
      arrays share the leading batch axis (pair up, or tile, the two
      domains so that ``jdl.train.fit`` draws them together).
    """
    if not isinstance(model, Layer) or model.kind != "dann":
        raise TypeError(f"dann_loss: expected a dann model, got {getattr(model, 'kind', model)!r}")

    def loss(params, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise ValueError("dann_loss: expected batch (x_source, y_source, x_target), got "
                             f"{type(batch).__name__} of length {len(batch)}")
        x_s, y_s, x_t = batch
        (logits, domain), _ = model.apply(params, jnp.concatenate([x_s, x_t]))
        n = x_s.shape[0]
        label_loss = optax.softmax_cross_entropy_with_integer_labels(logits[:n], y_s).mean()
        is_target = jnp.concatenate([jnp.zeros(n), jnp.ones(x_t.shape[0])]).astype(domain.dtype)
        domain_loss = optax.sigmoid_binary_cross_entropy(domain[:, 0], is_target).mean()
        return label_loss + domain_loss

    return loss


def domain_accuracy(model: Layer, params: Any, x_source: ArrayLike, x_target: ArrayLike
                    ) -> jax.Array:
    """How well the critic of a :func:`dann` model tells the domains apart (0.5: not at all).

    Args:
      model: a :func:`dann` model.
      params: its params.
      x_source: source inputs ``(n_source, ...)``.
      x_target: target inputs ``(n_target, ...)``.

    Returns:
      The balanced accuracy of ``domain_logit > 0`` meaning target, a scalar.
    """
    (_, d_source), _ = model.apply(params, x_source)
    (_, d_target), _ = model.apply(params, x_target)
    return 0.5 * (jnp.mean(d_source[:, 0] <= 0) + jnp.mean(d_target[:, 0] > 0))
