"""Shape arithmetic from the notes: conv output size, receptive field, parameter counts.

The notes give

* output size ``(n - k + p + s) / s`` with ``p`` the total padding of an axis
  (both sides), which is ``floor((n + p - k) / s) + 1`` once floored;
* receptive field, recursively from the top: ``r_{l-1} = s_l * r_l + (k_l - s_l)``
  with ``r_L = 1``;
* receptive field in closed form: ``RF = sum_l (k_l - 1) * prod_{i<l} s_i + 1``;
* "number of biases = hidden + outputs" and "number of parameters = inputs x
  hidden + hidden x outputs" for one hidden layer. The second counts weights
  only: the total adds the biases.

A dilated kernel of size ``k`` and dilation ``d`` covers ``d * (k - 1) + 1``
inputs; every formula here takes that effective size.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Inputs covered by a kernel of size ``kernel`` at ``dilation``: ``d (k - 1) + 1``."""
    return dilation * (kernel - 1) + 1


def _check_geometry(fn_name: str, n: int, kernel: int, padding: int, stride: int,
                    dilation: int) -> int:
    if min(kernel, stride, dilation) < 1 or padding < 0 or n < 1:
        raise ValueError(
            f"{fn_name}: expected n, kernel, stride, dilation >= 1 and padding >= 0, got "
            f"n={n}, kernel={kernel}, padding={padding}, stride={stride}, dilation={dilation}")
    k = effective_kernel(kernel, dilation)
    if n + padding < k:
        raise ValueError(
            f"{fn_name}: the (effective) kernel {k} is larger than the padded input "
            f"{n + padding}")
    return k


def conv_output_size_notes(n: int, kernel: int, padding: int, stride: int,
                           dilation: int = 1) -> int:
    """The notes' formula ``(n - k + p + s) / s``, floored.

    Args:
      n: input size along one axis.
      kernel: kernel size ``k``.
      padding: total padding ``p`` of that axis (both sides together).
      stride: stride ``s``.
      dilation: kernel dilation; ``k`` is replaced by ``d (k - 1) + 1``.
    """
    k = _check_geometry("conv_output_size_notes", n, kernel, padding, stride, dilation)
    return (n - k + padding + stride) // stride


def conv_output_size(n: int, kernel: int, padding: int, stride: int, dilation: int = 1) -> int:
    """The usual ``floor((n + p - k) / s) + 1`` with ``p`` the total padding."""
    k = _check_geometry("conv_output_size", n, kernel, padding, stride, dilation)
    return (n + padding - k) // stride + 1


def same_padding(n: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """The ``(before, after)`` padding XLA uses for ``"SAME"``: output ``ceil(n / s)``."""
    k = effective_kernel(kernel, dilation)
    total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
    return total // 2, total - total // 2


class LayerGeometry(NamedTuple):
    """Kernel size and stride of one spatial layer along one axis."""

    kernel: int
    stride: int


def receptive_field_recursive(layers: Sequence[LayerGeometry]) -> int:
    """The notes' recursion ``r_{l-1} = s_l r_l + (k_l - s_l)`` from ``r_L = 1`` down to ``r_0``.

    Args:
      layers: ``(kernel, stride)`` per layer, input side first.
    """
    r = 1
    for layer in reversed(layers):
        r = layer.stride * r + (layer.kernel - layer.stride)
    return r


def receptive_field_closed(layers: Sequence[LayerGeometry]) -> int:
    """The notes' closed form ``RF = sum_l (k_l - 1) prod_{i<l} s_i + 1``."""
    rf, jump = 1, 1
    for layer in layers:
        rf += (layer.kernel - 1) * jump
        jump *= layer.stride
    return rf


def spatial_geometry(model) -> list[tuple[LayerGeometry, LayerGeometry]]:
    """Per-axis ``(kernel, stride)`` of the spatial layers of a jdl model, input side first.

    Walks ``serial`` models and reads ``conv2d``, ``max_pool`` and
    ``avg_pool`` configs; element-wise layers (activations, batch norm,
    dropout) do not change the receptive field and are skipped.

    Args:
      model: a :class:`jdl.nn.Layer`.

    Returns:
      One ``(rows, cols)`` pair of :class:`LayerGeometry` per spatial layer.

    Raises:
      ValueError: for a layer that mixes positions (dense, flatten,
        attention, residual), whose receptive field is not given by these
        formulas.
    """
    elementwise = {"activation", "batch_norm", "layer_norm", "dropout"}
    if model.kind == "serial":
        return [g for child in model.children for g in spatial_geometry(child)]
    if model.kind in elementwise:
        return []
    if model.kind in ("conv2d", "max_pool", "avg_pool"):
        cfg = model.config
        kernel = cfg["kernel_size"] if model.kind == "conv2d" else cfg["window"]
        dilation = cfg.get("dilation", (1, 1))
        return [tuple(LayerGeometry(effective_kernel(k, d), s)
                      for k, d, s in zip(kernel, dilation, cfg["strides"]))]
    raise ValueError(
        f"spatial_geometry: expected conv2d / pooling / element-wise layers, got a "
        f"{model.kind!r} layer")


def receptive_field(model) -> tuple[int, int]:
    """Receptive field ``(rows, cols)`` of one output unit of a conv/pool stack."""
    geometry = spatial_geometry(model)
    return tuple(receptive_field_closed([g[axis] for g in geometry]) for axis in (0, 1))


def mlp_bias_count_notes(num_hidden: int, num_outputs: int) -> int:
    """The notes' "number of biases = hidden neurons + outputs" (one hidden layer)."""
    return num_hidden + num_outputs


def mlp_weight_count_notes(num_inputs: int, num_hidden: int, num_outputs: int) -> int:
    """The notes' "number of parameters = inputs x hidden + hidden x outputs": the weights."""
    return num_inputs * num_hidden + num_hidden * num_outputs


def mlp_counts(sizes: Sequence[int]) -> dict[str, int]:
    """Weight, bias and total counts of a dense MLP with layer sizes ``sizes``.

    Args:
      sizes: ``(inputs, hidden_1, ..., outputs)``.

    Returns:
      ``{"weights": sum n_l n_{l+1}, "biases": sum_{l>0} n_l, "total": both}``.
    """
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp_counts: expected at least two positive sizes, got {tuple(sizes)}")
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    biases = sum(sizes[1:])
    return {"weights": weights, "biases": biases, "total": weights + biases}


def count_params(params: Any) -> int:
    """Number of scalars in a params pytree (any nesting, any leaf shapes)."""
    return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree.leaves(params)))
