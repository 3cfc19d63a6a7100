"""Pure-function layers: each is a :class:`Layer` pair ``(init, apply)``.

Layout: leading batch axis; dense kernels ``(in, out)`` applied as ``x @ w``;
images NHWC; conv kernels HWIO. Params are nested dicts, running statistics
live in a separate state tree, randomness comes from explicit keys.
"""

from jdl.nn import activations, initializers
from jdl.nn.activations import (
    activation, identity, log_softmax, relu, scaled_tanh, sigmoid, softmax, tanh)
from jdl.nn.attention import attention, notes_attention, self_attention
from jdl.nn.conv import conv2d
from jdl.nn.core import Layer, parallel, residual, serial, stateless
from jdl.nn.dense import dense
from jdl.nn.dropout import dropout
from jdl.nn.normalization import batch_norm, layer_norm
from jdl.nn.pooling import avg_pool, max_pool
from jdl.nn.recurrent import lstm, lstm_cell, rnn, rnn_cell
from jdl.nn.reshape import flatten, reshape, upsample

__all__ = [
    "Layer", "activation", "activations", "attention", "avg_pool", "batch_norm", "conv2d", "dense",
    "dropout", "flatten", "identity", "initializers", "layer_norm", "log_softmax", "lstm",
    "lstm_cell", "max_pool", "notes_attention", "parallel", "relu", "reshape", "residual", "rnn",
    "rnn_cell", "scaled_tanh", "self_attention", "serial", "sigmoid", "softmax", "stateless",
    "tanh", "upsample",
]
