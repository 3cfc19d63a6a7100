"""Models of the notes built on ``jdl.nn``: see ``docs/models.md``.

Sequences (RNN / LSTM with the notes' initial-state strategies, BPTT,
gradient norms over time) and auto-encoders (dense, convolutional, sparse,
denoising, U-Net, anomaly scores with AUROC, rotation augmentation).
"""

from jdl.models.anomaly import anomaly_score, auroc
from jdl.models.augment import random_rotation, rotate, rotation_objective
from jdl.models.autoencoders import (
    autoencoder, conv_autoencoder, decode, dense_autoencoder, denoising_objective, encode,
    reconstruction_objective, reshape, sparsity, unet, upsample)
from jdl.models.sequence import (
    CELLS, H0_STRATEGIES, hidden_gradient_norms, rnn_bptt, rows_as_sequence, sequence_model,
    warm_up_h0)

__all__ = [
    # sequences
    "CELLS", "H0_STRATEGIES", "hidden_gradient_norms", "rnn_bptt", "rows_as_sequence",
    "sequence_model", "warm_up_h0",
    # auto-encoders
    "anomaly_score", "auroc", "autoencoder", "conv_autoencoder", "decode", "dense_autoencoder",
    "denoising_objective", "encode", "random_rotation", "reconstruction_objective", "reshape",
    "rotate", "rotation_objective", "sparsity", "unet", "upsample",
]
