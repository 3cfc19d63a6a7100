"""Pure-function layers: each is a :class:`Layer` pair ``(init, apply)``.

Layout: leading batch axis; dense kernels ``(in, out)`` applied as ``x @ w``;
images NHWC; conv kernels HWIO. Params are nested dicts, running statistics
live in a separate state tree, randomness comes from explicit keys.
"""

from jdl.nn import activations, initializers
from jdl.nn.activations import (
    activation, identity, log_softmax, relu, scaled_tanh, sigmoid, softmax, tanh)
from jdl.nn.core import Layer, parallel, residual, serial, stateless
from jdl.nn.dense import dense

__all__ = [
    "Layer", "activation", "activations", "dense", "identity", "initializers", "log_softmax",
    "parallel", "relu", "residual", "scaled_tanh", "serial", "sigmoid", "softmax", "stateless",
    "tanh",
]
