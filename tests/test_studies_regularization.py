"""Regularization studies: each runs in its tiny configuration; verdicts follow the numbers.

Trainings are cached inside the studies module, so a flip case that only
changes the evaluation (an attack radius, a norm, a selection rule) reuses
the tiny run's models.
"""

import numpy as np
import pytest

from jdl import regularize, studies
from jdl.studies import regularization as rg
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

IDS = ["reg.dataset-bias", "reg.finite-data", "reg.shift-uncertainty", "reg.domain-critic",
       "reg.feature-extractor", "reg.validation-selection", "reg.early-stopping",
       "reg.weight-decay", "reg.weight-norm-bound", "reg.decay-gradient-descent", "reg.dropout",
       "reg.prior-knowledge", "reg.transfer", "reg.local-variation", "reg.adversarial",
       "reg.dim-reduction-adversarial", "reg.frobenius", "reg.mixed-norm", "reg.cauchy-schwarz",
       "reg.mixed-norm-bound"]

_DEFAULT = {}


def default(study_id, ctx):
    """The study's tiny finding, computed once per test session."""
    if study_id not in _DEFAULT:
        _DEFAULT[study_id] = studies.load_all()[study_id].fn(ctx)
    return _DEFAULT[study_id]


def test_all_claims_registered():
    registered = [i for i in studies.load_all() if i.startswith("reg.")]
    assert registered == IDS


@pytest.mark.parametrize("study_id", IDS)
def test_runs_tiny(study_id, ctx):
    finding = well_formed(default(study_id, ctx), ctx)
    assert finding.numbers and finding.threshold and finding.method


# --- flips: a case where the claim must fail (or hold) changes the verdict ---------------------


def test_dataset_bias_needs_a_biased_feature(ctx):
    biased = default("reg.dataset-bias", ctx)
    assert biased.verdict != FAILS
    assert biased.numbers["results"]["baseline"]["reliance"] >= 0.05
    unbiased = rg.dataset_bias(ctx, p_other=1.0)  # the patch on every digit predicts nothing
    assert unbiased.verdict == FAILS
    assert unbiased.numbers["results"]["baseline"]["reliance"] < 0.05


def test_finite_data_fails_without_a_signal(ctx):
    assert default("reg.finite-data", ctx).verdict == HOLDS
    shuffled = rg.finite_data(ctx, shuffle_labels=True)
    assert shuffled.verdict == FAILS
    assert shuffled.numbers["test_error"][-1] > 0.6


def test_shift_uncertainty_does_not_flag_unshifted_data(ctx):
    assert default("reg.shift-uncertainty", ctx).verdict in (HOLDS, CAVEAT)
    same = rg.shift_uncertainty(ctx, shifts=("none",))
    assert same.verdict == FAILS
    assert 0.35 < same.numbers["shifts"]["none"]["auroc_mutual_information"] < 0.65


def test_domain_critic_aligned_only_without_shift(ctx):
    shifted = default("reg.domain-critic", ctx)
    assert shifted.verdict == FAILS  # the critic is fooled, a fresh probe is not
    assert shifted.numbers["dann"]["fresh_probe_accuracy"] > 0.65
    same = rg.domain_critic(ctx, shift="none")
    assert same.verdict == CAVEAT
    assert same.numbers["dann"]["fresh_probe_accuracy"] <= 0.65


def test_feature_extractor_fails_with_too_few_components(ctx):
    assert default("reg.feature-extractor", ctx).verdict != FAILS
    assert rg.feature_extractor(ctx, components=(2,)).verdict == FAILS


def test_validation_selection_fails_on_training_loss(ctx):
    assert default("reg.validation-selection", ctx).verdict == HOLDS
    on_train = rg.validation_selection(ctx, select_on="train")
    assert on_train.verdict != HOLDS
    assert on_train.numbers["picked_rate"] == 0.0


def test_early_stopping_without_overfitting(ctx):
    assert default("reg.early-stopping", ctx).verdict == HOLDS
    no_overfit = rg.early_stopping(ctx, epochs=8)  # stopped before it can overfit
    assert no_overfit.verdict == CAVEAT
    assert no_overfit.numbers["best_epoch"] == 8


def test_weight_decay_needs_a_rate(ctx):
    assert default("reg.weight-decay", ctx).verdict in (HOLDS, CAVEAT)
    assert rg.weight_decay(ctx, rates=(0.0,) * 5).verdict == FAILS


def test_weight_norm_bound_fails_for_a_non_operator_norm(ctx):
    finding = default("reg.weight-norm-bound", ctx)
    assert finding.verdict == HOLDS
    assert all(finding.numbers["bound_holds"].values())
    assert rg.weight_norm_bound(ctx, norms=("max_entry",)).verdict == FAILS


def test_decay_is_descent_on_the_norm_only_at_unit_norm(ctx):
    finding = default("reg.decay-gradient-descent", ctx)
    assert finding.verdict == CAVEAT
    assert finding.numbers["error_vs_squared_norm"] < 1e-12
    assert finding.numbers["sgd_penalty_vs_decay"] < 1e-12
    assert rg.decay_gradient_descent(ctx, weights="unit").verdict == HOLDS


def test_dropout_rate_zero_changes_nothing(ctx):
    finding = default("reg.dropout", ctx)
    assert finding.verdict != FAILS
    assert abs(finding.numbers["zero_fraction"] - 0.5) < 0.02
    same = rg.dropout(ctx, rate=0.0)
    assert same.verdict == FAILS
    assert same.numbers["zero_fraction"] == 0.0


def test_prior_knowledge_fails_when_removing_informative_pixels(ctx):
    assert default("reg.prior-knowledge", ctx).verdict == HOLDS
    assert rg.prior_knowledge(ctx, removed="informative").verdict == FAILS


def test_transfer_fails_when_it_never_helps(ctx):
    finding = default("reg.transfer", ctx)
    assert finding.verdict in (HOLDS, CAVEAT)
    # digits 5-9 only: the pretrained body never beats training from scratch
    assert rg.transfer(ctx, targets=("new_classes",) * 3).verdict == FAILS


@pytest.mark.parametrize("fn, study_id", [(rg.adversarial_defences, "reg.adversarial"),
                                           (rg.local_variation, "reg.local-variation"),
                                           (rg.dim_reduction_adversarial,
                                            "reg.dim-reduction-adversarial")])
def test_defences_need_a_vulnerable_radius(fn, study_id, ctx):
    assert default(study_id, ctx).verdict in (HOLDS, CAVEAT)
    assert fn(ctx, epsilons=(0.002,)).verdict == FAILS  # the attacks change almost nothing


def test_frobenius_check_can_fail(ctx):
    assert default("reg.frobenius", ctx).verdict == HOLDS
    assert rg.frobenius(ctx, norm_fn=regularize.mixed_norm).verdict == FAILS


def test_mixed_norm_equals_frobenius_on_one_entry_per_row(ctx):
    finding = default("reg.mixed-norm", ctx)
    assert finding.verdict == CAVEAT  # a norm, but not the Frobenius norm its label says
    one_per_row = {"diagonal": np.diag([3.0, -1.0, 2.0]),
                   "permutation": np.array([[0.0, 2.0], [-5.0, 0.0]])}
    assert rg.mixed_norm(ctx, matrices=one_per_row).verdict == HOLDS


def test_cauchy_schwarz_fails_for_the_max_norm(ctx):
    assert default("reg.cauchy-schwarz", ctx).verdict == HOLDS
    assert rg.cauchy_schwarz(ctx, ord=np.inf).verdict == FAILS


def test_mixed_norm_bound_constant_is_tight(ctx):
    finding = default("reg.mixed-norm-bound", ctx)
    assert finding.verdict == HOLDS
    assert abs(finding.numbers["equal_row_ratio"] - 1.0) < 1e-12
    assert rg.mixed_norm_bound(ctx, h_offset=-1).verdict == FAILS


def test_dropout_needs_two_seeds(ctx):
    with pytest.raises(ValueError, match="reg.dropout: expected seeds >= 2"):
        rg.dropout(ctx, seeds=1)
