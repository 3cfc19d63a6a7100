"""Models of the notes built on ``jdl.nn``: see ``docs/models.md``.

Sequences (RNN / LSTM with the notes' initial-state strategies, BPTT,
gradient norms over time) and auto-encoders (dense, convolutional, sparse,
denoising, U-Net, anomaly scores with AUROC, rotation augmentation).
Shift and transfer: deep ensembles with predictive uncertainty, gradient
reversal and DANN, freezing / fine-tuning parts of a params tree, and
dataset-bias helpers (plant a spurious feature, the notes' remedies).
"""

from jdl.models.anomaly import anomaly_score, auroc
from jdl.models.augment import random_rotation, rotate, rotation_objective
from jdl.models.autoencoders import (
    autoencoder, conv_autoencoder, decode, dense_autoencoder, denoising_objective, encode,
    reconstruction_objective, sparsity, unet)
from jdl.models.bias import (
    CORNERS, Planted, add_to_all_classes, corner_patch_mask, input_gradient_penalty,
    plant_feature, reliance, remove_feature, spurious_column)
from jdl.models.domain import (
    dann, dann_loss, domain_accuracy, gradient_reversal, reverse_gradient)
from jdl.models.ensembles import (
    Ensemble, Uncertainty, disagreement, entropy, expected_entropy, fit_ensemble,
    member_probabilities, mutual_information, predictive_entropy, predictive_mean, uncertainty)
from jdl.models.sequence import (
    CELLS, H0_STRATEGIES, hidden_gradient_norms, rnn_bptt, rows_as_sequence, sequence_model,
    warm_up_h0)
from jdl.models.transfer import (
    TransferResult, digits_transfer, freeze, label_params, param_paths, partition,
    select_classes, transplant)

__all__ = [
    # sequences
    "CELLS", "H0_STRATEGIES", "hidden_gradient_norms", "rnn_bptt", "rows_as_sequence",
    "sequence_model", "warm_up_h0",
    # auto-encoders
    "anomaly_score", "auroc", "autoencoder", "conv_autoencoder", "decode", "dense_autoencoder",
    "denoising_objective", "encode", "random_rotation", "reconstruction_objective",
    "rotate", "rotation_objective", "sparsity", "unet",
    # ensembles and domain adaptation
    "Ensemble", "Uncertainty", "dann", "dann_loss", "disagreement", "domain_accuracy", "entropy",
    "expected_entropy", "fit_ensemble", "gradient_reversal", "member_probabilities",
    "mutual_information", "predictive_entropy", "predictive_mean", "reverse_gradient",
    "uncertainty",
    # transfer learning
    "TransferResult", "digits_transfer", "freeze", "label_params", "param_paths", "partition",
    "select_classes", "transplant",
    # dataset bias
    "CORNERS", "Planted", "add_to_all_classes", "corner_patch_mask", "input_gradient_penalty",
    "plant_feature", "reliance", "remove_feature", "spurious_column",
]
