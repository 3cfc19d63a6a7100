"""jdl: a JAX functional research toolkit for deep learning.

Pure-function layers and losses, Hessian-spectrum tools, optax training and
jit/vmap-batched attribution, built from the course notes in ``NOTES.md``.
"""

from jdl import (
    adversarial, attribution, backprop, data, hessian, losses, metrics, models, nn, parallel,
    regularize, shapes, train)

__version__ = "0.1.0"

__all__ = [
    "__version__", "adversarial", "attribution", "backprop", "data", "hessian", "losses",
    "metrics", "models", "nn", "parallel", "regularize", "shapes", "train",
]
