"""Batch attribution: Shapley values, LRP, gradient methods and activation maximisation.

Everything is batched over instances and compiled with ``jit``: Shapley
sampling builds instances x coalitions x background rows into one program
with a bound on the rows per model call; LRP is one backward walk over a jdl
model with per-layer rules; gradient methods loop with ``lax.scan``; activation
maximisation runs an optax optimiser for all classes at once with ``vmap``.
"""

from jdl.attribution.activation_max import (
    ActivationMaximum, activation_maximization, gaussian_prior, l2_prior, save_image_grid,
    total_variation_prior)
from jdl.attribution.gradients import (
    IntegratedGradients, gradient_x_input, integrated_gradients, smoothgrad)
from jdl.attribution.lrp import (
    LRPResult, Rule, by_position, by_type, epsilon, epsilon_gamma_box, gamma, layer_names, lrp,
    lrp_0, merge_batch_norm, rules_of, uniform, zbox)
from jdl.attribution.shapley import MAX_EXACT_GROUPS, ShapleyValues, patch_groups, shapley

__all__ = [
    "ActivationMaximum", "IntegratedGradients", "LRPResult", "MAX_EXACT_GROUPS", "Rule",
    "ShapleyValues", "activation_maximization", "by_position", "by_type", "epsilon",
    "epsilon_gamma_box", "gamma", "gaussian_prior", "gradient_x_input", "integrated_gradients",
    "l2_prior", "layer_names", "lrp", "lrp_0", "merge_batch_norm", "patch_groups", "rules_of",
    "save_image_grid", "shapley", "smoothgrad", "total_variation_prior", "uniform", "zbox",
]
