"""Training and optimisation: compiled optax loops, the notes' optimisers and schedules,
restarts in one vmapped program, checkpoints, and data-parallel runs.

``fit`` runs each epoch as one ``lax.scan`` over the minibatches of a per-epoch
permutation and several epochs per compiled call; ``train_step`` is the single
step for hand-written loops. See ``docs/training.md`` for a guide.
"""

from jdl.train.checkpoint import (
    CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint)
from jdl.train.loop import (
    EarlyStopping, FitResult, NonFiniteLossError, TrainState, fit, train_step)
from jdl.train.objective import StatefulLoss, model_loss, model_metric
from jdl.train.optimizers import (
    ScaleByAdamUncorrectedState, adagrad, adam, adamw, heavy_ball, nesterov, rmsprop,
    scale_by_adam_uncorrected, sgd)
from jdl.train.restarts import RestartsResult, fit_restarts, split_restart_key
from jdl.train.schedules import (
    Schedule, Summability, constant, cosine, exponential, robbins_monro,
    robbins_monro_conditions, step_decay, warmup)

__all__ = [
    "CheckpointError", "EarlyStopping", "FitResult", "NonFiniteLossError", "RestartsResult",
    "ScaleByAdamUncorrectedState", "Schedule", "StatefulLoss", "Summability", "TrainState",
    "adagrad", "adam", "adamw", "checkpoint_path", "constant", "cosine", "exponential", "fit",
    "fit_restarts", "heavy_ball", "load_checkpoint", "model_loss", "model_metric", "nesterov",
    "rmsprop", "robbins_monro", "robbins_monro_conditions", "save_checkpoint",
    "scale_by_adam_uncorrected", "sgd",
    "split_restart_key", "step_decay", "train_step", "warmup",
]
