"""Loss-function studies: each runs tiny; each verdict flips on a case where the claim fails."""

import pytest

from jdl import studies
from jdl.studies import losses as ls
from jdl.studies.registry import CAVEAT, FAILS, HOLDS
from study_checks import well_formed

# the verdict each study reaches on the notes' claim in tiny mode
EXPECTED = {
    "loss.logloss-ce": HOLDS, "loss.best-classification": CAVEAT, "loss.softmax-ce": HOLDS,
    "loss.log-cosh": CAVEAT, "loss.expected-cost": HOLDS, "loss.label-quality": HOLDS,
    "loss.reparam-grad": CAVEAT,
}


@pytest.mark.parametrize("study_id", sorted(EXPECTED))
def test_runs_tiny_with_expected_verdict(study_id, ctx):
    finding = studies.load_all()[study_id].fn(ctx)
    assert finding.verdict == EXPECTED[study_id], finding.summary
    well_formed(finding, ctx)


def test_logloss_is_not_cross_entropy_of_probabilities(ctx):
    assert ls.logloss_is_cross_entropy(ctx, scores="probabilities").verdict == FAILS


def test_best_classification_fails_without_early_stopping_on_noisy_labels(ctx):
    finding = ls.best_classification(ctx, settings=("digits_noisy",), early_stopping=False)
    assert finding.verdict == FAILS
    assert finding.numbers["settings"]["digits_noisy"]["beaten_by"]


def test_softmax_probabilities_uncalibrated_at_high_temperature(ctx):
    finding = ls.softmax_cross_entropy(ctx, temperature=5.0)
    assert finding.verdict == CAVEAT
    assert finding.numbers["ece"] > 0.3


def test_log_cosh_with_tiny_beta_is_not_robust(ctx):
    # beta -> 0: (1/beta) log cosh(beta r) ~ beta r^2 / 2, a scaled MSE
    finding = ls.log_cosh_robust(ctx, beta=0.01)
    assert finding.verdict == FAILS
    assert finding.numbers["robust_gain_vs_mse"] < 0.05


def test_expected_cost_equals_argmax_for_symmetric_costs(ctx):
    finding = ls.expected_cost_decisions(ctx, cost_matrix=((0.0, 1.0), (1.0, 0.0)))
    assert finding.verdict == FAILS
    assert finding.numbers["by_training_loss"]["cross-entropy"]["decisions_changed"] == 0.0


def test_label_weights_do_not_help_with_clean_labels(ctx):
    finding = ls.label_quality(ctx, noise=0.0)
    assert finding.verdict == FAILS
    assert finding.numbers["weighted_identity_error"] < 1e-6


def test_chain_rule_without_sigma_path_fails(ctx):
    assert ls.reparam_gradient(ctx, sigma_path=False).verdict == FAILS
