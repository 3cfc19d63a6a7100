"""Auto-encoders of the notes: dense and convolutional, sparse, denoising, and a U-Net.

An auto-encoder is a :class:`~jdl.nn.Layer` of kind ``"autoencoder"`` with two
children, ``encoder`` and ``decoder``; :func:`encode` and :func:`decode` run
them alone. The notes' dense auto-encoder::

    encode(x) = relu(x.reshape(batch, -1) @ V + b)      # the code z
    decode(z) = (z @ W + a).reshape(x.shape)

is :func:`dense_autoencoder` (``V, b`` are the encoder's dense ``w, b``; ``W, a``
the decoder's). In the convolutional one (:func:`conv_autoencoder`) "W becomes
h convolution filters and the source code are h sparse feature maps".

Losses (from :mod:`jdl.losses`): :func:`reconstruction_objective` is the
reconstruction cost, plus ``lam * ||z||_1`` for a sparse auto-encoder;
:func:`denoising_objective` adds noise at the input, "to make it invariant to
small irrelevant variations". :func:`sparsity` is the notes' check, the
fraction of zero code units.

:func:`unet` (Ronneberger et al., "U-Net", MICCAI 2015) concatenates each
encoder level's feature maps to the decoder at the same resolution, so "low
level data like spatial information" skips the bottleneck.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jdl import losses
from jdl.nn.activations import activation as activation_layer
from jdl.nn.conv import conv2d
from jdl.nn.core import Layer, serial, split_key
from jdl.nn.dense import dense
from jdl.nn.pooling import max_pool
from jdl.nn.reshape import flatten, reshape, upsample
from jdl.train.objective import StatefulLoss

__all__ = [
    "autoencoder", "conv_autoencoder", "decode", "dense_autoencoder", "denoising_objective",
    "encode", "reconstruction_objective", "sparsity", "unet",
]


def autoencoder(encoder: Layer, decoder: Layer) -> Layer:
    """``x_rec = decoder(encoder(x))``, with the code ``z = encoder(x)`` reachable.

    Args:
      encoder: maps inputs ``(batch, ...)`` to codes.
      decoder: maps codes back to the input shape.

    Returns:
      A :class:`~jdl.nn.Layer` of kind ``"autoencoder"`` with children
      ``("encoder", "decoder")`` and params ``{"encoder": ..., "decoder": ...}``.

    Raises:
      TypeError: if either part is not a Layer.
      ValueError: at ``init`` if the decoder's output shape differs from the input shape.
    """
    for name, part in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(part, Layer):
            raise TypeError(f"autoencoder: expected a Layer for {name}, got {type(part).__name__}")

    def init(key, input_shape, dtype=None):
        k_enc, k_dec = jax.random.split(key)
        code_shape, p_enc, s_enc = encoder.init(k_enc, input_shape, dtype)
        out_shape, p_dec, s_dec = decoder.init(k_dec, code_shape, dtype)
        if tuple(out_shape[1:]) != tuple(input_shape[1:]):
            raise ValueError(
                f"autoencoder: decoder output shape {tuple(out_shape)} differs from the input "
                f"shape {tuple(input_shape)}")
        return tuple(input_shape), {"encoder": p_enc, "decoder": p_dec}, {
            "encoder": s_enc, "decoder": s_dec}

    def apply(params, x, *, state=None, key=None, train=False):
        state = {} if state is None else state
        k_enc, k_dec = split_key(key, 2)
        z, s_enc = encoder.apply(params["encoder"], x, state=state.get("encoder", {}),
                                 key=k_enc, train=train)
        x_rec, s_dec = decoder.apply(params["decoder"], z, state=state.get("decoder", {}),
                                     key=k_dec, train=train)
        return x_rec, {"encoder": s_enc, "decoder": s_dec}

    return Layer(init, apply, "autoencoder", {}, (encoder, decoder), ("encoder", "decoder"))


def _check_autoencoder(fn_name: str, model: Layer) -> None:
    if not isinstance(model, Layer) or model.kind != "autoencoder":
        raise ValueError(
            f"{fn_name}: expected an autoencoder Layer (kind 'autoencoder'), got "
            f"{getattr(model, 'kind', type(model).__name__)!r}")


def encode(model: Layer, params, x: ArrayLike) -> jax.Array:
    """The code ``z`` of ``x`` (evaluation mode, no state), e.g. ``relu(x V + b)``.

    Args:
      model: an :func:`autoencoder`.
      params: its params.
      x: inputs ``(batch, ...)``.

    Returns:
      The codes, ``(batch, ...)`` (``(batch, code)`` for a dense auto-encoder).
    """
    _check_autoencoder("encode", model)
    return model.children[0].apply(params["encoder"], x)[0]


def decode(model: Layer, params, z: ArrayLike) -> jax.Array:
    """The reconstruction from codes ``z`` (evaluation mode), e.g. ``(z W + a)`` reshaped.

    Args:
      model: an :func:`autoencoder`.
      params: its params.
      z: codes ``(batch, ...)``.

    Returns:
      Reconstructions of the input shape ``(batch, ...)``.
    """
    _check_autoencoder("decode", model)
    return model.children[1].apply(params["decoder"], z)[0]


def dense_autoencoder(input_shape: Sequence[int], code: int, *,
                      activation: str = "relu") -> Layer:
    """The notes' dense auto-encoder: ``z = relu(flatten(x) V + b)``, ``x_rec = reshape(z W + a)``.

    Args:
      input_shape: the per-example input shape, e.g. ``(64,)`` or ``(8, 8, 1)``.
      code: code size ``h``.
      activation: the code's activation (``"relu"`` in the notes).

    Returns:
      An :func:`autoencoder` with encoder ``serial(flatten, dense(code),
      activation)`` and decoder ``serial(dense(d), reshape(input_shape))``,
      ``d = prod(input_shape)``; params ``{"encoder": {"1_dense": {"w": V, "b":
      b}}, "decoder": {"0_dense": {"w": W, "b": a}}}`` (plus empty entries).
    """
    input_shape = tuple(input_shape)
    if not isinstance(code, int) or code < 1:
        raise ValueError(f"dense_autoencoder: expected a positive int code, got {code!r}")
    encoder = serial(flatten(), dense(code), activation_layer(activation))
    decoder = serial(dense(math.prod(input_shape)), reshape(input_shape))
    return autoencoder(encoder, decoder)


def conv_autoencoder(channels: Sequence[int] = (8, 16), *, image_channels: int = 1,
                     kernel_size=3) -> Layer:
    """A convolutional auto-encoder for NHWC images: conv-relu-pool down, upsample-conv up.

    Encoder: for each ``c`` in ``channels``, ``conv2d(c) -> relu -> max_pool(2)``;
    the code is the last level's ``channels[-1]`` non-negative feature maps
    (``(batch, height / 2^L, width / 2^L, channels[-1])``). Decoder: for each
    level in reverse, ``upsample(2) -> conv2d -> relu`` back to ``channels[0]``
    maps, then a linear ``conv2d(image_channels)``.

    Args:
      channels: feature maps per level; the number of levels ``L``.
      image_channels: channels of the input images.
      kernel_size: convolution kernel size.

    Returns:
      An :func:`autoencoder`. Height and width must be divisible by ``2^L``.
    """
    channels = tuple(channels)
    if not channels or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ValueError(f"conv_autoencoder: expected positive int channels, got {channels!r}")
    enc, dec = [], []
    for c in channels:
        enc += [conv2d(c, kernel_size), activation_layer("relu"), max_pool(2)]
    for c in reversed(channels):
        dec += [upsample(2), conv2d(c, kernel_size), activation_layer("relu")]
    dec.append(conv2d(image_channels, kernel_size))
    return autoencoder(serial(*enc), serial(*dec))


def unet(channels: Sequence[int] = (8, 16, 32), *, image_channels: int = 1,
         kernel_size=3) -> Layer:
    """A small U-Net: conv levels down with pooling, up with upsampling and skip concatenation.

    With ``L = len(channels)``: level ``i < L - 1`` computes
    ``e_i = relu(conv(channels[i]))`` and pools it by 2 for level ``i + 1``; the
    bottleneck is ``relu(conv(channels[-1]))`` at ``1 / 2^(L-1)`` resolution.
    Going up, level ``i`` upsamples by 2, concatenates the skip ``e_i`` along
    channels and applies ``relu(conv(channels[i]))``; a ``1x1`` conv gives
    ``image_channels`` outputs. One conv per level (the paper uses two).

    Args:
      channels: feature maps per level, finest first, e.g. ``(8, 16, 32)`` for
        8x8 digits (8x8, 4x4, 2x2).
      image_channels: channels of the input and output.
      kernel_size: convolution kernel size.

    Returns:
      A :class:`~jdl.nn.Layer` of kind ``"unet"`` with children named
      ``"down_0" .. "down_{L-1}"``, ``"up_{L-2}" .. "up_0"``, ``"out"``; input
      and output ``(batch, height, width, image_channels)``.

    Raises:
      ValueError: for bad channels, or at ``init`` for a height or width not
        divisible by ``2^(L-1)``.
    """
    channels = tuple(channels)
    if len(channels) < 2 or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ValueError(f"unet: expected at least two positive int channels, got {channels!r}")
    depth = len(channels)
    down = [serial(conv2d(c, kernel_size), activation_layer("relu")) for c in channels]
    up = [serial(conv2d(c, kernel_size), activation_layer("relu")) for c in channels[:-1]]
    out = conv2d(image_channels, 1)
    names = ([f"down_{i}" for i in range(depth)] + [f"up_{i}" for i in reversed(range(depth - 1))]
             + ["out"])
    children = tuple(down + up[::-1] + [out])
    pool, grow = max_pool(2), upsample(2)

    def init(key, input_shape, dtype=None):
        if len(input_shape) != 4 or any(n % 2 ** (depth - 1) for n in input_shape[1:3]):
            raise ValueError(
                f"unet: expected an input shape (batch, height, width, channels) with height "
                f"and width divisible by {2 ** (depth - 1)}, got {tuple(input_shape)}")
        keys = dict(zip(names, jax.random.split(key, len(names))))
        params = {}
        shape, skips = tuple(input_shape), []
        for i in range(depth):
            if i:
                shape = pool.init(None, shape)[0]
            shape, params[f"down_{i}"], _ = down[i].init(keys[f"down_{i}"], shape, dtype)
            skips.append(shape)
        for i in reversed(range(depth - 1)):
            b, h, w, c = grow.init(None, shape)[0]
            shape = (b, h, w, c + skips[i][3])
            shape, params[f"up_{i}"], _ = up[i].init(keys[f"up_{i}"], shape, dtype)
        shape, params["out"], _ = out.init(keys["out"], shape, dtype)
        return shape, params, {}

    def apply(params, x, *, state=None, key=None, train=False):
        del key, train
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[3] != params["down_0"]["0_conv2d"]["w"].shape[2]:
            raise ValueError(
                f"unet: expected images (batch, height, width, "
                f"{params['down_0']['0_conv2d']['w'].shape[2]}), got shape {x.shape}")
        skips = []
        for i in range(depth):
            if i:
                x = pool.apply({}, x)[0]
            x = down[i].apply(params[f"down_{i}"], x)[0]
            skips.append(x)
        for i in reversed(range(depth - 1)):
            x = jnp.concatenate([grow.apply({}, x)[0], skips[i]], axis=-1)
            x = up[i].apply(params[f"up_{i}"], x)[0]
        return out.apply(params["out"], x)[0], ({} if state is None else state)

    config = {"channels": channels, "image_channels": image_channels, "kernel_size": kernel_size}
    return Layer(init, apply, "unet", config, children, tuple(names))


def sparsity(code: ArrayLike, tol: float = 0.0) -> jax.Array:
    """The notes' sparsity check: the fraction of code units that are zero (``|z| <= tol``).

    The notes' ``sparsitycheck`` divides the number of zeros by ``z.shape[0]``,
    the batch size: that is the mean number of zero units *per example*
    (between 0 and the code size), not a fraction. This function divides by
    ``z.size``, so the result is in ``[0, 1]``; the notes' number is this
    fraction times the code size per example.

    Args:
      code: codes ``(batch, ...)``, e.g. from :func:`encode`.
      tol: units with ``|z| <= tol`` count as zero (``0``: exact zeros, as relu gives).

    Returns:
      A scalar in ``[0, 1]``.
    """
    code = jnp.asarray(code)
    if code.size == 0:
        raise ValueError(f"sparsity: expected a non-empty code, got shape {code.shape}")
    if tol < 0:
        raise ValueError(f"sparsity: expected tol >= 0, got {tol}")
    return jnp.mean(jnp.abs(code) <= tol, dtype=jnp.result_type(code.dtype, float))


def reconstruction_objective(model: Layer, lam: float = 0.0):
    """``loss_fn(params, x)``: the notes' reconstruction cost, plus ``lam * ||z||_1`` if ``lam>0``.

    ``(sum (x - x_rec)^2 + lam * sum |z|) / batch`` via
    :func:`jdl.losses.reconstruction` / :func:`jdl.losses.sparse_reconstruction`.
    The batch is the input array itself (no labels), so train with
    ``jdl.train.fit(loss_fn, params, optimizer, x_train, ...)``.

    Args:
      model: an :func:`autoencoder` (or, with ``lam == 0``, any layer whose
        output has the input's shape, such as :func:`unet`).
      lam: sparsity weight ``>= 0``.

    Returns:
      ``loss_fn(params, x) -> scalar``.

    Raises:
      ValueError: for ``lam < 0``, or ``lam > 0`` with a model that has no code.
    """
    if lam < 0:
        raise ValueError(f"reconstruction_objective: expected lam >= 0, got {lam}")
    if lam > 0:
        _check_autoencoder("reconstruction_objective", model)

        def sparse_loss(params, x):
            z = encode(model, params, x)
            return losses.sparse_reconstruction(x, decode(model, params, z), z, lam)

        return sparse_loss

    def loss(params, x):
        return losses.reconstruction(x, model.apply(params, x)[0])

    return loss


def denoising_objective(model: Layer, noise: float = 0.1) -> StatefulLoss:
    """A denoising loss for ``jdl.train.fit``: reconstruct clean ``x`` from ``x + noise * eps``.

    In training (``train=True``) it is :func:`jdl.losses.denoising_loss` with
    the step's key; in evaluation (validation loss) the plain reconstruction
    cost of the clean input. Vincent et al., "Extracting and composing robust
    features with denoising autoencoders", ICML 2008.

    Args:
      model: any layer whose output has the input's shape (an
        :func:`autoencoder`, :func:`unet`), without model state.
      noise: standard deviation of the Gaussian input noise, ``>= 0``.

    Returns:
      A :class:`~jdl.train.StatefulLoss` on batches ``x``.
    """
    if noise < 0:
        raise ValueError(f"denoising_objective: expected noise >= 0, got {noise}")

    def apply_fn(params, x):
        return model.apply(params, x)[0]

    def fn(params, model_state, x, key, train):
        if train:
            return losses.denoising_loss(apply_fn, params, x, key, noise), model_state
        return losses.reconstruction(x, apply_fn(params, x)), model_state

    return StatefulLoss(fn)
