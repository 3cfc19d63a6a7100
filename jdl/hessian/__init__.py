"""Hessian spectrum toolkit: products, Lanczos, eigenvalues, trace, density, conditioning.

A loss is ``loss_fn(params, batch) -> scalar`` with ``params`` any pytree of
float arrays (jdl dicts, Flax variables, ...) and ``batch`` any pytree of
arrays with a leading example axis; ``data`` is one batch or a Python list of
batches (then the mean over every example, batches weighted by size). Every
function also takes ``curvature="ggn"`` (with a :class:`SplitLoss`) for the
generalised Gauss-Newton matrix and ``block=`` for a diagonal block.

Example:
    >>> import jax
    >>> from jdl import hessian, losses, nn
    >>> model = nn.serial(nn.dense(16), nn.activation("tanh"), nn.dense(3))
    >>> _, params, _ = model.init(jax.random.key(0), (-1, 4))
    >>> x, y = jax.random.normal(jax.random.key(1), (32, 4)), jax.numpy.arange(32) % 3
    >>> def loss_fn(params, batch):
    ...     return losses.softmax_cross_entropy(model.apply(params, batch[0])[0], batch[1])
    >>> eig = hessian.eigenvalues(loss_fn, params, (x, y), k=3, which="both",
    ...                           key=jax.random.key(2))
    >>> eig.values.shape
    (6,)
"""

from jdl.hessian.blocks import eigenvector_mass, layer_eigenvalues, layer_paths
from jdl.hessian.conditioning import (
    Conditioning, LearningRates, condition_number, learning_rates)
from jdl.hessian.dense import hessian_matrix
from jdl.hessian.density import SpectralDensity, plot_spectral_density, spectral_density
from jdl.hessian.eigen import Eigen, eigenvalues
from jdl.hessian.lanczos import LanczosResult, lanczos
from jdl.hessian.operators import SplitLoss, hvp
from jdl.hessian.sharpness import SharpnessTrace, sharpness, track_sharpness
from jdl.hessian.trace import TraceEstimate, trace

__all__ = [
    "Conditioning", "Eigen", "LanczosResult", "LearningRates", "SharpnessTrace",
    "SpectralDensity", "SplitLoss", "TraceEstimate", "condition_number",
    "eigenvalues", "eigenvector_mass", "hessian_matrix", "hvp", "lanczos", "layer_eigenvalues",
    "layer_paths", "learning_rates", "plot_spectral_density", "sharpness", "spectral_density",
    "trace", "track_sharpness",
]
